# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The HNAS objective over its two hyper-parameters, and the search curves
#
# HNAS picks $\arg\min_A \; 10^c\,|M(A)^2 - \nu| + \kappa(A)/(M(A) + 10^{-6})$ with
# $\sqrt\nu = t s$ (`jhnas.hnas.objective`; statement (iv) of `jhnas.theory` explains the two
# terms). Which architecture that is depends on $(t, c)$ only; here the argmin over every
# architecture of the shipped metric table (`nb201.metric_table()`, M and $\kappa$ on the
# official protocol) is looked up in the benchmark (`nb201.benchmark()`) for every point of a
# $(t, c)$ grid: the map HNAS's Bayesian optimisation explores. The real search grows its pool
# by 2,000 random architectures per evaluation, so its argmin is taken over a subset.
#
# Part 2 plots the search curves stored by `bench/hnas_nb201.py` in
# `bench/results/hnas_nb201.json` (skipped with a message if the file is absent; set
# `JHNAS_RESULTS` to another folder). Nothing is trained or compiled: the small and the full
# setting (`JHNAS_NOTEBOOK_FULL=1`: a 101 x 101 grid instead of 41 x 41) take seconds.

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jhnas import hnas
from jhnas.spaces import nb201

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
FULL = os.environ.get("JHNAS_NOTEBOOK_FULL") == "1"
GRID = 101 if FULL else 41
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
RESULTS = Path(os.environ.get("JHNAS_RESULTS", HERE.parent / "bench" / "results"))

table, bench = nb201.metric_table(), nb201.benchmark()
m_all, k_all = table.values["ntk_trace"], table.values["ntk_cond"]
pool = np.flatnonzero(np.isfinite(m_all) & np.isfinite(k_all))
M, kappa = m_all[pool], k_all[pool]
acc = bench.test200[pool, 0]  # CIFAR-10 test accuracy after 200 epochs
print(f"{pool.size} architectures with M and kappa ({table.coverage('ntk_trace'):.1%} of the "
      f"space); their CIFAR-10 test accuracy: median {np.median(acc):.2f}, best {acc.max():.2f}")

# %% [markdown]
# ## The argmin's accuracy over the $(t, c)$ grid
#
# Official scale ($\sqrt\nu = t \cdot 5000$, left) and jhnas's log scale ($\sqrt\nu = 5000^t$,
# right). On the linear scale almost every $t$ above a few hundredths puts $\sqrt\nu$ above all
# M values, and the argmin is then decided by $\mu M^2$ against $\kappa/M$.

# %%
ts, cs = np.linspace(0, 1, GRID), np.linspace(-4, 0, GRID)


def argmin_map(nu_scale):
    idx = np.empty((GRID, GRID), np.int64)
    for i, c in enumerate(cs):
        for j, t in enumerate(ts):
            idx[i, j] = np.argmin(hnas.objective(M, kappa, t, c, 5e3, nu_scale))
    return idx


maps = {scale: argmin_map(scale) for scale in hnas.NU_SCALES}
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, (scale, idx) in zip(axes, maps.items()):
    im = ax.imshow(acc[idx], origin="lower", aspect="auto", extent=(0, 1, -4, 0),
                   vmin=np.percentile(acc, 5), vmax=acc.max(), cmap="viridis")
    top = acc[idx] >= np.percentile(acc, 99)
    ax.contour(ts, cs, top.astype(float), levels=[0.5], colors="w", linewidths=1)
    ax.set_xlabel("t")
    ax.set_ylabel("c  (mu = 10^c)")
    ax.set_title(f"nu scale {scale}: {np.mean(top):.0%} of the grid in the top 1 %")
    fig.colorbar(im, ax=ax, label="CIFAR-10 test acc. of the argmin (%)")
    i, j = np.unravel_index(np.argmax(acc[idx]), idx.shape)
    best = pool[idx[i, j]]
    print(f"{scale:6s}: best grid point t={ts[j]:.3f} c={cs[i]:.2f} -> {nb201.arch_at(best)} "
          f"test {acc[idx[i, j]]:.2f} (M {M[idx[i, j]]:.3g}, kappa {kappa[idx[i, j]]:.3g}); "
          f"{len(np.unique(idx))} distinct argmins on the grid")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "hnas_objective_grid.png"), dpi=100)

# %% [markdown]
# ## Where the argmins sit in the (M, kappa) plane
#
# Every covered architecture, coloured by accuracy; the grid's argmins (log scale) in red. The
# good architectures have a moderate-to-large M and a small $\kappa$: the $\kappa/M$ term pulls
# towards the lower right, the $\mu|M^2 - \nu|$ term holds M near $\sqrt\nu$.

# %%
fig, ax = plt.subplots(figsize=(6, 4.5))
sc = ax.scatter(M, kappa, c=acc, s=2, cmap="viridis", vmin=np.percentile(acc, 5))
sel = np.unique(maps["log"])
ax.scatter(M[sel], kappa[sel], s=25, facecolors="none", edgecolors="r", label="grid argmins (log)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("M (ntk_trace)")
ax.set_ylabel("kappa (ntk_cond)")
ax.legend()
fig.colorbar(sc, label="CIFAR-10 test acc. (%)")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "hnas_objective_plane.png"), dpi=100)

# %% [markdown]
# ## Search curves (bench/results/hnas_nb201.json)
#
# Best 12-epoch validation accuracy found so far (the search signal) and the 200-epoch CIFAR-10
# test accuracy of that incumbent, mean and standard deviation over seeds, against the number of
# evaluations; protocol A.

# %%
path = RESULTS / "hnas_nb201.json"
if not path.is_file():
    print(f"no search results at {path}: run `python bench/hnas_nb201.py` to make them; "
          "skipping the search curves")
else:
    res = json.loads(path.read_text())["A"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in res.items():
        hist = [run["history"] for run in r["runs"]]
        if not hist or sum(h["cost"] for h in hist[0]) == 0:
            continue  # training-free baselines evaluate nothing
        k = min(len(h) for h in hist)
        sig = np.maximum.accumulate([[h["signal"] for h in run[:k]] for run in hist], axis=1)
        inc = []
        for run in hist:
            best, cur = -np.inf, []
            for h in run[:k]:
                if h["signal"] > best:
                    best, a = h["signal"], float(bench.test200[h["index"], 0])
                cur.append(a)
            inc.append(cur)
        inc = np.array(inc)
        x = np.arange(1, k + 1)
        for ax, v in zip(axes, (sig, inc)):
            ax.plot(x, v.mean(0), marker=".", label=f"{name} ({len(hist)} seeds)")
            ax.fill_between(x, v.mean(0) - v.std(0), v.mean(0) + v.std(0), alpha=0.15)
        print(f"{name:28s} after {k} evaluations: signal {sig[:, -1].mean():.2f}, "
              f"test {inc[:, -1].mean():.2f} +- {inc[:, -1].std():.2f}")
    axes[0].set_ylabel("best 12-epoch val. accuracy so far (%)")
    axes[1].set_ylabel("CIFAR-10 test acc. of the incumbent (%)")
    axes[0].set_ylim(70, 90)  # a method below the range is listed in the printout
    axes[1].set_ylim(88, 95)
    for ax in axes:
        ax.set_xlabel("evaluations")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "hnas_search_curves.png"), dpi=100)

    # where HNAS evaluated, on the official-scale map
    runs = res["hnas[ntk_trace]"]["runs"] if "hnas[ntk_trace]" in res else []  # linear nu, M
    tc = np.array([(h["t"], h["c"]) for run in runs for h in run["history"]]).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.imshow(acc[maps["linear"]], origin="lower", aspect="auto", extent=(0, 1, -4, 0),
              vmin=np.percentile(acc, 5), vmax=acc.max(), cmap="viridis")
    ax.scatter(tc[:, 0], tc[:, 1], s=8, c="r", label="HNAS evaluations (all seeds)")
    ax.set_xlabel("t")
    ax.set_ylabel("c")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "hnas_search_points.png"), dpi=100)
