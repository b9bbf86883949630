"""How much the README's first search moves with the machine, the jax version and XLA settings.

  python bench/search_spread.py                       # this jax, XLA's defaults
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 python bench/search_spread.py --label "AVX2 only"

Runs the README's first command (HNAS, ntk_trace as M, CIFAR-10 12-epoch validation accuracy
as the signal, 20 evaluations, seeds 0-9) in this process and adds one row to
``results/search_spread.{md,json}``, keyed by ``--label`` (default: the jax version and
XLA_FLAGS): the mean 200-epoch test accuracy of the found architectures on the three datasets,
and every seed's found architecture. The report marks the seeds whose architecture differs
between rows: one machine and one setting give the same numbers on every run (tested), but the
Gaussian process's hyper-parameter fit and the acquisition's maximiser are float64 optimisations
whose path a last-bit rounding difference can change, and XLA's code for the GP differs between
jax versions and CPUs (the instruction set it compiles for).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax
import jaxlib
import numpy as np

from jhnas.experiments import runners
from jhnas.experiments.results import cpu_name, update_json, write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", help="row name (default: jax version and XLA_FLAGS)")
    args = p.parse_args()
    flags = os.environ.get("XLA_FLAGS", "")
    label = args.label or f"jax {jax.__version__}" + (f", {flags}" if flags else "")
    t = time.perf_counter()
    res = runners.run_nb201("hnas", "ntk_trace", "cifar10", budget=20, seeds=range(10))
    row = {"label": label, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "python": platform.python_version(), "machine": cpu_name(), "xla_flags": flags,
           "seconds": time.perf_counter() - t,
           "mean": {d: res["mean"][f"test200_{d}"] for d in DATASETS},
           "std": {d: res["std"][f"test200_{d}"] for d in DATASETS},
           "found": [r["index"] for r in res["runs"]]}
    print(row)
    rows = update_json(RESULTS / "search_spread.json", lambda rows: {**rows, label: row})
    write_atomic(RESULTS / "search_spread.md", report(rows))
    print(report(rows))


def report(rows: dict) -> str:
    found = np.array([r["found"] for r in rows.values()])
    moving = [s for s in range(found.shape[1]) if len(set(found[:, s])) > 1]
    lines = ["# The README's first search across jax versions and XLA settings", "",
             "`jhnas search --space nb201 --method hnas --metric ntk_trace --budget 20 --seeds 10`"
             " (seeds 0-9): mean ± std over the seeds of the found architectures' 200-epoch test "
             "accuracy.", "",
             "| setting | jaxlib | machine | CIFAR-10 | CIFAR-100 | ImageNet16-120 | found "
             "(NB201 index per seed) |", "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        acc = " | ".join(f"{r['mean'][d]:.2f} ± {r['std'][d]:.2f}" for d in DATASETS)
        idx = ", ".join(f"**{i}**" if s in moving else str(i) for s, i in enumerate(r["found"]))
        lines.append(f"| {r['label']} | {r['jaxlib']} | {r['machine']} | {acc} | {idx} |")
    means = [r["mean"]["cifar10"] for r in rows.values()]
    lines += ["", f"Seeds whose architecture differs between rows (bold): "
              f"{', '.join(map(str, moving)) or 'none'}; CIFAR-10 means range "
              f"{min(means):.2f} to {max(means):.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
