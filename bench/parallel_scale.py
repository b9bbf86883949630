"""NTK memory at large batches and the NTK sharded over devices (issue 8).

  python bench/parallel_scale.py                 # CPU: writes results/parallel.{md,json}
  python bench/parallel_scale.py --native --batches 256 1024 --out results/parallel_gpu
                                                 # on a GPU/TPU host: all its devices

Protocol: NB201 network of architecture STATIC (5 cells per stage, C = 16, preset "hnas"),
PyTorch-default init (key 0), train-mode BatchNorm, the first N embedded CIFAR-10 images, float32,
the NTK of the true-label logit over Conv/Dense kernels and biases, jit-compiled whole
(``compile="network"``).

1. One device: XLA's memory analysis (arguments + outputs + temporaries) of the compiled NTK at
   each batch size for the official decomposition as jhnas computes it by default (kernel offsets
   unrolled, the large layers in chunks of samples), with ``scan_offsets=True`` (what
   :mod:`jhnas.parallel` uses), and the per-sample implementation (``vmap`` of single-sample
   gradients, 16 samples at a time); seconds of one run where ``--run`` asks for it.
2. Several devices (a child process; on CPU four host devices forced with
   ``--xla_force_host_platform_device_count=4``, which share the machine's cores, so their
   seconds are not a speed-up measurement): :func:`jhnas.parallel.sharded_ntk_fn` at the largest
   batch: per-device XLA memory, agreement with the one-device Gram, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STATIC = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
VARIANTS = {"decomposition (default)": dict(implementation="decomposition"),
            "decomposition, scan_offsets": dict(implementation="decomposition",
                                                scan_offsets=True),
            "per_sample (chunk 16)": dict(implementation="per_sample", chunk_size=16)}


def _setup(n: int):
    import jax
    from jhnas import data
    from jhnas.spaces import nb201
    b = data.default_batch(n)
    net = nb201.make_net(STATIC, bn="train", compile="network")
    params = jax.jit(net.init)(jax.random.key(0), np.asarray(b.x[:1]))
    return net, params, b


def _peak(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "peak_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes
                              + m.temp_size_in_bytes)}


def one_device(batches, run) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jhnas import ntk
    rows = []
    for n in batches:
        net, params, b = _setup(n)
        x, y = jnp.asarray(b.x), jnp.asarray(b.y)
        for name, kw in VARIANTS.items():
            f = ntk.empirical_ntk_fn(net, **kw)
            t = time.perf_counter()
            c = f.lower(params, x, y).compile()
            row = {"batch": n, "variant": name, "compile_s": time.perf_counter() - t, **_peak(c)}
            if n in run:
                jax.block_until_ready(c(params, x, y))
                t = time.perf_counter()
                jax.block_until_ready(c(params, x, y))
                row["run_s"] = time.perf_counter() - t
            rows.append(row)
            print(n, name, {k: (round(v / 2**20) if k.endswith("bytes") else round(v, 2))
                            for k, v in row.items() if k not in ("batch", "variant")}, flush=True)
    return rows


def child_sharded(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    from jhnas import ntk, parallel
    net, params, b = _setup(n)
    mesh = parallel.batch_mesh()
    fn = parallel.sharded_ntk_fn(net, mesh)
    t = time.perf_counter()
    c = fn.lower(params, b.x, jnp.asarray(b.y, jnp.int32)).compile()
    out = {"devices": [str(d) for d in jax.devices()], "batch": n,
           "compile_s": time.perf_counter() - t, **_peak(c)}
    gram = jax.block_until_ready(fn(params, b.x, b.y))
    t = time.perf_counter()
    gram = jax.block_until_ready(fn(params, b.x, b.y))
    out["run_s"] = time.perf_counter() - t
    single = ntk.empirical_ntk_fn(net, scan_offsets=True)
    with jax.default_device(jax.devices()[0]):
        ref = jax.block_until_ready(single(params, jnp.asarray(b.x), jnp.asarray(b.y)))
        t = time.perf_counter()
        ref = jax.block_until_ready(single(params, jnp.asarray(b.x), jnp.asarray(b.y)))
        out["one_device_run_s"] = time.perf_counter() - t
    g, r = np.asarray(gram, np.float64), np.asarray(ref, np.float64)
    out["max_rel_diff"] = float(np.abs(g - r).max() / np.abs(r).max())
    out["M"] = (ntk.trace_norm(g), ntk.trace_norm(r))
    out["kappa"] = (ntk.condition_number(g), ntk.condition_number(r))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="bench", choices=["bench", "report", "_sharded"])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--run", type=int, nargs="*", default=[64, 256],
                   help="batch sizes whose NTK is also run (timed), not only compiled")
    p.add_argument("--native", action="store_true",
                   help="use the machine's own devices (GPU/TPU) for the sharded part instead "
                        "of four forced host CPU devices")
    p.add_argument("--out", default=str(RESULTS / "parallel"))
    args = p.parse_args()
    if args.command == "_sharded":
        print(json.dumps(child_sharded(args.batches[-1])))
        return
    path = Path(args.out)
    if not path.is_absolute():
        path = Path(__file__).resolve().parent / path
    if args.command == "report":
        res = json.loads(path.with_suffix(".json").read_text())
    else:
        import jax
        import jaxlib

        from jhnas.experiments.results import cpu_name, write_atomic
        res = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
               "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
               "machine": f"{cpu_name()}, {os.cpu_count()} cores",
               "loadavg_before": os.getloadavg(), "arch": STATIC}
        res["one_device"] = one_device(args.batches, set(args.run))
        env = dict(os.environ)
        if not args.native:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_force_host_platform_device_count=4").strip()
            env["JAX_PLATFORMS"] = "cpu"
        proc = subprocess.run([sys.executable, __file__, "_sharded", "--batches",
                               str(args.batches[-1])], capture_output=True, text=True, env=env)
        try:
            res["sharded"] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            res["sharded"] = {"error": proc.stderr[-2000:]}
        res["forced_host_devices"] = not args.native
        res["loadavg_after"] = os.getloadavg()
        write_atomic(path.with_suffix(".json"), json.dumps(res, indent=1))
    write_atomic(path.with_suffix(".md"), report(res))
    print(report(res))


def report(res: dict) -> str:
    mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    L = [f"# NTK memory and sharding (NB201, 5 cells, C = 16, jax {res['jax']}, "
         f"{res['backend']})", "",
         f"Machine: {res['machine']}; load average before {res['loadavg_before'][0]:.1f}, after "
         f"{res['loadavg_after'][0]:.1f} (background scoring jobs; seconds are inflated, memory "
         "is not affected).", "",
         "## One device: XLA memory analysis of the jit-compiled NTK", "",
         "| batch | variant | peak MB (args + out + temp) | temp MB | compile s | run s |",
         "|---|---|---|---|---|---|"]
    for r in res["one_device"]:
        L.append(f"| {r['batch']} | {r['variant']} | {mb(r['peak_bytes'])} | {mb(r['temp_bytes'])} "
                 f"| {r['compile_s']:.1f} | {r.get('run_s', float('nan')):.2f} |")
    L += ["", "`scan_offsets` computes the same Gram (up to float32 summation order) with "
          "`lax.scan` over kernel offsets, so XLA cannot hoist a shifted copy of every layer input "
          "per offset into the forward pass (the default does that only where it works through "
          "the batch in chunks of samples: layers with large activations). per_sample has "
          "different semantics with train-mode BatchNorm (each sample normalised alone); its "
          "memory grows with the rows of per-sample gradients (N x P floats).", ""]
    s = res.get("sharded", {})
    L += ["## Batch sharded over devices (`jhnas.parallel.sharded_ntk_fn`)", ""]
    if "error" in s:
        L.append(f"Failed: {s['error'][-300:]}")
    else:
        kind = ("four host CPU devices forced with --xla_force_host_platform_device_count=4, "
                "sharing the machine's cores" if res.get("forced_host_devices") else
                "the machine's own devices")
        L += [f"{len(s['devices'])} devices ({kind}), batch {s['batch']}: XLA peak per device "
              f"{mb(s['peak_bytes'])} MB (temp {mb(s['temp_bytes'])} MB), compile "
              f"{s['compile_s']:.1f} s, run {s['run_s']:.2f} s (one device, same process: "
              f"{s['one_device_run_s']:.2f} s); max relative difference of the Gram from the "
              f"one-device Gram {s['max_rel_diff']:.1e}; M {s['M'][0]:.6g} vs {s['M'][1]:.6g}, "
              f"kappa {s['kappa'][0]:.6g} vs {s['kappa'][1]:.6g}."]
        if res.get("forced_host_devices"):
            L.append("")
            L.append("Host devices share two loaded cores: their seconds measure nothing about "
                     "accelerators. No GPU or TPU was available for this run: multi-accelerator "
                     "speed and memory are not measured (command in bench/README.md).")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
