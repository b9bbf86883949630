"""Minimal reproduction of an XLA:CPU miscompilation that made jhnas's jitted NTK wrong (issue 33).

  python bench/xla_ynn_bug.py          # merges this jaxlib's row into results/xla_ynn_bug.{json,md}

Run it under each jax version of interest (a venv per version; only jax is needed for the
reproduction, jhnas and flax for the last column). Each run adds or replaces the row of its
jaxlib version.

The bug: when XLA:CPU's YNNPACK fusion takes a ``dot`` whose right operand is a broadcast scalar
into one fusion with a reduction, the product is wrong. Here ``x @ broadcast(s, (3, 64))`` next
to a row sum, at batch 64: every entry should be ``2 * 3 = 6`` for ``x`` of ones and ``s = 2``.
In jhnas it struck the jit-compiled decomposition NTK with ``output="sum"``: the cotangent of
the logits is all ones, so the classifier bias's per-sample gradients are a constant that XLA
folds into a broadcast, and their Gram block ``ones @ ones.T`` came out as 1 instead of K.
jhnas now builds that cotangent as ``1 + 0 * logits`` (:func:`jhnas.ntk.ones_like`), which XLA
cannot fold, so the bug no longer has its trigger; the last column checks that on the NB201
network with one cell per stage, batch 64 of the embedded CIFAR-10 images:
``1^T Theta 1`` of the jitted Gram against ``||dS/dtheta||^2`` in float64.

Columns: ``x @ bcast`` is the largest absolute error of the jitted product (0 up to rounding if
the jaxlib is not affected); ``YNN off`` the same with
``compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}``; ``jhnas sum`` the relative
error of the jhnas check (float32 rounding is about 1e-4); ``same, constant ones`` the same
check with the cotangent jhnas used before (``jnp.ones_like``).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def product_error(compiler_options=None) -> float | None:
    """None if this jaxlib does not know the options."""
    n, k = 64, 3
    f = lambda x, z, s: x @ jnp.broadcast_to(s, (k, n)) + z.sum(1)[:, None]
    x = jnp.ones((n, k), jnp.float32)
    z = jnp.zeros((n, 300), jnp.float32)
    try:
        got = np.asarray(jax.jit(f, compiler_options=compiler_options)(x, z, jnp.float32(2.0)))
    except Exception:  # noqa: BLE001 (XlaRuntimeError: an option this version does not have)
        return None
    return float(np.abs(got - 2.0 * k).max())


def jhnas_sum_error(constant_ones: bool = False) -> float | None:
    """Relative error of 1^T Theta 1; ``constant_ones``: with the cotangent jhnas used before
    the fix (``jnp.ones_like``, which XLA folds into a broadcast constant)."""
    try:
        import jhnas
        from jhnas import ntk
        from jhnas.spaces import nb201
    except ImportError:
        return None
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    net = jhnas.from_flax(nb201.NB201Net(arch, N=1), bn="train")
    batch = jhnas.default_batch(64)
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
    params = net.init(jax.random.key(0), x[:1])
    ones_like = ntk.ones_like
    try:
        if constant_ones:
            ntk.ones_like = jnp.ones_like
        gram = jhnas.empirical_ntk_fn(net, output="sum")(params, x, y)
    finally:
        ntk.ones_like = ones_like
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        sel, merge = ntk.split_params(p64, ntk.param_mask(p64, "layers"))
        g = jax.grad(lambda s: net.apply(merge(s), jnp.asarray(x, jnp.float64)).sum())(sel)
        want = float(sum((v ** 2).sum() for v in g))
    return float(np.asarray(gram, np.float64).sum()) / want - 1


def report(rows: dict) -> str:
    lines = ["# XLA:CPU YNNPACK dot miscompilation (bench/xla_ynn_bug.py)", "",
             "| jax | jaxlib | Python | x @ bcast error | YNN off error | jhnas sum rel. error | "
             "same, constant ones |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows.values(), key=lambda r: [int(p) for p in r["jaxlib"].split(".")]):
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {r['jax']} | {r['jaxlib']} | {r['python']} | {fmt(r['product'], '.3g')} "
                     f"| {fmt(r['ynn_off'], '.3g')} | {fmt(r['jhnas_sum'], '.1e')} | "
                     f"{fmt(r['jhnas_sum_constant_ones'], '.1e')} |")
    lines += ["", "Expected 0 (up to float32 rounding) in the error columns; `-`: not measured "
              "(no such option in that jaxlib; jhnas not installed beside it). Every row is one "
              "run of the script under that jaxlib.", ""]
    machines = sorted({r["machine"] for r in rows.values()})
    lines.append("Machine(s): " + "; ".join(machines))
    return "\n".join(lines) + "\n"


def main() -> None:
    cpuinfo = Path("/proc/cpuinfo")  # jhnas.experiments.results.cpu_name, without importing jhnas
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    machine = names[0] if names else platform.machine()
    row = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "python": platform.python_version(), "machine": machine,
           "product": product_error(),
           "ynn_off": product_error({"xla_cpu_experimental_ynn_fusion_type": ""}),
           "jhnas_sum": jhnas_sum_error(),
           "jhnas_sum_constant_ones": jhnas_sum_error(constant_ones=True)}
    print(row)
    path = RESULTS / "xla_ynn_bug.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[row["jaxlib"]] = row
    # written whole or not at all (jhnas.experiments.results.write_atomic; this script runs without jhnas)
    for name, text in ((path, json.dumps(rows, indent=1) + "\n"),
                       (RESULTS / "xla_ynn_bug.md", report(rows))):
        tmp = name.with_name(f".{name.name}.tmp")
        tmp.write_text(text)
        tmp.replace(name)


if __name__ == "__main__":
    main()
