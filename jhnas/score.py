"""Score many NAS-Bench-201 architectures with training-free metrics, resumably.

Keys: ``root = jax.random.key(seed)``; ``sample_key, init_key = split(root)``; architecture ``A``
is initialised with ``fold_in(init_key, nb201_index(A))``. A metric value therefore depends only
on (seed, architecture, batch), not on the order or the company of the architectures.

:func:`enable_compile_cache` keeps the compiled blocks on disk, so that only the first process on
a machine pays their compilation (about a minute for NB201 on one CPU core).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as cc
from tqdm.auto import tqdm

from jhnas.data import Batch
from jhnas.metrics import METRICS, metrics_fn
from jhnas.results import ResultsCSV
from jhnas.spaces import nb201


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Stores every XLA compilation of this process in ``path`` and reuses those found there.

    jax's persistent compilation cache, with its size and compile-time thresholds set to zero:
    the blocks of :func:`jhnas.net.from_blocks` compile in about 0.1 s each, under jax's default
    1 s threshold. ``path`` defaults to ``$JHNAS_COMPILE_CACHE`` or ``~/.cache/jhnas/xla``.
    jax keys the entries by program, jax/jaxlib version, device and XLA flags, so a stale entry
    is never used. Like any compilation cache, it is trusted: keep it private.
    """
    p = Path(path or os.environ.get("JHNAS_COMPILE_CACHE") or Path.home() / ".cache/jhnas/xla")
    p.mkdir(parents=True, exist_ok=True)
    cc.set_cache_dir(str(p))
    cc.reset_cache()  # takes effect even after this process's first compilation
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return p


def keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(sample_key, init_key)`` of a run."""
    k = jax.random.split(jax.random.key(seed))
    return k[0], k[1]


def arch_key(seed: int, arch: str) -> jax.Array:
    """The initialisation key of one architecture: ``fold_in(init_key, nb201_index(arch))``."""
    return jax.random.fold_in(keys(seed)[1], nb201.index_of(arch))


def score_arch(arch: str, names: Sequence[str], batch: Batch, *, seed: int = 0, cells: int = 5,
               channels: int = 16, num_classes: int = 10, preset: str = "hnas",
               compile: str = "blocks") -> dict[str, float]:
    """All ``names`` for one NB201 architecture, PyTorch-default init, train-mode BatchNorm.

    ``compile``: ``"blocks"`` (no compilation per architecture, see
    :func:`jhnas.spaces.nb201.make_net`) or ``"network"``.
    """
    net = nb201.make_net(arch, bn="train", compile=compile, num_classes=num_classes, C=channels,
                         N=cells, preset=preset)
    key = arch_key(seed, arch)
    params = net.init(key, np.asarray(batch.x[:1]))
    return metrics_fn(net, names)(params, batch, key)


def score_archs(archs: Iterable[str], names: Sequence[str], batch: Batch, out: str, *,
                seed: int = 0, cells: int = 5, preset: str = "hnas", progress: bool = True,
                **kw) -> ResultsCSV:
    """Scores ``archs`` into the CSV ``out`` (columns arch, *names, seconds), skipping the rows
    already there. Canonical NB201 strings are written; a bad string fails before any work."""
    archs = [nb201.format_arch(nb201.parse(a)) for a in archs]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    table = ResultsCSV(out, ["arch", *names, "seconds"])
    todo = [a for a in dict.fromkeys(archs) if a not in table]
    bar = tqdm(todo, desc="scoring", unit="arch", disable=not progress or None,
               initial=len(archs) - len(todo), total=len(dict.fromkeys(archs)))
    for arch in bar:
        t = time.perf_counter()
        values = score_arch(arch, names, batch, seed=seed, cells=cells, preset=preset, **kw)
        table.append({"arch": arch, **values, "seconds": round(time.perf_counter() - t, 3)})
        bar.set_postfix_str(f"{time.perf_counter() - t:.1f} s/arch")
    return table
