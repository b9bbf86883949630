"""Score many NAS-Bench-201 architectures with training-free metrics, resumably.

Keys: ``root = jax.random.key(seed)``; ``sample_key, init_key = split(root)``; architecture ``A``
is initialised with ``fold_in(init_key, nb201_index(A))``. A metric value therefore depends only
on (seed, architecture, batch), not on the order or the company of the architectures.

Results go to a :class:`jhnas.experiments.results.ResultsCSV` that records the protocol (:func:`protocol`):
a rerun resumes, a rerun with other options is refused, and several processes may score into one
file (each architecture is scored once). :func:`enable_compile_cache` keeps the compiled blocks
on disk, so that only the first process on a machine pays their compilation (about a minute for
NB201 on one CPU core).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache as cc

from jhnas.data import Batch, check_labels
from jhnas.metrics import METRICS, metrics_fn
from jhnas.parallel import Device, map_devices
from jhnas.progress import bar
from jhnas.experiments.results import ResultsCSV, versions
from jhnas.spaces import nb201


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Stores every XLA compilation of this process in ``path`` and reuses those found there.

    jax's persistent compilation cache, with its size and compile-time thresholds set to zero:
    the blocks of :func:`jhnas.net.from_blocks` compile in about 0.1 s each, under jax's default
    1 s threshold. ``path`` defaults to ``$JHNAS_COMPILE_CACHE`` or ``~/.cache/jhnas/xla``.
    jax keys the entries by program, jax/jaxlib version, device and XLA flags, so a stale entry
    is never used. Like any compilation cache, it is trusted: keep it private. Raises
    ``NotADirectoryError`` if ``path`` (or a folder above it) is a file.
    """
    p = Path(path or os.environ.get("JHNAS_COMPILE_CACHE") or Path.home() / ".cache/jhnas/xla")
    if any(q.exists() and not q.is_dir() for q in (p, *p.parents)):
        raise NotADirectoryError(f"compile cache {p}: {p} or a folder above it is a file")
    p.mkdir(parents=True, exist_ok=True)
    if not os.access(p, os.W_OK):
        raise PermissionError(f"compile cache {p} is not writable")
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


def batch_hash(batch: Batch) -> str:
    """SHA-256 of a batch's images (float32 NHWC) and labels (int32): names it in a protocol."""
    h = hashlib.sha256()
    for a, dtype in ((batch.x, np.float32), (batch.y, np.int32)):
        a = np.ascontiguousarray(np.asarray(a, dtype))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def protocol(batch: Batch, *, seed: int = 0, cells: int = 5, channels: int = 16,
             num_classes: int = 10, preset: str = "hnas") -> dict:
    """What the values of :func:`score_arch` depend on, recorded in every results file."""
    return {"space": "nb201", "preset": preset, "cells": cells, "channels": channels,
            "num_classes": num_classes, "bn": "train", "seed": seed,
            "init": "PyTorch default, key fold_in(split(key(seed))[1], NB201 index)",
            "batch": {"size": int(len(batch.y)), "sha256": batch_hash(batch)},
            "versions": versions()}


def _arch_problem(arch: str) -> str | None:
    try:
        if nb201.format_arch(nb201.parse(arch)) != arch:
            return f"{arch!r} is not in canonical form"
    except nb201.ArchError as e:
        return str(e)
    return None


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
    params = net.init(key, jnp.asarray(batch.x[:1]))
    return metrics_fn(net, names)(params, batch, key)


def score_archs(archs: Iterable[str], names: Sequence[str], batch: Batch, out: str, *,
                seed: int = 0, cells: int = 5, preset: str = "hnas", progress: bool = True,
                **kw) -> ResultsCSV:
    """Scores ``archs`` into the CSV ``out`` (columns arch, *names, seconds), skipping the rows
    already there and those another process is scoring into the same file. Canonical NB201
    strings are written; a bad string, unknown metric, label out of range, or a file made with
    another protocol fails before any work (:class:`jhnas.experiments.results.ProtocolError`)."""
    archs = list(dict.fromkeys(nb201.format_arch(nb201.parse(a)) for a in archs))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    check_labels(batch.y, kw.get("num_classes", 10))
    table = ResultsCSV(out, ["arch", *names, "seconds"], check_key=_arch_problem,
                       protocol=protocol(batch, seed=seed, cells=cells, preset=preset,
                                         channels=kw.get("channels", 16),
                                         num_classes=kw.get("num_classes", 10)))
    done = lambda: sum(a in table for a in archs)  # noqa: E731
    progress_bar = bar(enabled=progress, desc="scoring", unit="arch", total=len(archs),
                       initial=done())
    for arch in table.claimed(archs):
        t = time.perf_counter()
        values = score_arch(arch, names, batch, seed=seed, cells=cells, preset=preset, **kw)
        table.append({"arch": arch, **values, "seconds": round(time.perf_counter() - t, 3)})
        progress_bar.set_postfix_str(f"{time.perf_counter() - t:.1f} s/arch", refresh=False)
        progress_bar.update(done() - progress_bar.n)
    progress_bar.close()
    return table


def score_pool(archs: Sequence[str], names: Sequence[str], batch: Batch, *,
               devices: Sequence[Device] | None = None, **score_kw) -> list[dict[str, float]]:
    """``names`` for every NB201 architecture of ``archs``, spread over ``devices``
    (:func:`jhnas.parallel.map_devices` of :func:`score_arch`; ``score_kw``: seed, cells, channels,
    preset, compile, ...). Each device compiles its own programs (once per block configuration
    with ``compile="blocks"``)."""
    return map_devices(lambda a: score_arch(a, names, batch, **score_kw), archs,
                       devices=devices)
