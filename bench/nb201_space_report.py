"""Correlation of the shipped metric table with NAS-Bench-201 accuracy, over the covered space.

  python bench/nb201_space_report.py     # writes results/nb201_space_report.{md,json,png}

For every metric of `jhnas.spaces.nb201.metric_table()` and every target (200-epoch test accuracy
on CIFAR-10, CIFAR-100, ImageNet16-120; 12-epoch CIFAR-10 validation accuracy): Spearman rho,
Kendall tau and the top-q hit rate (share of the true top q% of the covered architectures that
are also in the metric's top q%, q = 1, 5) over all architectures whose isomorphism class has a
value; and the metric-vs-metric Spearman matrix. Metrics where smaller is better (ntk_cond) are
negated for the hit rates. Needs only the package (no ../shared/data).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"
SMALLER_IS_BETTER = {"ntk_cond"}


def hit_rate(score: np.ndarray, acc: np.ndarray, q: float) -> float:
    k = max(1, int(round(q * len(acc))))
    true_top = set(np.argsort(-acc, kind="stable")[:k].tolist())
    pred_top = set(np.argsort(-score, kind="stable")[:k].tolist())
    return len(true_top & pred_top) / k


def main() -> None:
    table, bench = nb201.metric_table(), nb201.benchmark()
    targets = {f"test200 {d}": bench.test200[:, i] for i, d in enumerate(nb201.DATASETS)}
    targets["val12 cifar10"] = bench.val12[:, 0]
    names = list(table.values)
    covered = np.all([np.isfinite(table.values[n]) for n in names], 0)
    res = {"protocol": table.protocol, "covered_archs": int(covered.sum()), "metrics": {}}
    for name in names:
        v = table.values[name][covered]
        signed = -v if name in SMALLER_IS_BETTER else v
        res["metrics"][name] = {
            t: {"spearman": float(stats.spearmanr(v, a[covered])[0]),
                "kendall": float(stats.kendalltau(v, a[covered])[0]),
                "top1%": hit_rate(signed, a[covered], 0.01),
                "top5%": hit_rate(signed, a[covered], 0.05)} for t, a in targets.items()}
    res["metric_vs_metric"] = {a: {b: float(stats.spearmanr(table.values[a][covered],
                                                            table.values[b][covered])[0])
                                   for b in names} for a in names}
    (RESULTS / "nb201_space_report.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Metric table vs NAS-Bench-201 ({res['covered_archs']} of 15,625 architectures "
             "covered)", "", f"Protocol: {table.protocol.get('network')}; batch: "
             f"{table.protocol.get('batch')}; jax {table.protocol.get('jax')}.", "",
             "| metric | target | Spearman | Kendall | top-1% hit | top-5% hit |",
             "|---|---|---|---|---|---|"]
    for name, per in res["metrics"].items():
        for t, r in per.items():
            lines.append(f"| {name} | {t} | {r['spearman']:.3f} | {r['kendall']:.3f} | "
                         f"{r['top1%']:.2f} | {r['top5%']:.2f} |")
    lines += ["", "Metric vs metric (Spearman):", "", "| | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"{res['metric_vs_metric'][a][b]:.3f}"
                                              for b in names) + " |")
    (RESULTS / "nb201_space_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, bench, covered, names)


def plot(table, bench, covered, names) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6))
    for ax, name in zip(np.atleast_1d(axes), names):
        ax.scatter(table.values[name][covered], bench.test200[covered, 0], s=2, alpha=0.3)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("CIFAR-10 test accuracy, 200 epochs (%)")
        ax.set_ylim(60, 95)
    fig.tight_layout()
    fig.savefig(RESULTS / "nb201_space_report.png", dpi=110)


if __name__ == "__main__":
    main()
