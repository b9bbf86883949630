# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Training-free metrics vs NAS-Bench-201 accuracy
#
# The shipped metric table (`jhnas.spaces.nb201.metric_table()`, computed by `jhnas score` on
# the official protocol) against the benchmark's accuracies (`nb201.benchmark()`), over the
# architectures it covers. Everything here comes from the package: no data folder needed.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from jhnas.spaces import nb201

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
table, bench = nb201.metric_table(), nb201.benchmark()
print({k: v for k, v in table.protocol.items() if k.startswith("coverage") or k == "jax"})

# %% [markdown]
# ## Rank correlation with every target

# %%
covered = np.all([np.isfinite(v) for v in table.values.values()], 0)
print(f"{covered.sum()} architectures covered")
targets = {f"test200 {d}": bench.test200[:, i] for i, d in enumerate(nb201.DATASETS)}
targets["val12 cifar10"] = bench.val12[:, 0]
for name, v in table.values.items():
    rhos = {t: stats.spearmanr(v[covered], a[covered])[0] for t, a in targets.items()}
    print(f"{name:10s}", "  ".join(f"{t}: {r:+.3f}" for t, r in rhos.items()))

# %% [markdown]
# ## M and kappa against CIFAR-10 test accuracy

# %%
names = list(table.values)
fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6))
for ax, name in zip(np.atleast_1d(axes), names):
    ax.scatter(table.values[name][covered], bench.test200[covered, 0], s=2, alpha=0.3)
    ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel("CIFAR-10 test acc. (%)")
    ax.set_ylim(60, 95)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "nb201_correlation.png"), dpi=100)
