"""Speed of the NTK engine on the NB201 network (issue 4), measured in one run.

  taskset -c 1 python bench/ntk_speed.py            # one core; writes results/ntk_speed.{md,json}
  python bench/ntk_speed.py --archs 20 --quick      # a smoke run
  taskset -c 1 python bench/ntk_speed.py --archs 0 --out bench/results/ntk_speed_fresh
                                                    # part 1 alone, in a fresh process

Protocol: NB201 network, 5 cells per stage, C = 16, preset "hnas", PyTorch-default init, the first
64 embedded CIFAR-10 training images (batch 64), float32; NTK = Gram of the true-label logit over
the Conv/Dense kernels and biases by the official per-layer decomposition; kappa from its float64
eigenvalues on the host.

1. One static network (architecture STATIC below), jit-compiled whole, train- and eval-mode
   BatchNorm: compile times and the median of REPS rounds, each calling in turn (a) one
   ``jit(grad)`` of the mean cross-entropy over all parameters, (b) the NTK Gram + kappa, (c) the
   same NTK Gram + kappa on the same parameters with ``compile="blocks"`` (the default of
   ``nb201.make_net`` and ``jhnas score``); the ratios (b)/(a) and (c)/(a); the peak memory of
   (a) and (b) from XLA's memory analysis (arguments + outputs + temporaries).
2. ``--archs`` random architectures (seed 0 sample) with ``compile="blocks"`` (no compilation per
   architecture): per-architecture seconds for init + M + kappa; steady state = mean over the
   architectures during which nothing was compiled; amortised = total / count, compiles included;
   total compile time and count from JAX's compile events. Runs before part 1, so that it counts
   the compilation of every block.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jhnas import data, ntk
from jhnas._compat import BACKEND_COMPILE_EVENT
from jhnas.experiments import score
from jhnas.metrics import cross_entropy
from jhnas.experiments.results import cpu_name, write_atomic
from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"
STATIC = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def interleaved(fns: dict, reps: int) -> dict:
    """Median seconds of ``reps`` calls of each zero-argument function, called in turn (one
    call of each per round), so that a change of machine load affects them alike."""
    runs = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            runs[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in runs.items()}


def peak_bytes(jitted, *args) -> int:
    m = jitted.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def static_network(batch, reps: int) -> dict:
    out = {}
    for bn in ("train", "eval"):
        net = nb201.make_net(STATIC, bn=bn, compile="network")
        params = net.init(jax.random.key(0), np.asarray(batch.x[:1]))
        x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
        grad = jax.jit(jax.grad(lambda p: cross_entropy(net.apply(p, x), y)))
        gram = ntk.empirical_ntk_fn(net)  # jitted
        t = time.perf_counter()
        grad.lower(params).compile()
        grad_compile = time.perf_counter() - t
        t = time.perf_counter()
        gram.lower(params, x, y).compile()
        ntk_compile = time.perf_counter() - t
        bgram = ntk.empirical_ntk_fn(nb201.make_net(STATIC, bn=bn, compile="blocks"))
        fns = {"grad": lambda: grad(params),
               "ntk": lambda: ntk.condition_number(gram(params, x, y)),
               "blocks": lambda: ntk.condition_number(bgram(params, x, y))}
        for fn in fns.values():  # warm-up (with --archs 0 the blocks compile here)
            jax.block_until_ready(fn())
        run = interleaved(fns, reps)
        out[bn] = {"grad_compile_s": grad_compile, "grad_run_s": run["grad"],
                   "ntk_compile_s": ntk_compile, "ntk_kappa_run_s": run["ntk"],
                   "ratio_ntk_over_grad": run["ntk"] / run["grad"],
                   "blocks_ntk_kappa_run_s": run["blocks"],
                   "ratio_blocks_over_grad": run["blocks"] / run["grad"],
                   "grad_peak_bytes": peak_bytes(grad, params),
                   "ntk_peak_bytes": peak_bytes(gram, params, x, y)}
        print(bn, {k: round(v, 3) for k, v in out[bn].items()}, flush=True)
    return out


def many_archs(batch, n: int) -> dict:
    compiles: list[float] = []

    def listener(event, duration, **kw):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    rows = []
    try:
        for arch in nb201.sample(score.keys(0)[0], n):
            before, t = len(compiles), time.perf_counter()
            values = score.score_arch(arch, ["ntk_trace", "ntk_cond"], batch, compile="blocks")
            rows.append({"arch": arch, "seconds": time.perf_counter() - t,
                         "compiles": len(compiles) - before, **values})
            print(f"{len(rows):4d} {rows[-1]['seconds']:6.2f} s  compiles {rows[-1]['compiles']}",
                  flush=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    secs = [r["seconds"] for r in rows]
    steady = [r["seconds"] for r in rows if r["compiles"] == 0]
    return {"archs": n, "amortised_s": sum(secs) / n,
            "steady_s": statistics.mean(steady) if steady else float("nan"),
            "steady_archs": len(steady), "compile_count": len(compiles),
            "compile_s": sum(compiles),
            "archs_with_compiles": [i for i, r in enumerate(rows) if r["compiles"]],
            "amortised_over_steady": sum(secs) / n / statistics.mean(steady) if steady else None,
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=200, help="part 2's architectures (0: skip it)")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="skip the static-network part")
    p.add_argument("--out", default=str(RESULTS / "ntk_speed"))
    args = p.parse_args()
    batch = data.default_batch(64)
    res = {"jax": jax.__version__, "machine": cpu_name(),
           "batch": 64, "cells": 5, "C": 16, "preset": "hnas", "static_arch": STATIC}
    if args.archs:
        res["blocks"] = many_archs(batch, args.archs)  # first: it counts every block compilation
    if not args.quick:
        res["static"] = static_network(batch, args.reps)
    write_atomic(Path(args.out + ".json"), json.dumps(res, indent=1))
    write_atomic(Path(args.out + ".md"), report(res))
    print(report(res))


def report(res: dict) -> str:
    lines = [f"# NTK speed on NB201 (jax {res['jax']}, batch 64, 5 cells, C = 16, float32)", ""]
    if "static" in res:
        lines += ["## One network, jit-compiled whole", "",
                  "| BN | grad compile s | grad run s | NTK+kappa compile s | NTK+kappa run s | "
                  "NTK / grad | grad peak MB | NTK peak MB | blocks: NTK+kappa run s | "
                  "blocks: NTK / grad |", "|---|---|---|---|---|---|---|---|---|---|"]
        for bn, r in res["static"].items():
            lines.append(f"| {bn} | {r['grad_compile_s']:.2f} | {r['grad_run_s']:.3f} | "
                         f"{r['ntk_compile_s']:.2f} | {r['ntk_kappa_run_s']:.3f} | "
                         f"{r['ratio_ntk_over_grad']:.2f}x | {r['grad_peak_bytes'] / 2**20:.0f} | "
                         f"{r['ntk_peak_bytes'] / 2**20:.0f} | {r['blocks_ntk_kappa_run_s']:.3f} | "
                         f"{r['ratio_blocks_over_grad']:.2f}x |")
        lines += ["", f"Architecture `{res['static_arch']}`; run = median of repeated calls after "
                  "the first, the three functions called in turn; peak = XLA memory analysis "
                  "(arguments + outputs + temporaries). blocks: the same parameters through "
                  "`make_net(..., compile=\"blocks\")` (jit-compiled blocks, glue run eagerly; "
                  "the default of `make_net` and `jhnas score`), divided by the same whole-network "
                  "`jit(grad)`.", ""]
    if "blocks" not in res:
        return "\n".join(lines) + "\n"
    b = res["blocks"]
    lines += [f"## {b['archs']} random architectures, compiled blocks (init + M + kappa)", "",
              "| steady s/arch | amortised s/arch | amortised / steady | compiles | compile s | "
              "archs that compiled |", "|---|---|---|---|---|---|",
              f"| {b['steady_s']:.2f} | {b['amortised_s']:.2f} | "
              f"{b['amortised_over_steady']:.2f}x | {b['compile_count']} | {b['compile_s']:.1f} | "
              f"{len(b['archs_with_compiles'])} (last: #{max(b['archs_with_compiles'] or [0])}) |",
              "", "Steady = mean over the architectures during which nothing was compiled."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
