"""jhnas: gradient-based training-free neural architecture search in JAX.

The core: networks as pure functions (:mod:`jhnas.net`, layers in :mod:`jhnas.nn`), the
empirical NTK (:mod:`jhnas.ntk`), the training-free metrics (:mod:`jhnas.metrics`), search spaces
(:mod:`jhnas.spaces`), CIFAR data (:mod:`jhnas.data`), the Gaussian process (:mod:`jhnas.gp`),
HNAS (:mod:`jhnas.hnas`) and its baselines (:mod:`jhnas.baselines`), the exact relations between
the metrics, the NTK, training and the HNAS objective (:mod:`jhnas.theory`), short optax
trainings (:mod:`jhnas.train`) and several devices (:mod:`jhnas.parallel`).

Above it, :mod:`jhnas.experiments` (benchmark problems, search runners, resumable scoring,
results files, rank agreement), shared by the command line (:mod:`jhnas.cli`) and ``bench/``.

Submodules load on first use: ``import jhnas`` is cheap, ``jhnas.ntk`` imports JAX.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jhnas._version import __version__

#: Names exported here, and the submodule each comes from.
_EXPORTS = {
    "Batch": "data", "default_batch": "data", "load_batch": "data",
    "METRICS": "metrics", "metrics_fn": "metrics",
    "Block": "net", "Net": "net", "block_init": "net", "from_apply": "net",
    "from_blocks": "net", "from_flax": "net",
    "Implementation": "ntk", "condition_number": "ntk", "eigenvalues": "ntk",
    "empirical_ntk_fn": "ntk", "trace_norm": "ntk",
}
_SUBMODULES = ("baselines", "data", "experiments", "gp", "hnas", "metrics", "net", "nn", "ntk",
               "parallel", "spaces", "theory", "train")

__all__ = [
    "Batch", "Block", "Implementation", "METRICS", "Net", "__version__", "baselines", "block_init",
    "condition_number", "data", "default_batch", "eigenvalues", "empirical_ntk_fn",
    "experiments", "from_apply", "from_blocks", "from_flax", "gp", "hnas", "load_batch",
    "metrics", "metrics_fn", "net", "nn", "ntk", "parallel", "spaces", "theory", "trace_norm",
    "train",
]

if TYPE_CHECKING:
    from jhnas import (baselines, data, experiments, gp, hnas, metrics, net, nn, ntk, parallel,
                       spaces, theory, train)
    from jhnas.data import Batch, default_batch, load_batch
    from jhnas.metrics import METRICS, metrics_fn
    from jhnas.net import Block, Net, block_init, from_apply, from_blocks, from_flax
    from jhnas.ntk import (Implementation, condition_number, eigenvalues, empirical_ntk_fn,
                           trace_norm)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"jhnas.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jhnas.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jhnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
