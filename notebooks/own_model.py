# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # jhnas on your own Flax model
#
# Any `flax.linen` module whose `__call__(x)` returns logits can be scored: `jhnas.from_flax`
# turns it into a `Net` of pure functions (its `nn.Conv`/`nn.Dense` layers are tapped, its
# `nn.BatchNorm` layers forced to train mode, the official protocol). Below: a plain MLP and a
# small ResNet written with stock Flax layers, their empirical NTK, the training-free metrics,
# the exact checks of `jhnas.theory` and the HNAS objective's terms.
#
# Small setting (CI): 16 embedded CIFAR-10 images subsampled to 8x8. Full setting
# (`JHNAS_NOTEBOOK_FULL=1`): 64 images at 32x32.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jhnas
from jhnas import theory

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
FULL = os.environ.get("JHNAS_NOTEBOOK_FULL") == "1"
N, SIZE = (64, 32) if FULL else (16, 8)
batch = jhnas.default_batch(N)
batch = batch._replace(x=batch.x[:, :: 32 // SIZE, :: 32 // SIZE])
print(f"{N} images {SIZE}x{SIZE}")


# %% [markdown]
# ## Two models, stock Flax

# %%
class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(nn.Dense(64)(x))
        x = jax.nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        h = jax.nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.features, (3, 3))(x)))
        h = nn.BatchNorm(use_running_average=False)(nn.Conv(self.features, (3, 3))(h))
        return jax.nn.relu(x + h)


class ResNet(nn.Module):
    features: int = 8

    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(self.features, (3, 3))(x)))
        x = Block(self.features)(x)
        x = Block(self.features)(x)
        return nn.Dense(10)(x.mean((1, 2)))


models = {"MLP": MLP(), "ResNet": ResNet()}
nets = {name: jhnas.from_flax(m, bn="train") for name, m in models.items()}
params = {name: jax.jit(net.init)(jax.random.key(0), batch.x[:1]) for name, net in nets.items()}
for name, p in params.items():
    print(f"{name}: {sum(a.size for a in jax.tree.leaves(p))} parameters")

# %% [markdown]
# ## The empirical NTK
#
# The NASI/HNAS NTK: per-sample gradients of the true-label logit over the Conv/Dense kernels
# and biases. The official computation is a per-layer *decomposition* of one batched backward
# pass; with train-mode BatchNorm it differs from the exact Jacobian of the batched function
# (BatchNorm couples the samples), without BatchNorm the two agree.

# %%
grams = {}
for name, net in nets.items():
    dec = jhnas.empirical_ntk_fn(net, implementation="decomposition")(params[name], batch.x,
                                                                     batch.y)
    jac = jhnas.empirical_ntk_fn(net, implementation="jacobian")(params[name], batch.x, batch.y)
    grams[name] = np.asarray(dec)
    diff = float(np.abs(np.asarray(dec) - np.asarray(jac)).max() / np.abs(np.asarray(jac)).max())
    print(f"{name:6s} M = {jhnas.trace_norm(dec):8.4g}  kappa = {jhnas.condition_number(dec):9.4g}"
          f"  |decomposition - Jacobian| / max = {diff:.1e}")

# %% [markdown]
# ## Training-free metrics
#
# `metrics_fn` computes several metrics with shared passes (one compilation). NASWOT would also
# need the ReLUs to be recorded: write them as `jhnas.nn.relu(self, x)` in the model.

# %%
names = ["ntk_trace", "ntk_cond", "grad_norm", "snip", "grasp", "fisher"]
scores = {name: jhnas.metrics_fn(net, names)(params[name], batch) for name, net in nets.items()}
for name, s in scores.items():
    print(f"{name:6s} " + "  ".join(f"{k} {v:.4g}" for k, v in s.items()))

# %% [markdown]
# ## The theory checks
#
# `theory.check_all` evaluates every relation of `jhnas.theory` on the model in float64 (exact
# Jacobian of the batched function, so they hold with train-mode BatchNorm too); here on the
# first 8 images. The ResNet's table is printed; the dense-Hessian GraSP rows are skipped above
# 1,500 parameters.

# %%
checks = {}
with jax.enable_x64(True):
    for name, net in nets.items():
        p64 = theory.as_float64(params[name])
        b64 = (theory.as_float64(jnp.asarray(batch.x[:8])), jnp.asarray(batch.y[:8]))
        checks[name] = theory.check_all(net, p64, b64, steps=20)
for name, c in checks.items():
    rows = theory.table(c)
    print(f"{name}: {sum(r['status'] == 'ok' for r in rows)} rows hold, "
          f"{sum(r['status'] == 'VIOLATED' for r in rows)} violated, "
          f"{sum(r['status'].startswith('skipped') for r in rows)} skipped")
print(theory.format_table(theory.table(checks["ResNet"])))

# %% [markdown]
# ## The HNAS objective's terms
#
# From the label NTK: trainability $\mu|M^2 - \nu|$ and generalization $\kappa/(M + 10^{-6})$
# at one $(t, c)$ (log scale for $\nu$, $s = 5000$).

# %%
for name, g in grams.items():
    terms = theory.objective_terms(g, t=0.4, c=-2.0, s=5e3, nu_scale="log")
    print(f"{name:6s} " + "  ".join(f"{k} {v:.4g}" for k, v in terms._asdict().items()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, g in grams.items():
    lam = jhnas.eigenvalues(g)[::-1]
    axes[0].semilogy(np.arange(1, lam.size + 1), np.clip(lam, 1e-12, None), marker=".",
                     label=f"{name} (kappa {jhnas.condition_number(g):.3g})")
axes[0].set_xlabel("eigenvalue rank")
axes[0].set_ylabel("eigenvalue of the label NTK")
axes[0].legend()
slack = {name: {(r["statement"], r["name"]): r["rel_slack"] for r in theory.table(c)
                if r["relation"] == "<=" and r["status"] == "ok"} for name, c in checks.items()}
keys = sorted(set().union(*slack.values()))
for k, (name, s) in enumerate(slack.items()):
    axes[1].barh(np.arange(len(keys)) + 0.4 * k, [s.get(key, np.nan) for key in keys],
                 height=0.4, label=name)
axes[1].set_yticks(np.arange(len(keys)) + 0.2, [f"{a}: {b}" for a, b in keys], fontsize=6)
axes[1].set_xlabel("relative slack (rhs - lhs) / max(|lhs|, |rhs|)")
axes[1].legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "own_model.png"), dpi=100)
