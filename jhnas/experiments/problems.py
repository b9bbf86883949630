"""Search problems (:class:`jhnas.hnas.Problem`) built from benchmarks and trainings, and the
small networks of the command line.

* :func:`nb201_problem`: NAS-Bench-201 as a table: M and kappa from the shipped metric table, the
  12-epoch validation accuracy as the signal, the 200-epoch test accuracies as the report.
* :func:`nb201_signal`, :func:`darts_problem`: a short training (:func:`jhnas.train.train`) as the
  signal, sized by a :class:`Preset` on data from :func:`signal_data`.
* :func:`theory_net`: the network ``jhnas theory`` checks.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import data, metrics
from jhnas import nn as jnn
from jhnas.hnas import Problem, Signal, positive_metric
from jhnas.net import Net, from_flax
from jhnas.progress import bar
from jhnas.spaces import darts, nb201
from jhnas.train import Arrays, TrainConfig, train

# ----------------------------------------------------------------------------- NAS-Bench-201 table

def nb201_problem(metric: str = "ntk_trace", dataset: str = "cifar10", *,
                  table: nb201.MetricTable | None = None) -> Problem:
    """The tabular NB201 problem: M and kappa from the shipped metric table
    (:func:`jhnas.spaces.nb201.metric_table`), signal = 12-epoch validation accuracy on
    ``dataset``, cost = 12 x its CIFAR-10 seconds per epoch (the official cost table; the
    benchmark has no per-epoch time for the other datasets here), report = 200-epoch test accuracy
    on the three datasets. Raises ``ValueError`` for an unknown dataset or metric."""
    if dataset not in nb201.DATASETS:
        raise ValueError(f"dataset must be one of {nb201.DATASETS}, got {dataset!r}")
    table = table if table is not None else nb201.metric_table()
    for name in (metric, "ntk_cond"):
        if name not in table.values:
            raise ValueError(f"metric {name!r} is not in the metric table; it has "
                             f"{', '.join(table.values)}")
    bench = nb201.benchmark()
    d = nb201.DATASETS.index(dataset)

    def signal(key, index):
        del key  # a table lookup is deterministic
        return float(bench.val12[index, d]), 12.0 * float(bench.epoch_seconds[index])

    def report(index):
        return {"arch": nb201.arch_at(index), "index": int(index),
                **{f"val12_{ds}": float(bench.val12[index, k]) for k, ds in
                   enumerate(nb201.DATASETS)},
                **{f"test200_{ds}": float(bench.test200[index, k]) for k, ds in
                   enumerate(nb201.DATASETS)}}

    return Problem(positive_metric(table.values[metric]), table.values["ntk_cond"], signal, report,
                   nb201.neighbours)


def default_scale(problem: Problem, metric: str) -> float:
    """``s`` for ``metric``: 5e3 for ntk_trace (the paper), else the largest value in the table."""
    return 5e3 if metric == "ntk_trace" else float(np.nanmax(problem.metric))


# ----------------------------------------------------------------------------- training signals

class Preset(NamedTuple):
    """A training signal's size: network width/depth, the training, and the data split."""

    C: int
    cells: int  # NB201: cells per stage
    layers: int  # DARTS: cells of NetworkCIFAR
    config: TrainConfig
    train_images: int | None  # None: half of the training split
    val_images: int | None  # None: the other half


#: ``cpu``: minutes per search on 2 CPU cores; ``paper``: the HNAS paper's DARTS-space signal
#: (10 epochs on half of CIFAR-10, validation on the other half, batch 576, C = 16, 5 layers),
#: sized for a GPU/TPU.
PRESETS = {
    "cpu": Preset(8, 1, 3, TrainConfig(epochs=5, batch_size=64, learning_rate=0.05), 768, 256),
    "paper": Preset(16, 5, 5, TrainConfig(epochs=10, batch_size=576, learning_rate=0.1), None,
                    None),
}


def signal_data(preset: Preset, data_dir=None, dataset: str = "cifar10") -> tuple[Arrays, Arrays]:
    """(train, validation) arrays, both from the training split: the first ``train_images`` and
    the next ``val_images`` (``None``: halves). Without ``data_dir``, the 1,017 embedded CIFAR-10
    images (three quarters for training)."""
    if data_dir is None:
        if dataset != "cifar10":
            raise ValueError("the embedded images are CIFAR-10: give data_dir for " + dataset)
        x, y = data.default_images()
        n_train = 3 * len(y) // 4
    else:
        x, y = data.load_cifar(data_dir, dataset, "train")
        n_train = preset.train_images or len(y) // 2
    n_val = preset.val_images or len(y) - n_train
    if n_train + n_val > len(y):
        n_train = 3 * len(y) // 4
        n_val = len(y) - n_train
    x = data.normalize(x)
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val])


def nb201_signal(preset: Preset, train_data: Arrays, val_data: Arrays, num_classes: int = 10, *,
                 progress: bool = False) -> Signal:
    """HNAS signal ``(key, index) -> (validation accuracy %, seconds)``: trains NB201
    architecture ``index`` (the benchmark's network, ``preset="nb201"``) from scratch with
    ``key``."""
    def signal(key, index):
        module = nb201.NB201Net(nb201.arch_at(int(index)), num_classes=num_classes, C=preset.C,
                                N=preset.cells, preset="nb201")
        _, hist = train(key, module, train_data, val_data, preset.config, progress=progress)
        return float(hist.val_acc[-1]), hist.seconds

    return signal


def darts_problem(key: jax.Array, pool: int, preset: Preset, train_data: Arrays,
                  val_data: Arrays, num_classes: int = 10, *, score_batch: int = 32,
                  progress: bool = True) -> Problem:
    """A :class:`jhnas.hnas.Problem` over ``pool`` random DARTS genotypes (``sample(fold_in(key,
    i))``): M (``ntk_trace``) and kappa (``ntk_cond``) of each at initialisation on the first
    ``score_batch`` training images (train-mode BatchNorm, the official protocol), the signal a
    short training. ``report(i)`` gives the genotype and its M, kappa."""
    genotypes = [darts.sample(jax.random.fold_in(key, i)) for i in range(pool)]
    batch = data.Batch(train_data[0][:score_batch], train_data[1][:score_batch])
    m, k = np.full(pool, np.nan), np.full(pool, np.nan)
    for i, g in enumerate(bar(genotypes, enabled=progress, desc="scoring pool", unit="arch")):
        net = from_flax(darts.NetworkCIFAR(g, C=preset.C, layers=preset.layers,
                                           num_classes=num_classes))
        params = net.init(jax.random.fold_in(jax.random.fold_in(key, pool), i), jnp.asarray(batch.x[:1]))
        v = metrics.metrics_fn(net, ["ntk_trace", "ntk_cond"])(params, batch)
        m[i], k[i] = v["ntk_trace"], v["ntk_cond"]

    def signal(k_, index):
        module = darts.NetworkCIFAR(genotypes[int(index)], C=preset.C, layers=preset.layers,
                                    num_classes=num_classes)
        _, hist = train(k_, module, train_data, val_data, preset.config, progress=False)
        return float(hist.val_acc[-1]), hist.seconds

    def report(index):
        return {"genotype": repr(genotypes[int(index)]), "index": int(index),
                "ntk_trace": float(m[index]), "ntk_cond": float(k[index])}

    return Problem(m, k, signal, report)


# ----------------------------------------------------------------------------- theory networks

class MLP(nn.Module):
    """``jhnas theory --arch mlp``: two tanh hidden layers of ``width`` (:mod:`jhnas.nn` layers,
    NTK initialisation), then ``num_classes`` logits."""

    width: int
    num_classes: int

    @nn.compact
    def __call__(self, h):
        h = h.reshape(h.shape[0], -1)
        h = jnp.tanh(jnn.Dense(h.shape[-1], self.width)(h))
        h = jnp.tanh(jnn.Dense(self.width, self.width)(h))
        return jnn.Dense(self.width, self.num_classes)(h)


def theory_net(arch: str, num_classes: int, *, width: int = 16, cells: int = 1,
               channels: int = 4) -> Net:
    """The network of ``jhnas theory``: :class:`MLP` for ``arch="mlp"``, else the NB201 network
    of ``arch`` (``cells`` per stage, ``channels`` C, train-mode BatchNorm, one compilation)."""
    if arch == "mlp":
        return from_flax(MLP(width, num_classes))
    return nb201.make_net(arch, compile="network", C=channels, N=cells, num_classes=num_classes)
