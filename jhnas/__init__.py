"""jhnas: gradient-based training-free neural architecture search in JAX.

The empirical NTK (:mod:`jhnas.ntk`), the training-free metrics (:mod:`jhnas.metrics`),
networks as pure functions (:mod:`jhnas.net`), search spaces (:mod:`jhnas.spaces`), CIFAR
data (:mod:`jhnas.data`), rank agreement with benchmarks (:mod:`jhnas.correlation`), the
Gaussian process (:mod:`jhnas.gp`), HNAS (:mod:`jhnas.hnas`) and its baselines
(:mod:`jhnas.baselines`), the exact relations between the metrics, the NTK, training and the
HNAS objective (:mod:`jhnas.theory`), scoring over several devices (:mod:`jhnas.parallel`), and
short optax trainings as HNAS's signal (:mod:`jhnas.train`).
"""
from jhnas._version import __version__
from jhnas import (baselines, correlation, data, gp, hnas, metrics, net, nn, ntk, parallel,
                   spaces, theory, train)
from jhnas.data import Batch, default_batch, load_batch
from jhnas.metrics import METRICS, metrics_fn
from jhnas.net import Block, Net, block_init, from_apply, from_blocks, from_flax
from jhnas.ntk import (Implementation, condition_number, eigenvalues, empirical_ntk_fn,
                       trace_norm)

__all__ = [
    "Batch", "Block", "Implementation", "METRICS", "Net", "__version__", "baselines", "block_init",
    "condition_number", "correlation", "data", "default_batch", "eigenvalues", "empirical_ntk_fn",
    "from_apply", "from_blocks", "from_flax", "gp", "hnas", "load_batch", "metrics", "metrics_fn",
    "net", "nn", "ntk", "parallel", "spaces", "theory", "trace_norm", "train",
]
