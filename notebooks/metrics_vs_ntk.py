# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Gradient metrics against the NTK trace norm across NAS-Bench-201
#
# Statement (i) of `jhnas.theory`: with $g = \nabla_\theta L = J^\top u / n$ ($J$ the Jacobian
# of all logits, $u = n\,\partial L/\partial F$),
#
# $$\|g\| \le \sqrt{\lambda_{\max}(\Theta)}\,\|u\|/n \le \sqrt{2}\,\bar M_{\rm s}, \qquad
#   \mathrm{GradNorm} = \textstyle\sum_l \|g_l\| \le \sqrt{L}\,\|g\|, \qquad
#   \mathrm{SNIP} \le \|\theta\|\,\|g\|,$$
#
# with $\bar M_{\rm s}^2 = \mathrm{tr}\,\Theta / n$: the gradient metrics are controlled by the
# NTK's trace, which is why they correlate with HNAS's M (`ntk_trace`). This notebook computes
# the metrics of random NB201 architectures (`jhnas.metrics_fn`, official protocol: train-mode
# BatchNorm, cross-entropy with true labels), their Spearman correlation with M, and the bounds
# of `theory.check_grad_norm` / `theory.check_snip` for each architecture.
#
# * Small setting (CI): 12 random architectures, 1 cell per stage, C = 4, 8 images at 16x16,
#   GraSP left out (its second-order pass compiles for another ~10 s); the correlations of all
#   metrics on 200 architectures of the official protocol are read from `bench/results` if there.
# * Full setting (`JHNAS_NOTEBOOK_FULL=1`): 200 architectures, 5 cells, C = 16, the official
#   64 images at 32x32 for the metrics and the first 16 of them for the bounds (the exact
#   Jacobian of all logits has 160 rows). Hours on a CPU.
#
# Parameters are drawn with numpy from PyTorch's default distributions (those of
# `jhnas.nn`: U(+-1/sqrt(fan_in)) for kernels and biases, BatchNorm scale 1 and bias 0), which
# skips Flax's eager initialisation. The bounds are evaluated in float32 here (rounding-level
# violations of 1e-6 are possible; `tests/test_theory.py` checks them in float64).

# %%
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
from scipy import stats

from jhnas import data, metrics, theory
from jhnas.spaces import nb201

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
FULL = os.environ.get("JHNAS_NOTEBOOK_FULL") == "1"
N_ARCHS, CELLS, C, N, SIZE, N_THEORY = (200, 5, 16, 64, 32, 16) if FULL else (12, 1, 4, 8, 8, 4)
# GraSP costs a second-order pass (another ~10 s of compilation): full setting only
NAMES = ["grad_norm", "snip", "fisher", "ntk_trace", "ntk_cond"] + (["grasp"] if FULL else [])
batch = data.default_batch(N)
batch = batch._replace(x=batch.x[:, :: 32 // SIZE, :: 32 // SIZE])
small = (jnp.asarray(batch.x[:N_THEORY]), jnp.asarray(batch.y[:N_THEORY]))
archs = nb201.sample(jax.random.key(0), N_ARCHS)
print(f"{N_ARCHS} architectures, {CELLS} cell(s), C={C}, {N} images {SIZE}x{SIZE}")


def torch_default_params(net, rng):
    """PyTorch-default parameters of ``net`` drawn with numpy (shapes from jax.eval_shape)."""
    x1 = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x1)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    paths = {tuple(str(getattr(k, "key", k)) for k in p): leaf for p, leaf in flat}
    out = []
    for path, leaf in paths.items():
        kernel = paths.get(path[:-1] + ("kernel",))
        if path[-1] in ("kernel", "bias") and kernel is not None:
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            v = rng.uniform(-bound, bound, leaf.shape)
        else:
            v = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
        out.append(jnp.asarray(v, jnp.float32))
    return jax.tree.structure(shapes).unflatten(out)


# %% [markdown]
# ## Metrics and bounds of every architecture
#
# Networks of jit-compiled blocks (`nb201.make_net(compile="blocks")`): the first architecture
# compiles the blocks, the others reuse them.

# %%
rows = []
for i, arch in enumerate(archs):
    net = nb201.make_net(arch, compile="blocks", C=C, N=CELLS)
    params = torch_default_params(net, np.random.default_rng(nb201.index_of(arch)))
    row = metrics.metrics_fn(net, NAMES)(params, batch)
    gn = theory.check_grad_norm(net, params, small)
    sn = theory.check_snip(net, params, small)
    row.update(official=gn.official, global_norm=gn.grad_norm, upper=gn.upper.rhs,
               official_ntk=gn.official_ntk.rhs, cross_entropy=gn.cross_entropy.rhs,
               snip_small=sn.snip, snip_ntk=sn.ntk.rhs,
               violated=sum(not theory.holds(b, 1e-5) for c in (gn, sn) for b in theory.bounds(c)))
    rows.append(row)
table = {k: np.array([r[k] for r in rows], np.float64) for k in rows[0]}
print(f"relations violated beyond 1e-5 relative (float32) over all architectures: "
      f"{int(table['violated'].sum())}")

# %% [markdown]
# ## Spearman correlation with M
#
# (GraSP's sign is kept; `ntk_cond` is better when smaller.) If `bench/results` holds the
# 200-architecture scores of `bench/nb201_correlation.py` (official protocol, 5 cells, C = 16,
# batch 64), the same correlations are printed for them.

# %%
m = table["ntk_trace"]
print(f"{'metric':10s} rho with M ({N_ARCHS} archs, this run)")
for name in NAMES:
    if name != "ntk_trace":
        print(f"{name:10s} {stats.spearmanr(table[name], m, nan_policy='omit')[0]:+.3f}")

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
shards = sorted((HERE.parent / "bench" / "results").glob("nb201_sample200_seed0.shard*.csv"))
if shards:
    from jhnas.experiments.results import read_rows
    recs = [r for s in shards for r in read_rows(s)]
    bench_names = ["grad_norm", "snip", "grasp", "fisher", "ntk_trace", "ntk_cond"]
    cols = {k: np.array([float(r[k]) for r in recs]) for k in bench_names}
    print(f"\n{len(recs)} archs of bench/results (official protocol): rho with M")
    for name in bench_names:
        if name != "ntk_trace":
            print(f"{name:10s} {stats.spearmanr(cols[name], cols['ntk_trace'])[0]:+.3f}")
else:
    print("no bench/results/nb201_sample200_seed0.shard*.csv: run bench/nb201_correlation.py")

# %%
others = [n for n in NAMES if n != "ntk_trace"]
fig, axes = plt.subplots(1, len(others), figsize=(3.6 * len(others), 3.3))
for ax, name in zip(axes, others):
    v = np.abs(table[name]) if name == "grasp" else table[name]
    ok = (m > 0) & (v > 0)
    ax.scatter(m[ok], v[ok], s=12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("M (ntk_trace)")
    ax.set_ylabel("|grasp|" if name == "grasp" else name)
    ax.set_title(f"rho {stats.spearmanr(table[name], m, nan_policy='omit')[0]:+.2f}")
    ax.yaxis.set_minor_formatter(NullFormatter())
fig.tight_layout()
fig.savefig(os.path.join(OUT, "metrics_vs_ntk.png"), dpi=100)

# %% [markdown]
# ## The bounds of statement (i), architecture by architecture
#
# Each point is one architecture: a metric (y) against its NTK bound (x); every point must lie
# on or below the diagonal. Left: the global gradient norm against
# $\sqrt{\lambda_{\max}}\|u\|/n$ and against $\sqrt2\,\bar M_{\rm s}$; middle: the official
# GradNorm (sum of per-layer norms) against $\sqrt{L\lambda_{\max}}\|u\|/n$; right: SNIP against
# $\|\theta\|\sqrt{\lambda_{\max}}\|u\|/n$.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
pairs = [[("upper", "global_norm", "sqrt(lam_max) |u| / n"),
          ("cross_entropy", "global_norm", "sqrt(2) M_s")],
         [("official_ntk", "official", "sqrt(L lam_max) |u| / n")],
         [("snip_ntk", "snip_small", "|theta| sqrt(lam_max) |u| / n")]]
for ax, group, title in zip(axes, pairs, ["||g||", "GradNorm (official)", "SNIP"]):
    lo, hi = np.inf, 0.0
    for xk, yk, label in group:
        x, y = table[xk], table[yk]
        ok = (x > 0) & (y > 0)
        ax.scatter(x[ok], y[ok], s=12, label=label)
        lo, hi = min(lo, x[ok].min(), y[ok].min()), max(hi, x[ok].max(), y[ok].max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="bound = value")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bound")
    ax.set_ylabel(title)
    ax.legend(fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
fig.tight_layout()
fig.savefig(os.path.join(OUT, "metrics_vs_ntk_bounds.png"), dpi=100)
