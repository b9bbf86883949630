"""The NTK on models jhnas did not write (issue 27): agreement table and speed.

  python bench/ntk_zoo.py table    # every model x implementation x output x params choice
  python bench/ntk_zoo.py speed    # small CNN / MLP / WideResNet at batch 64 against neural-tangents

``table``: for each model of :mod:`jhnas.testing.zoo` (batch 3), each implementation, output and
parameter choice, the largest entry-wise error of jhnas's float32 Gram relative to the largest
entry of a float64 ``jax.jacrev`` oracle (the batched function for ``jacobian`` and
``decomposition``, each sample alone for ``per_sample``; with train-mode BatchNorm the
decomposition is compared on 1^T Theta 1), or the first line of jhnas's refusal. Writes
``results/ntk_zoo.{md,json}``.

``speed``: the Gram of every logit (``output="all"``, 10 classes, ``params="layers"``) at batch 64
on three models without batch coupling, in one process: jhnas's ``jacobian`` (per-sample
contraction since issue 27), the same with one reverse pass per output row (what ``jacobian``
did before, forced with ``batch_coupled=True``), ``per_sample``, ``decomposition``, and
neural-tangents' three implementations where it is installed (``pip install --no-deps
neural-tangents==0.6.5 frozendict``). First call (compilation included) and the median of 3
further calls (1 where the first took over 20 s), each blocked on; the other core idle. Writes ``results/ntk_zoo_speed.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import ntk
from jhnas.net import from_flax
from jhnas.experiments.results import cpu_name, write_atomic
from jhnas.testing import zoo

RESULTS = Path(__file__).resolve().parent / "results"


def table() -> dict:
    rows = []
    for name in zoo.ZOO:
        model = zoo.ZOO[name]()
        for output in zoo.OUTPUTS:
            for which in zoo.PARAMS:
                oracles = {}
                for impl in zoo.IMPLEMENTATIONS:
                    status, value = zoo.check(name, impl, output, which, model, oracles)
                    rows.append({"model": name, "implementation": impl, "output": output,
                                 "params": which, "status": status, "value": value})
                print(name, output, which, [r["value"] for r in rows[-3:]], flush=True)
    return {"jax": jax.__version__, "machine": cpu_name(), "rows": rows}


def table_report(res: dict) -> str:
    rows = res["rows"]
    lines = ["# The NTK on models jhnas did not write: jhnas (float32) against float64 oracles",
             "", f"`python bench/ntk_zoo.py table`; jax {res['jax']}, {res['machine']}. Each cell: "
             "max |jhnas − oracle| / max |oracle| over the Gram (train-mode BatchNorm "
             "decomposition: of 1ᵀΘ1), or the refusal (first words of jhnas's error).", ""]
    ok = [r["value"] for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    lines += [f"{len(rows)} checks: {len(ok)} computed, largest error {max(ok):.1e} (none "
              f"above 1e-5: {max(ok) < 1e-5}); {len(errors)} refused.", ""]
    lines += ["| model | output | params | jacobian | per_sample | decomposition |",
              "|---|---|---|---|---|---|"]
    cell = lambda r: (f"{r['value']:.1e}" if r["status"] == "ok"  # noqa: E731
                      else "refused: " + " ".join(r["value"].split()[:9]) + " …")
    for k in range(0, len(rows), 3):
        a, b, c = rows[k:k + 3]
        lines.append(f"| {a['model']} | {a['output']} | {a['params']} | {cell(a)} | {cell(b)} "
                     f"| {cell(c)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- speed

class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.mean((1, 2)))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


class WideResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(32, (3, 3))(x)
        for _ in range(2):
            x = x + nn.Conv(32, (3, 3))(nn.relu(nn.Conv(32, (3, 3))(nn.relu(x))))
        return nn.Dense(10)(nn.relu(x).mean((1, 2)))


def _time(fn, reps: int = 3) -> tuple[float, float]:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(reps if first < 20 else 1):  # one more call of the slowest
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def speed(row_models: Sequence[str]) -> dict:
    x = jax.random.normal(jax.random.key(0), (64, 16, 16, 3))
    y = jnp.arange(64) % 10
    try:
        from jhnas import _nt_compat
        _nt_compat.load()
        nt = True
    except ImportError as e:
        print("neural-tangents not installed:", e, file=sys.stderr)
        nt = False
    out = {"jax": jax.__version__, "machine": cpu_name(), "batch": 64, "image": "16x16x3",
           "output": "all", "models": {}}
    for name, module in (("small CNN", SmallCNN()), ("MLP", MLP()),
                         ("WideResNet", WideResNet())):
        net = from_flax(module, bn="none")
        params = net.init(jax.random.key(1), x[:1])
        want = None
        res = {}
        variants = [("jhnas jacobian", dict(implementation="jacobian")),
                    ("jhnas per_sample", dict(implementation="per_sample")),
                    ("jhnas decomposition", dict(implementation="decomposition"))]
        if nt:
            variants += [(f"neural-tangents {i}", dict(implementation="per_sample",
                                                       backend="neural_tangents",
                                                       nt_implementation=i))
                         for i in ("jacobian_contraction", "ntk_vector_products",
                                   "structured_derivatives")]
        variants.append(("jhnas jacobian, row by row (before)", dict(implementation="jacobian")))
        for label, kw in variants:
            f = net if "row by row" not in label else from_flax(module, bn="none",
                                                                 batch_coupled=True)
            fn = ntk.empirical_ntk_fn(f, output="all", **kw)
            if "row by row" in label and name not in row_models:
                res[label] = {"skipped": "not run (its first call did not finish in 10 min)"}
                continue
            first, steady = _time(lambda: fn(params, x, y), reps=1 if "row" in label else 3)
            gram = np.asarray(fn(params, x, y), np.float64)
            want = gram if want is None else want
            res[label] = {"first_s": first, "steady_s": steady,
                          "max_rel_diff": float(np.abs(gram - want).max() / np.abs(want).max())}
            print(name, label, res[label], flush=True)
        out["models"][name] = res
    return out


def speed_report(res: dict) -> str:
    lines = ["# Exact NTK speed: jhnas against neural-tangents", "",
             f"`python bench/ntk_zoo.py speed`; batch {res['batch']} of {res['image']} Gaussian "
             f"images, every logit (10 classes: a 640 x 640 Gram), params='layers', no batch "
             f"coupling; jax {res['jax']}, {res['machine']}. first = first call, compilation "
             "included; steady = median of later calls; diff = max |Gram − jhnas jacobian's| / "
             "max |jhnas jacobian's|. neural-tangents runs each sample alone (vmap_axes=0).", "",
             "| model | implementation | first s | steady s | steady vs jhnas jacobian | diff |",
             "|---|---|---|---|---|---|"]
    for model, rows in res["models"].items():
        base = rows["jhnas jacobian"]["steady_s"]
        for label, r in rows.items():
            if "skipped" in r:
                lines.append(f"| {model} | {label} | {r['skipped']} | | | |")
                continue
            lines.append(f"| {model} | {label} | {r['first_s']:.2f} | {r['steady_s']:.3f} | "
                         f"{r['steady_s'] / base:.2f}x | {r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["table", "speed"])
    p.add_argument("--row-models", default="small CNN,MLP",
                   help="speed: the models on which the row-by-row Jacobian runs (comma-separated)")
    args = p.parse_args()
    if args.command == "table":
        res = table()
        write_atomic(RESULTS / "ntk_zoo.json", json.dumps(res, indent=1, default=float) + "\n")
        write_atomic(RESULTS / "ntk_zoo.md", table_report(res))
        print(table_report(res))
    else:
        res = speed(args.row_models.split(","))
        write_atomic(RESULTS / "ntk_zoo_speed.json", json.dumps(res, indent=1) + "\n")
        write_atomic(RESULTS / "ntk_zoo_speed.md", speed_report(res))
        print(speed_report(res))


if __name__ == "__main__":
    main()
