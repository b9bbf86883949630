"""CIFAR images and metric batches.

In memory a :class:`Batch` holds ``x`` float32 NHWC (N, H, W, 3), normalised, and ``y`` int32 (N,):
Flax's layout. Batch files (``.npz``) hold ``x`` float32 NCHW [N, 3, H, W] and ``y`` int [N]:
PyTorch's layout, so batches can be exchanged with the official code.

* :func:`load_cifar` reads the standard CIFAR-10/100 python batches from a folder, complete or
  truncated (a cut-off pickle is parsed opcode by opcode; every complete image is kept).
* :func:`default_images` / :func:`default_batch`: 256 real CIFAR-10 training images shipped in the
  package (``jhnas/_data/PROVENANCE.md``), so everything runs without a dataset.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_IMAGE_BYTES = 3 * 32 * 32
_LAYOUT = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                       ["test_batch"], b"labels"),
           "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels")}


class Batch(NamedTuple):
    """A batch for the metrics: ``x`` float32 (N, H, W, C) normalised, ``y`` int32 (N,)."""
    x: np.ndarray
    y: np.ndarray


def normalize(images: np.ndarray, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> np.ndarray:
    """uint8 NHWC images -> float32 (x / 255 - mean) / std, per channel."""
    x = np.asarray(images, np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


# ----------------------------------------------------------------------------- CIFAR pickles

def _read_pickle(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    try:
        d = pickle.loads(raw, encoding="bytes")
        data, labels = np.asarray(d[b"data"], np.uint8), np.asarray(d[label_key], np.int32)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        if "truncated" not in str(e) and not isinstance(e, EOFError):
            raise ValueError(f"{path} is not a CIFAR python batch: {e}") from None
        data, labels = _read_truncated(path, raw, label_key)
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not a CIFAR python batch (no {label_key!r} and b'data')"
                         ) from None
    if data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        raise ValueError(f"{path}: expected images of {_IMAGE_BYTES} bytes, got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> NHWC
    return images, labels[: len(images)]


def _read_truncated(path: Path, raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Labels and every complete image of a cut-off CIFAR pickle (labels precede the data)."""
    labels, current, key = [], None, None
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(raw)):
            if op.name in ("SHORT_BINBYTES", "BINBYTES", "SHORT_BINSTRING", "BINSTRING",
                           "SHORT_BINUNICODE", "BINUNICODE"):
                key = arg.encode() if isinstance(arg, str) else arg
            if op.name in ("BININT1", "BININT2", "BININT") and current == label_key:
                labels.append(arg)
            if op.name in ("EMPTY_LIST", "MARK") and key == label_key:
                current = label_key
            if op.name in ("SETITEM", "SETITEMS") and current == label_key and labels:
                current = None
    except ValueError:  # the cut: genops cannot read the truncated data string
        pass
    marker = raw.find(b"data")
    header = raw.find(b"T", marker)
    if marker < 0 or header < 0 or not labels:
        raise ValueError(f"{path} is not a CIFAR python batch (cannot find labels and data)")
    size = struct.unpack("<I", raw[header + 1: header + 5])[0]
    start = header + 5
    n = min(len(raw) - start, size) // _IMAGE_BYTES
    warnings.warn(f"{path} is truncated: read {n} complete images of {size // _IMAGE_BYTES}",
                  stacklevel=3)
    data = np.frombuffer(raw, np.uint8, count=n * _IMAGE_BYTES, offset=start)
    return data.reshape(n, _IMAGE_BYTES), np.asarray(labels, np.int32)


def load_cifar(path: str | os.PathLike, dataset: str = "cifar10", split: str = "train", *,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int32 labels of a CIFAR split from the standard python batches.

    ``path`` is the batch folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
    ``split="train"`` concatenates the training batch files that exist, in order (a truncated set
    may hold only ``data_batch_1``). ``limit`` keeps the first ``limit`` images.
    """
    if dataset not in _LAYOUT:
        raise ValueError(f"dataset must be one of {', '.join(_LAYOUT)}, got {dataset!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder, train, test, label_key = _LAYOUT[dataset]
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR folder {root} does not exist")
    if (root / folder).is_dir():
        root = root / folder
    files = [root / f for f in (train if split == "train" else test) if (root / f).is_file()]
    if not files:
        raise FileNotFoundError(f"{root} holds no {dataset} {split} batch "
                                f"(expected {', '.join(train if split == 'train' else test)})")
    images, labels = [], []
    for f in files:
        i, l = _read_pickle(f, label_key)
        images.append(i)
        labels.append(l)
        if limit is not None and sum(map(len, images)) >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


# ----------------------------------------------------------------------------- embedded default

def default_images() -> tuple[np.ndarray, np.ndarray]:
    """The 256 embedded CIFAR-10 training images (uint8 NHWC) and their labels."""
    with resources.files("jhnas").joinpath("_data/cifar10_train_256.npz").open("rb") as f:
        d = np.load(f)
        return d["images"], d["labels"].astype(np.int32)


def default_batch(batch_size: int = 64, *, key=None) -> Batch:
    """A normalised batch of the embedded images: the first ``batch_size`` (the default), or a
    draw without replacement with a typed PRNG ``key``."""
    images, labels = default_images()
    if not 1 <= batch_size <= len(images):
        raise ValueError(f"batch_size must be in 1..{len(images)} for the embedded images, got "
                         f"{batch_size}; use --batch or --data-dir for more")
    if key is None:
        idx = np.arange(batch_size)
    else:
        import jax

        idx = np.asarray(jax.random.choice(key, len(images), (batch_size,), replace=False))
    return Batch(normalize(images[idx]), labels[idx])


def batch_from_cifar(path, dataset: str = "cifar10", batch_size: int = 64, *, key=None,
                     split: str = "train") -> Batch:
    """A normalised batch from CIFAR batches at ``path`` (first images, or drawn with ``key``)."""
    images, labels = load_cifar(path, dataset, split)
    if batch_size > len(images):
        raise ValueError(f"{path} holds {len(images)} {split} images, fewer than {batch_size}")
    if key is None:
        idx = np.arange(batch_size)
    else:
        import jax

        idx = np.asarray(jax.random.choice(key, len(images), (batch_size,), replace=False))
    return Batch(normalize(images[idx]), labels[idx])


# ----------------------------------------------------------------------------- batch files

def save_batch(path: str | os.PathLike, batch: Batch) -> None:
    """Writes ``x`` as NCHW float32 and ``y`` as int64 to ``path`` (.npz), atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, x=np.asarray(batch.x, np.float32).transpose(0, 3, 1, 2),
                 y=np.asarray(batch.y, np.int64))
    os.replace(tmp, path)


def load_batch(path: str | os.PathLike) -> Batch:
    """Reads a batch file (``x`` float32 [N, 3, H, W] normalised, ``y`` int [N])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"batch file {path} does not exist")
    try:
        d = np.load(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not an .npz batch file: {e}") from None
    missing = [k for k in ("x", "y") if k not in d]
    if missing:
        raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (need x and y)")
    x, y = d["x"], d["y"]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{path}: x must be [N, 3, H, W], got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{path}: y must be [N] with N = {len(x)}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must hold integer labels, got {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: x has non-finite values")
    return Batch(np.ascontiguousarray(x.astype(np.float32).transpose(0, 2, 3, 1)),
                 y.astype(np.int32))
