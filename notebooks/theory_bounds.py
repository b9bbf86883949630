# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Training-loss bounds from the NTK spectrum: linearised vs real networks
#
# Statement (ii) of `jhnas.theory`: gradient descent with step $\eta$ on the MSE
# $L = \|F - Y\|^2 / (2n)$ of the *linearised* network has residuals
# $r_t = (I - \eta\Theta/n)^t r_0$ exactly, so $L_t$ lies between $\min_j \rho_j^{2t} L_0$ and
# $\max_j \rho_j^{2t} L_0$ with $\rho_j = 1 - \eta\lambda_j/n$; for $\eta \le n/\lambda_{\max}$ the
# upper rate is $(1 - \eta\lambda_{\max}/(n\kappa))^{2t} \le (1 - \eta \bar M^2/(n\kappa))^{2t}$.
# Here both are compared with gradient descent on the real network (which leaves the NTK regime
# as it trains, less so when it is wide) and with statement (iii)'s distance bounds
# $\|r\|/\sqrt{\lambda_{\max}} \le \|\theta_\infty - \theta_0\| \le \|r\|\sqrt{\kappa}/\bar M$.
#
# Small setting (CI): 16 embedded CIFAR-10 images subsampled to 8x8, 150 steps. Full setting
# (`JHNAS_NOTEBOOK_FULL=1`): 64 images at 16x16, 1,000 steps. Everything in float64.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jhnas import data, theory
from jhnas import nn as jnn
from jhnas.net import from_flax

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
FULL = os.environ.get("JHNAS_NOTEBOOK_FULL") == "1"
N, SIZE, STEPS = (64, 16, 1000) if FULL else (16, 8, 150)

batch = data.default_batch(N)
print(f"{N} images {SIZE}x{SIZE}, {STEPS} steps")


# %% [markdown]
# Three networks: a narrow and a wide tanh MLP and a small CNN, PyTorch-default initialisation
# (`jhnas.nn`), all parameters trained (`param_set="all"`), outputs = all 10 logits.

# %%
class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, h):
        h = h.reshape(h.shape[0], -1)
        h = jnp.tanh(jnn.Dense(h.shape[-1], self.width)(h))
        return jnn.Dense(self.width, 10)(h)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, h):
        h = jnp.tanh(jnn.Conv(3, 16, 3, padding=1, use_bias=True)(h))
        h = jnp.tanh(jnn.Conv(16, 16, 3, strides=2, padding=1, use_bias=True)(h))
        return jnn.Dense(16, 10)(h.mean((1, 2)))


models = {"MLP width 32": MLP(32), "MLP width 256": MLP(256), "CNN": CNN()}
results = {}
# XLA's default optimisation (the CNN's convolutions and the 150-step loops run slowly at the
# checks' low default level) and float64, for this cell only
saved, theory.COMPILER_OPTIONS = theory.COMPILER_OPTIONS, None
with jax.enable_x64(True):
    x = jnp.asarray(batch.x[:, :: 32 // SIZE, :: 32 // SIZE], jnp.float64)
    y = jnp.asarray(batch.y)
    for name, model in models.items():
        net = from_flax(model)
        params = theory.as_float64(jax.jit(net.init)(jax.random.key(0), x[:1]))
        sp = theory.spectrum(theory.ntk_matrix(net, params, (x, y), param_set="all"))
        eta = N / (2 * sp.lam_max)  # half the largest step for which the M-form rates hold
        # formula (ii) and its bounds; GD on the linearised and on the real network
        lin = theory.check_linear_training(net, params, (x, y), eta=eta, steps=STEPS,
                                           param_set="all", simulate=None)
        real = theory.gd_trajectory(net, params, (x, y), eta=eta, steps=STEPS, param_set="all")
        lin_run = theory.gd_trajectory(net, params, (x, y), eta=eta, steps=STEPS,
                                       param_set="all", linearized=True)
        gen = theory.check_generalization(net, params, (x, y), output="all", param_set="all")
        results[name] = dict(sp=sp, eta=eta, lin=lin, real=real, lin_run=lin_run, gen=gen)
        print(f"{name:14s} P={sum(a.size for a in jax.tree.leaves(params)):6d}  "
              f"lam_max {sp.lam_max:9.3g}  lam_min {sp.lam_min:9.3g}  kappa {sp.kappa:9.3g}  "
              f"M {sp.M:7.3g}  bounds hold: {theory.holds(lin) and theory.holds(gen)}")
theory.COMPILER_OPTIONS = saved

# %% [markdown]
# ## Loss curves and bounds
#
# Step $\eta = n/(2\lambda_{\max})$. The formula (ii) and gradient descent on `jax.linearize`
# of the network coincide (to rounding) and stay between the spectral bounds; the real network
# follows them early and departs later, the CNN (far from the NTK regime) most.

# %%
fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False)
t = np.arange(STEPS + 1)
for ax, (name, r) in zip(axes[0], results.items()):
    lin, l0 = r["lin"], r["lin"].loss[0]
    ax.plot(t, r["real"].loss, "k", lw=2, label="real network (GD)")
    ax.plot(t, r["lin_run"].loss, "C0", lw=2, label="linearised network (GD)")
    ax.plot(t, lin.loss, "C1--", label="formula $(I-\\eta\\Theta/n)^t r_0$")
    ax.plot(t[1:], lin.upper.rhs, "C3", label="upper $\\max_j\\rho_j^{2t} L_0$")
    ax.plot(t[1:], lin.upper_M.rhs, "C3:", label="upper in $\\bar M, \\kappa$")
    ax.plot(t[1:], np.maximum(lin.lower.lhs, 1e-12 * l0), "C2",
            label="lower $\\min_j\\rho_j^{2t} L_0$")
    ax.set_yscale("log")
    ax.set_ylim(1e-4 * l0, 2 * l0)
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("MSE loss")
    ax.set_title(f"{name}: $\\kappa$ = {r['sp'].kappa:.3g}, $\\eta = n/(2\\lambda_{{max}})$")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "theory_bounds_loss.png"), dpi=100)

for name, r in results.items():
    gap = np.max(np.abs(r["lin_run"].loss - r["lin"].loss) / r["lin"].loss[0])
    dev = np.max(np.abs(r["real"].loss - r["lin"].loss) / r["lin"].loss[0])
    print(f"{name:14s} |GD(linearised) - formula| / L0 <= {gap:.1e};  "
          f"|real - linearised| / L0 up to {dev:.3f}")

# %% [markdown]
# ## Distance travelled and statement (iii)
#
# Linearised gradient descent converges to the minimum-norm interpolant at distance
# $B = \sqrt{r_0^\top\Theta^{-1}r_0}$ from the initialisation; the curves approach it from below
# (slowly along the directions of small eigenvalues), inside the spectral bounds.

# %%
fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), squeeze=False)
for ax, (name, r) in zip(axes[0], results.items()):
    gen = r["gen"]
    ax.plot(t, r["lin_run"].distance, "C0", label="linearised $\\|\\theta_t - \\theta_0\\|$")
    ax.plot(t, r["real"].distance, "k", label="real $\\|\\theta_t - \\theta_0\\|$")
    ax.axhline(gen.distance, color="C1", ls="--", label="$B$ (limit)")
    ax.axhline(gen.distance_lower_M.lhs, color="C2", label="$\\|r\\|/(\\sqrt{m}\\bar M)$")
    ax.axhline(gen.quad_upper.rhs ** 0.5, color="C3", label="$\\|r\\|/\\sqrt{\\lambda_{min}}$")
    ax.set_yscale("log")
    ax.set_xlabel("gradient-descent step")
    ax.set_title(name)
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "theory_bounds_distance.png"), dpi=100)
