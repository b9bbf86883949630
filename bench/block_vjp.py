"""The reverse pass of a block-composed NB201 network: compiled per block (``jhnas.net.vjp``)
against eager ``jax.vjp`` through the compiled blocks (what the metrics did before).

  taskset -c 1 python bench/block_vjp.py            # ~3 min on one core

For each of ``--archs`` random NB201 architectures (5 cells, C = 16, batch 64 of the embedded
CIFAR-10 images, train-mode BN, float32): the gradient of the mean cross-entropy w.r.t. the
Conv/Dense kernels, (a) as ``jax.vjp(lambda w: net.apply(merge(w), x), kernels)`` and (b) as
``jhnas.net.vjp(net, params, x)`` pulled back to the parameters. The first call of each (which
compiles what the architecture adds) is reported apart; then the two are alternated ``--repeat``
times and the median of each is kept. Also the largest relative difference of the gradients.
Writes bench/results/block_vjp.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import data, metrics
from jhnas import ntk as ntk_lib
from jhnas.net import vjp as net_vjp
from jhnas.experiments.results import cpu_name, write_atomic
from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"


def eager_jax_vjp(net, params, x, y):
    mask = ntk_lib.param_mask(params, "kernels")
    kernels, merge = ntk_lib.split_params(params, mask)
    logits, pull = jax.vjp(lambda w: net.apply(merge(w), x), kernels)
    return jax.block_until_ready(pull(jax.grad(metrics.cross_entropy)(logits, y))[0])


def block_vjp(net, params, x, y):
    mask = ntk_lib.param_mask(params, "kernels")
    logits, pull, _ = net_vjp(net, params, x)
    g = pull(jax.grad(metrics.cross_entropy)(logits, y), ("params",))["params"]
    return jax.block_until_ready(ntk_lib.split_params(g, mask)[0])


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    batch = data.default_batch(64)
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y, jnp.int32)
    fns = {"eager jax.vjp": eager_jax_vjp, "jhnas.net.vjp": block_vjp}
    rows = []
    for k, arch in enumerate(nb201.sample(jax.random.key(7), args.archs)):
        net = nb201.make_net(arch)
        params = net.init(jax.random.fold_in(jax.random.key(0), k), x[:1])
        row = {"arch": arch, "first": {}, "steady": {}}
        grads = {}
        for name, fn in fns.items():
            row["first"][name], grads[name] = _timed(fn, net, params, x, y)
        times = {name: [] for name in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                times[name].append(_timed(fn, net, params, x, y)[0])
        row["steady"] = {name: float(np.median(t)) for name, t in times.items()}
        a, b = grads.values()  # relative to the largest gradient entry (some layers' are all 0)
        scale = max(float(jnp.abs(u).max()) for u in a)
        row["max_rel_diff"] = max(float(jnp.abs(u - v).max()) for u, v in zip(a, b)) / scale
        rows.append(row)
        print(f"{k}: {row['steady']}, first {row['first']}", flush=True)
    # architectures 0 and 1 compile most of the blocks: steady state is over the rest
    steady = rows[2:] if len(rows) > 2 else rows
    ratio = [r["steady"]["eager jax.vjp"] / r["steady"]["jhnas.net.vjp"] for r in steady]
    res = {"rows": rows, "geomean_ratio": float(np.exp(np.mean(np.log(ratio)))),
           "protocol": {"archs": args.archs, "repeat": args.repeat, "batch": 64, "cells": 5,
                        "bn": "train", "dtype": "float32", "jax": jax.__version__,
                        "flax": flax.__version__, "machine": cpu_name(),
                        "cpus": len(os.sched_getaffinity(0)),
                        "xla_flags": os.environ.get("XLA_FLAGS", "")}}
    RESULTS.mkdir(exist_ok=True)
    write_atomic(RESULTS / "block_vjp.json", json.dumps(res, indent=1))
    write_atomic(RESULTS / "block_vjp.md", report(res))
    print(report(res))


def report(res: dict) -> str:
    pr = res["protocol"]
    lines = [f"# Reverse pass of a block-composed NB201 network (jax {pr['jax']}, "
             f"{pr['cpus']} CPU(s), XLA_FLAGS `{pr['xla_flags']}`)", "",
             f"Kernel gradient of the mean cross-entropy, batch {pr['batch']}, {pr['cells']} cells, "
             f"{pr['bn']}-mode BN, {pr['dtype']}; median of {pr['repeat']} alternated calls. "
             "First call: what the architecture compiles on top of the earlier ones.", "",
             "| arch | eager jax.vjp s | jhnas.net.vjp s | ratio | first call s (eager / net.vjp) "
             "| max rel diff |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        e, n = r["steady"]["eager jax.vjp"], r["steady"]["jhnas.net.vjp"]
        fe, fn = r["first"]["eager jax.vjp"], r["first"]["jhnas.net.vjp"]
        lines.append(f"| `{r['arch']}` | {e:.3f} | {n:.3f} | {e / n:.2f}x | {fe:.1f} / {fn:.1f} "
                     f"| {r['max_rel_diff']:.1e} |")
    lines += ["", f"Geometric mean of the ratio over the architectures after the first two: "
              f"**{res['geomean_ratio']:.2f}x** (above 1: jhnas.net.vjp faster)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
