"""HNAS and its baselines on tabular NAS-Bench-201: results table and anytime curves.

  python bench/hnas_nb201.py                 # 10 seeds, 20 evaluations, protocols A and B
  python bench/hnas_nb201.py --seeds 3       # quicker

Protocol A: every method searches with the 12-epoch CIFAR-10 validation accuracy as its signal;
the found architecture's 200-epoch test accuracy is reported on CIFAR-10, CIFAR-100 and
ImageNet16-120. Protocol B: each dataset is searched with its own 12-epoch validation signal.
Cost = 12 x the CIFAR-10 seconds per epoch of every evaluated architecture (the official cost
table). M and kappa come from the shipped metric table (`jhnas.spaces.nb201.metric_table()`);
while it does not cover the whole space, the pools hold only the covered architectures (its
coverage is written into the results). Writes bench/results/hnas_nb201.{json,md} and
bench/results/hnas_nb201_anytime.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from jhnas import hnas
from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"
# (row label, method, metric, Config overrides)
METHODS = [("hnas[ntk_trace]", "hnas", "ntk_trace", {}),
           ("hnas[ntk_trace], log nu (ours)", "hnas", "ntk_trace", {"nu_scale": "log"}),
           ("random", "random", "ntk_trace", {}), ("rea", "rea", "ntk_trace", {}),
           ("argmax_metric[ntk_trace]", "argmax_metric", "ntk_trace", {}),
           ("argmin_kappa", "argmin_kappa", "ntk_trace", {}),
           ("metric_order[ntk_trace]", "metric_order", "ntk_trace", {})]
# with another metric M when the table has it for the whole space
OTHER_M = [("hnas[{m}]", "hnas", "{m}", {}),
           ("hnas[{m}], log nu (ours)", "hnas", "{m}", {"nu_scale": "log"}),
           ("argmax_metric[{m}]", "argmax_metric", "{m}", {}),
           ("metric_order[{m}]", "metric_order", "{m}", {})]
PUBLISHED = {"HNAS (paper)": (94.04, 71.75, 45.91), "target": (94.30, 72.9, 46.1),
             "ceiling A": (94.37, 73.09, 46.33)}


def anytime(runs: list[dict], dataset: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """After each number of evaluations k = 1..budget: the mean over seeds of the cumulative cost
    and of the test error of the best-signal architecture so far."""
    bench = nb201.benchmark()
    d = nb201.DATASETS.index(dataset)
    costs, errors = [], []
    for run in runs:
        best, err = -np.inf, []
        for r in run["history"]:
            if r["signal"] > best:
                best, e = r["signal"], 100.0 - float(bench.test200[r["index"], d])
            err.append(e)
        costs.append(np.cumsum([r["cost"] for r in run["history"]]))
        errors.append(err)
    k = min(len(c) for c in costs)
    return np.mean([c[:k] for c in costs], 0), np.mean([e[:k] for e in errors], 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=int, default=20)
    args = p.parse_args()
    seeds = range(args.seeds)
    res = {"A": {}, "B": {}}
    table = nb201.metric_table()
    methods = METHODS + [(k.format(m=m), meth, metric.format(m=m), over)
                         for m in table.values if m not in ("ntk_trace", "ntk_cond")
                         and table.coverage(m) > 0.99 for k, meth, metric, over in OTHER_M]
    for key, method, metric, over in methods:
        print(key, flush=True)
        config = hnas.Config(**over)
        res["A"][key] = hnas.run_nb201(method, metric, "cifar10", budget=args.budget,
                                       seeds=seeds, config=config)
        if method in ("hnas", "random"):
            res["B"][key] = {ds: hnas.run_nb201(method, metric, ds, budget=args.budget,
                                                seeds=seeds, config=config)
                             for ds in nb201.DATASETS}
    (RESULTS / "hnas_nb201.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "hnas_nb201.md").write_text(report(res, args))
    plot(res)
    print(report(res, args))


def _fmt(r: dict, ds: str) -> str:
    return f"{r['mean']['test200_' + ds]:.2f} ± {r['std']['test200_' + ds]:.2f}"


def _at(r: dict, k: int) -> str:
    """CIFAR-10 test accuracy of the incumbent after ``k`` evaluations (mean ± std over seeds);
    empty for training-free methods, which evaluate nothing."""
    if r["mean"]["cost"] == 0 or min(len(run["history"]) for run in r["runs"]) < k:
        return ""
    bench = nb201.benchmark()
    acc = [float(bench.test200[max(run["history"][:k], key=lambda h: h["signal"])["index"], 0])
           for run in r["runs"]]
    return f"{np.mean(acc):.2f} ± {np.std(acc):.2f}"


def report(res: dict, args) -> str:
    any_run = next(iter(res["A"].values()))
    proto = any_run["protocol"]
    coverage = (f"Metric table coverage: {proto['metric_coverage']:.1%} of the 15,625 "
                f"architectures ({proto['metric_table'].get('coverage ntk_trace', '')})")
    coverage += ("." if proto["metric_coverage"] == 1 else
                 "; pools hold only covered architectures until the table is complete.")
    lines = [f"# HNAS on NAS-Bench-201 ({args.seeds} seeds, {args.budget} evaluations, "
             f"jax {proto['jax']})", "", coverage, "",
             "## Protocol A: search with the 12-epoch CIFAR-10 validation signal", "",
             "| method | CIFAR-10 | CIFAR-100 | ImageNet16-120 | cost s | CIFAR-10 after 10 "
             "evaluations |", "|---|---|---|---|---|---|"]
    for name, r in res["A"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r, d) for d in nb201.DATASETS)
                     + f" | {r['mean']['cost']:.0f} | {_at(r, 10)} |")
    for name, v in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + " | | |")
    lines += ["", "## Protocol B: each dataset searched with its own 12-epoch validation signal",
              "", "| method | CIFAR-10 | CIFAR-100 | ImageNet16-120 |", "|---|---|---|---|"]
    for name, per_ds in res["B"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(per_ds[d], d) for d in nb201.DATASETS)
                     + " |")
    lines += ["", "Mean ± std over seeds of the 200-epoch test accuracy (%) of the evaluated "
              "architecture with the best signal; cost = simulated training seconds (12 x "
              "seconds per epoch of each evaluated architecture). Training-free methods "
              "(argmax_metric, argmin_kappa) train nothing: cost 0. hnas[m]: HNAS with metric m "
              "as M and the NTK condition number as kappa; for m other than ntk_trace the scale "
              "s is the table's largest value of m (jhnas.hnas.default_scale). metric_order[m]: "
              "evaluate the pool's architectures in decreasing m (the zero-cost baseline).", ""]
    return "\n".join(lines)


def plot(res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in res["A"].items():
        if r["mean"]["cost"] > 0:
            ax.plot(*anytime(r["runs"]), marker=".", label=name)
        elif 100 - r["mean"]["test200_cifar10"] < 12:  # training-free: a level to compare with
            ax.axhline(100 - r["mean"]["test200_cifar10"], ls="--", lw=1, color="grey")
            ax.annotate(f"{name} (no training)", (0.02, 100 - r["mean"]["test200_cifar10"]),
                        xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("simulated search cost (s of training), mean over seeds")
    ax.set_ylabel("CIFAR-10 test error of the incumbent (%)")
    ax.set_title("NB201, protocol A: one point per evaluation")
    ax.set_ylim(4, 12)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "hnas_nb201_anytime.png", dpi=120)


if __name__ == "__main__":
    main()
