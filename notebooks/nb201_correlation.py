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
import numpy as np

from jhnas.experiments import correlation
from jhnas.spaces import nb201

OUT = os.environ.get("JHNAS_NOTEBOOK_OUT", ".")
table, bench = nb201.metric_table(), nb201.benchmark()
print({k: v for k, v in table.protocol.items() if k.startswith("coverage") or k == "jax"})

# %% [markdown]
# ## Rank correlation with every target
#
# Spearman rho, Kendall tau and the share of the true top 1 % / 5 % that the metric puts in its
# own top 1 % / 5 % (`jhnas.experiments.correlation.agreement`); `ntk_cond` is better when smaller, so its rho
# is negative and its hit rates use the negated value.

# %%
values = table.values  # NaN where a metric is not computed yet; left out pairwise
print({n: int(np.isfinite(v).sum()) for n, v in values.items()}, "architectures covered")
for name, per in correlation.agreement_table(values, correlation.nb201_targets(bench)).items():
    for target, r in per.items():
        print(f"{name:10s} {target:22s} rho {r['spearman']:+.3f}  tau {r['kendall']:+.3f}  "
              f"top-1% {r['top1%']:.2f}  top-5% {r['top5%']:.2f}")

# %% [markdown]
# ## Each metric against CIFAR-10 test accuracy

# %%
fig = correlation.scatter(values, bench.test200[:, 0])
fig.savefig(os.path.join(OUT, "nb201_correlation.png"), dpi=100)
