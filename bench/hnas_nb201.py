"""HNAS and its baselines on tabular NAS-Bench-201: results table and anytime curves.

  python bench/hnas_nb201.py                 # 10 seeds, 20 evaluations, protocols A and B
  python bench/hnas_nb201.py --seeds 3       # quicker
  python bench/hnas_nb201.py --first-seed 100 --only synflow --tag heldout   # held-out seeds

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

import numpy as np

from jhnas import hnas
from jhnas.spaces import nb201
from jhnas.experiments import runners
from jhnas.experiments.results import cpu_name, write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
# (row label, method, metric, Config overrides)
METHODS = [("hnas[ntk_trace]", "hnas", "ntk_trace", {}),
           ("hnas[ntk_trace], log nu (ours)", "hnas", "ntk_trace", {"nu_scale": "log"}),
           ("hnas[ntk_trace], trust region (ours)", "hnas", "ntk_trace", {"trust_region": True}),
           ("random", "random", "ntk_trace", {}), ("rea", "rea", "ntk_trace", {}),
           ("argmax_metric[ntk_trace]", "argmax_metric", "ntk_trace", {}),
           ("argmin_kappa", "argmin_kappa", "ntk_trace", {}),
           ("metric_order[ntk_trace]", "metric_order", "ntk_trace", {})]
# with another metric M when the table has it for the whole space: synflow (the best of the
# table) and the gradient metrics the paper unifies with the NTK
OTHER_METRICS = ("synflow", "grad_norm", "snip", "grasp")
OTHER_M = [("hnas[{m}]", "hnas", "{m}", {}),
           ("hnas[{m}], log nu (ours)", "hnas", "{m}", {"nu_scale": "log"}),
           ("hnas[{m}], trust region (ours)", "hnas", "{m}", {"trust_region": True}),
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
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--only", default="", help="run only the rows whose label contains one of these "
                   "comma-separated strings")
    p.add_argument("--tag", default="", help="write hnas_nb201_<tag>.* instead")
    p.add_argument("--report", action="store_true",
                   help="only rewrite the .md and .png from the .json")
    args = p.parse_args()
    stem = "hnas_nb201" + (f"_{args.tag}" if args.tag else "")
    if args.report:
        res = json.loads((RESULTS / f"{stem}.json").read_text())
        write_atomic(RESULTS / f"{stem}.md", report(res))
        plot(res, RESULTS / f"{stem}_anytime.png")
        return
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    res = {"A": {}, "B": {}, "A10": {}, "machine": cpu_name()}
    table = nb201.metric_table()
    methods = METHODS + [(k.format(m=m), meth, metric.format(m=m), over)
                         for m in OTHER_METRICS if m in table.values
                         and table.coverage(m) > 0.99 for k, meth, metric, over in OTHER_M]
    for key, method, metric, over in methods:
        if not any(part in key for part in args.only.split(",")):
            continue
        print(key, flush=True)
        config = hnas.Config(**over)
        res["A"][key] = runners.run_nb201(method, metric, "cifar10", budget=args.budget,
                                       seeds=seeds, config=config)
        if method == "metric_order":  # its pool depends on the budget: rerun it at 10
            res["A10"][key] = runners.run_nb201(method, metric, "cifar10", budget=10,
                                             seeds=seeds, config=config)
        if method in ("hnas", "random"):
            res["B"][key] = {ds: res["A"][key] if ds == "cifar10" else
                             runners.run_nb201(method, metric, ds, budget=args.budget,
                                            seeds=seeds, config=config)
                             for ds in nb201.DATASETS}
    write_atomic(RESULTS / f"{stem}.json", json.dumps(res, indent=1))
    write_atomic(RESULTS / f"{stem}.md", report(res))
    plot(res, RESULTS / f"{stem}_anytime.png")
    print(report(res))


def _fmt(r: dict, ds: str) -> str:
    return f"{r['mean']['test200_' + ds]:.2f} ± {r['std']['test200_' + ds]:.2f}"


def _first(r: dict, k: int) -> list[list[dict]] | None:
    """Each seed's first ``k`` evaluations; None for training-free methods, which evaluate
    nothing, or runs shorter than ``k``."""
    if r["mean"]["cost"] == 0 or min(len(run["history"]) for run in r["runs"]) < k:
        return None
    return [run["history"][:k] for run in r["runs"]]


def _at(r: dict, k: int) -> str:
    """CIFAR-10 test accuracy of the incumbent after ``k`` evaluations (mean ± std over seeds)."""
    if (runs := _first(r, k)) is None:
        return ""
    bench = nb201.benchmark()
    acc = [float(bench.test200[max(h, key=lambda e: e["signal"])["index"], 0]) for h in runs]
    return f"{np.mean(acc):.2f} ± {np.std(acc):.2f}"


def _found(r: dict, k: int) -> str:
    """Seeds whose first ``k`` evaluations include the architecture with the best 12-epoch
    CIFAR-10 validation accuracy of the whole space (the best the signal can lead to)."""
    if (runs := _first(r, k)) is None:
        return ""
    best = int(np.argmax(nb201.benchmark().val12[:, 0]))
    hits = sum(any(e["index"] == best for e in h) for h in runs)
    return f"{hits} / {len(runs)}"


def report(res: dict) -> str:
    any_run = next(iter(res["A"].values()))
    proto = any_run["protocol"]
    coverage = (f"Metric table coverage: {proto['metric_coverage']:.1%} of the 15,625 "
                f"architectures ({proto['metric_table'].get('coverage ntk_trace', '')})")
    coverage += ("." if proto["metric_coverage"] == 1 else
                 "; pools hold only covered architectures until the table is complete.")
    seeds = proto["seeds"]
    lines = [f"# HNAS on NAS-Bench-201 ({len(seeds)} seeds from {seeds[0]}, "
             f"{proto['budget']} evaluations, "
             f"jax {proto['jax']}, XLA_FLAGS `{proto.get('xla_flags', '')}`, "
             f"{res.get('machine', 'machine not recorded')})", "", coverage, "",
             "## Protocol A: search with the 12-epoch CIFAR-10 validation signal", "",
             "| method | CIFAR-10 | CIFAR-100 | ImageNet16-120 | cost s | CIFAR-10 after 10 "
             "evaluations | best-signal arch within 10 |", "|---|---|---|---|---|---|---|"]
    for name, r in res["A"].items():
        r10 = res["A10"].get(name, r)
        lines.append(f"| {name} | " + " | ".join(_fmt(r, d) for d in nb201.DATASETS)
                     + f" | {r['mean']['cost']:.0f} | {_at(r10, 10)} | {_found(r10, 10)} |")
    for name, v in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + " | | | |")
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
              "s is the table's largest value of m (jhnas.experiments.problems.default_scale). metric_order[m]: "
              "evaluate the pool's architectures in decreasing m (the zero-cost baseline); its column "
              "after 10 evaluations is a separate run with budget 10 (its pool, like HNAS's, "
              "grows by 2,000 draws per evaluation of the budget). trust region (ours): after "
              "the 5 probes, HNAS takes argmin F among the one-edit neighbours of the best "
              "architecture so far (jhnas.hnas.Config.trust_region). Best-signal arch within 10: the "
              "seeds whose first 10 evaluations include the architecture with the best 12-epoch "
              "CIFAR-10 validation accuracy of the space (the end point of protocol A; another "
              "architecture has the same 94.37 test accuracy).", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
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
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
