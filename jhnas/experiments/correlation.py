"""How well a training-free metric ranks architectures: rank correlations and top-k hit rates.

>>> import numpy as np
>>> from jhnas.experiments import correlation
>>> acc = np.array([90.0, 80.0, 70.0, 60.0])
>>> r = correlation.agreement(np.array([4.0, 3.0, 1.0, 2.0]), acc, quantiles=(0.25,))
>>> round(r["spearman"], 2), r["top25%"]
(0.8, 1.0)

Missing values (NaN) in either array are left out pairwise.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from jhnas.spaces import nb201

# metrics where a smaller value predicts a better architecture
SMALLER_IS_BETTER = frozenset({"ntk_cond"})


def _finite(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(a, float) for a in arrays)
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return tuple(a[ok] for a in arrays)


def _stat(result) -> float:
    """The statistic of a scipy test result (its stubs do not declare the attribute)."""
    return float(result.statistic)


def hit_rate(score: np.ndarray, acc: np.ndarray, q: float) -> float:
    """Share of the true top ``q`` fraction (by ``acc``) that is also in the top ``q`` by
    ``score`` (larger is better for both); ``k = max(1, round(q n))``."""
    score, acc = _finite(score, acc)
    k = max(1, int(round(q * len(acc))))
    true_top = set(np.argsort(-acc, kind="stable")[:k].tolist())
    pred_top = set(np.argsort(-score, kind="stable")[:k].tolist())
    return len(true_top & pred_top) / k


def agreement(score: np.ndarray, acc: np.ndarray, *, smaller_is_better: bool = False,
              quantiles: Sequence[float] = (0.01, 0.05)) -> dict[str, float]:
    """Spearman rho and Kendall tau of ``score`` (as is: a good ``ntk_cond`` gives a negative rho)
    and the top-q hit rates (``score`` negated first where ``smaller_is_better``), plus ``n``."""
    score, acc = _finite(score, acc)
    out = {"spearman": _stat(stats.spearmanr(score, acc)),
           "kendall": _stat(stats.kendalltau(score, acc)), "n": int(len(acc))}
    signed = -score if smaller_is_better else score
    for q in quantiles:
        out[f"top{q * 100:g}%"] = hit_rate(signed, acc, q)
    return out


def agreement_table(values: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                    **kw) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`agreement` of every metric against every target: ``[metric][target] -> dict``."""
    return {m: {t: agreement(v, a, smaller_is_better=m in SMALLER_IS_BETTER, **kw)
                for t, a in targets.items()} for m, v in values.items()}


def rank_matrix(values: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Pairwise Spearman rho between metrics (pairwise-complete)."""
    def rho(a, b):
        a, b = _finite(a, b)
        return _stat(stats.spearmanr(a, b))

    return {a: {b: rho(va, vb) for b, vb in values.items()} for a, va in values.items()}


def nb201_targets(bench) -> dict[str, np.ndarray]:
    """The accuracies of :func:`jhnas.spaces.nb201.benchmark` a metric is judged against."""
    out = {f"test200 {d}": bench.test200[:, i] for i, d in enumerate(nb201.DATASETS)}
    out["val12 cifar10"] = bench.val12[:, 0]
    return out


def scatter(values: Mapping[str, np.ndarray], acc: np.ndarray, *,
            ylabel: str = "CIFAR-10 test accuracy, 200 epochs (%)", ylim=(60, 95)):
    """One log-x scatter panel per metric against ``acc``, titled with Spearman rho; returns
    the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.6), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        x, y = _finite(v, acc)
        ax.scatter(x, y, s=2, alpha=0.3)
        if np.all(x > 0):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        ax.set_title(f"Spearman {stats.spearmanr(x, y)[0]:+.3f} (n = {len(x)})")
    fig.tight_layout()
    return fig
