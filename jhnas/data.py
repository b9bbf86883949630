"""CIFAR images and metric batches.

Layouts: in memory a :class:`Batch` holds ``x`` float32 NHWC ``(N, H, W, 3)``, normalised, and
``y`` int32 ``(N,)`` (Flax's convention). Batch *files* (``.npz``) hold ``x`` float32 NCHW
``[N, 3, H, W]`` and ``y`` int ``[N]`` (PyTorch's convention, so batches can be exchanged with the
official PyTorch code). :func:`to_nhwc` / :func:`to_nchw` convert between the two.

* :func:`load_cifar` reads the standard CIFAR-10/100 "python version" batches from a folder,
  complete or truncated (a cut-off pickle is parsed opcode by opcode; every complete image is kept).
* :func:`default_images` / :func:`default_batch`: 1,017 real CIFAR-10 training images shipped in
  the package (see ``jhnas/_data/PROVENANCE.md``), so everything runs without a dataset.
* :func:`save_batch` / :func:`load_batch`: validated, atomically written batch files.

The CIFAR pickles are read with an unpickler that only resolves the few globals a CIFAR batch
uses (numpy's array reconstruction), never arbitrary classes.
"""
from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import jax
import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray, numeric

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "Batch", "batch_from_cifar", "default_batch",
    "default_images", "load_batch", "load_cifar", "normalize", "save_batch", "to_nchw", "to_nhwc",
]

# The official HNAS / zero-cost-proxy code normalises CIFAR-10 *and* CIFAR-100 with these.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

DEFAULT_IMAGES = 1017  # number of embedded images
_DEFAULT_FILE = "_data/cifar10_train_1017.npz"
_IMAGE_BYTES = 3 * 32 * 32  # one CIFAR record: R, G, B planes of 32 x 32, uint8

# dataset -> (batch folder, train files, test files, label key)
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), b"labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels"),
}


class Batch(NamedTuple):
    """A batch for the metrics: ``x`` float32 (N, H, W, C) normalised, ``y`` int32 (N,)."""
    x: np.ndarray
    y: np.ndarray


_A = TypeVar("_A", np.ndarray, "jax.Array")


def to_nchw(x: _A) -> _A:
    """(N, H, W, C) -> (N, C, H, W); works on numpy and JAX arrays. ``ValueError`` for another
    rank.

    Examples:
      >>> import numpy as np
      >>> to_nchw(np.zeros((2, 32, 32, 3))).shape, to_nhwc(np.zeros((2, 3, 32, 32))).shape
      ((2, 3, 32, 32), (2, 32, 32, 3))
    """
    if x.ndim != 4:
        raise ValueError(f"expected a rank-4 NHWC array, got shape {x.shape}")
    return x.transpose(0, 3, 1, 2)


def to_nhwc(x: _A) -> _A:
    """(N, C, H, W) -> (N, H, W, C); works on numpy and JAX arrays."""
    if x.ndim != 4:
        raise ValueError(f"expected a rank-4 NCHW array, got shape {x.shape}")
    return x.transpose(0, 2, 3, 1)


def normalize(images: np.ndarray, mean: Sequence[float] = CIFAR10_MEAN,
              std: Sequence[float] = CIFAR10_STD) -> np.ndarray:
    """uint8 (..., H, W, C) images -> float32 ``(images / 255 - mean) / std`` per channel.

    Raises ``ValueError`` unless the last axis has one entry per value of ``mean`` and ``std``.

    Examples:
      >>> import numpy as np
      >>> normalize(np.full((1, 2, 2, 3), 255, np.uint8), mean=(0.5, 0.5, 0.5),
      ...           std=(0.5, 0.5, 0.5))[0, 0, 0]
      array([1., 1., 1.], dtype=float32)
    """
    images = np.asarray(images)
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if images.shape[-1:] != m.shape or m.shape != s.shape:
        raise ValueError(f"images must be channels-last with {len(m)} channels (NHWC), got "
                         f"shape {images.shape}; mean/std have {m.shape}/{s.shape} values")
    return ((images.astype(np.float32) / 255.0 - m) / s).astype(np.float32)


# ----------------------------------------------------------------------------- CIFAR pickles

@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array reconstruction (numpy 1 and 2
    module paths) and ``_codecs.encode`` (bytes in protocol-2 pickles written by Python 3)."""
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # numpy's stubs leave out this private function (numpy 1 and 2 have it)
        frombuffer = numeric._frombuffer  # pyright: ignore[reportAttributeAccessIssue]
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only :func:`_allowed_globals`; anything else is an UnpicklingError."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR "
                                         "batch") from None


def _get(d: dict, key: bytes) -> Any:
    return d[key] if key in d else d[key.decode()]


def _from_dict(path: Path, d: Any, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    expected = f"a dict with b'data' (N, {_IMAGE_BYTES}) uint8 and {label_key!r}"
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR python batch: expected {expected}, got "
                         f"{type(d).__name__}")
    try:
        data, labels = np.asarray(_get(d, b"data")), np.asarray(_get(d, label_key))
    except KeyError:
        raise ValueError(f"{path} is not a CIFAR python batch: expected {expected}, got keys "
                         f"{sorted(map(repr, d))}") from None
    if data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        raise ValueError(f"{path}: b'data' must be (N, {_IMAGE_BYTES}), got {data.shape}")
    if data.dtype != np.uint8:
        if not (np.issubdtype(data.dtype, np.integer) and data.size
                and 0 <= data.min() and data.max() <= 255):
            raise ValueError(f"{path}: b'data' must hold uint8 pixels, got {data.dtype}")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must be {len(data)} integer labels, got "
                         f"{labels.dtype} {labels.shape}")
    return data, labels.astype(np.int32)


_STRING_OPS = {"SHORT_BINSTRING", "BINSTRING", "STRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
               "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "BYTEARRAY8"}
_INT_OPS = {"BININT1", "BININT2", "BININT", "INT", "LONG1"}
_LIST_OPS = {"EMPTY_LIST", "MARK", "APPEND", "APPENDS", "BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE",
             "FRAME"}
# opcode byte of a raw byte string -> size of its little-endian length field (the pixels follow)
_RAW_STRING = {b"T"[0]: 4, b"B"[0]: 4, 0x8E: 8, 0x96: 8}  # BINSTRING BINBYTES BINBYTES8 BYTEARRAY8


def _salvage(path: Path, raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Complete images, their labels and the declared image count of a cut-off CIFAR pickle, or
    None if ``raw`` is not one.

    Walks the opcodes (``pickletools.genops``): the ints of the list after the ``label_key`` key
    are the labels; the first raw byte string after the ``b'data'`` key holds the pixels. Where
    that string is cut, its header still gives the declared size and the pixels start right after
    it. Works for the original Python 2 pickles (``BINSTRING``) and protocol >= 3 ones
    (``BINBYTES``); the labels must precede the cut (in CIFAR they do: the keys are stored in the
    order ``batch_label, labels, data, filenames``).
    """
    label_names, data_names = (label_key, label_key.decode()), (b"data", "data")
    labels: list[int] = []
    state, pixels = None, None  # pixels = (offset of the first byte, declared bytes)
    stream, end = io.BytesIO(raw), 0
    try:
        for op, arg, opt_pos in pickletools.genops(stream):
            pos = cast(int, opt_pos)  # None only for a stream without tell()
            end = stream.tell()  # where the next opcode starts
            if state == "labels":
                if op.name in _INT_OPS:
                    labels.append(int(cast(int, arg)))  # an int op's argument
                    continue
                if op.name in _LIST_OPS:
                    continue
                state = None
            elif state == "data":  # skip numpy's reconstruction opcodes up to the pixel string
                if raw[pos] in _RAW_STRING:
                    pixels, state = (pos + 1 + _RAW_STRING[raw[pos]], len(cast(bytes, arg))), None
                continue
            if op.name in _STRING_OPS:
                if arg in label_names and not labels:
                    state = "labels"
                elif arg in data_names and pixels is None:
                    state = "data"
        return None  # the pickle is complete: it failed to load for another reason
    except ValueError:  # genops reached the cut
        pass
    if state == "data" and end < len(raw) and raw[end] in _RAW_STRING:  # the cut pixel string
        size = _RAW_STRING[raw[end]]
        pixels = (end + 1 + size, int.from_bytes(raw[end + 1:end + 1 + size], "little"))
    if pixels is None or not labels:
        return None
    start, declared = pixels
    if declared % _IMAGE_BYTES or declared // _IMAGE_BYTES != len(labels):
        raise ValueError(f"{path}: truncated CIFAR batch with {len(labels)} labels but "
                         f"{declared} bytes of images declared ({_IMAGE_BYTES} per image)")
    n = min(len(raw) - start, declared) // _IMAGE_BYTES
    if n == 0:
        raise ValueError(f"{path}: truncated CIFAR batch holds no complete image")
    data = np.frombuffer(raw, np.uint8, count=n * _IMAGE_BYTES, offset=start)
    return data.reshape(n, _IMAGE_BYTES), np.asarray(labels[:n], np.int32), len(labels)


def _read_batch_file(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int32 labels of one CIFAR python batch file."""
    raw = path.read_bytes()
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure: maybe truncated, else not a CIFAR pickle
        got = _salvage(path, raw, label_key)
        if got is None:
            raise ValueError(f"{path} is not a CIFAR python batch (expected a pickled dict with "
                             f"b'data' and {label_key!r}): {type(e).__name__}: {e}") from None
        data, labels, total = got
        warnings.warn(f"{path} is truncated: read {len(data)} complete images of {total} "
                      "(the rest are cut off)", stacklevel=3)
    else:
        data, labels = _from_dict(path, d, label_key)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW records -> NHWC
    return np.ascontiguousarray(images), labels


def load_cifar(path: str | os.PathLike, dataset: str = "cifar10", split: str = "train", *,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC (N, 32, 32, 3) images and int32 (N,) labels of a CIFAR split.

    Args:
      path: the folder of the standard python batches (``cifar-10-batches-py`` with
        ``data_batch_1..5`` and ``test_batch``, or ``cifar-100-python`` with ``train`` and
        ``test``), or its parent.
      dataset: ``"cifar10"`` or ``"cifar100"`` (CIFAR-100 labels are the 100 fine labels).
      split: ``"train"`` concatenates the training files that exist, in order (CIFAR-10:
        ``data_batch_1..5``; a truncated set may hold only ``data_batch_1``, and a truncated file
        contributes only its complete images); ``"test"`` reads the test file.
      limit: keep only the first ``limit`` images (later files are not read).

    A truncated batch file (``pickle.load`` fails) is parsed opcode by opcode: its complete images
    are read with their labels and a warning says how many.
    """
    if dataset not in _LAYOUT:
        raise ValueError(f"dataset must be one of {', '.join(_LAYOUT)}, got {dataset!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    folder, train, test, label_key = _LAYOUT[dataset]
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR folder {root} does not exist")
    if (root / folder).is_dir():
        root = root / folder
    names = train if split == "train" else test
    files = [root / f for f in names if (root / f).is_file()]
    if not files:
        raise FileNotFoundError(f"{path} holds no {dataset} {split} batch: expected "
                                f"{' or '.join(names)} in it or in its {folder}/ subfolder")
    images, labels, n = [], [], 0
    for f in files:
        x, y = _read_batch_file(f, label_key)
        images.append(x)
        labels.append(y)
        n += len(x)
        if limit is not None and n >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


# ----------------------------------------------------------------------------- embedded default

_default_cache: tuple[np.ndarray, np.ndarray] | None = None


def default_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,017 embedded CIFAR-10 training images, uint8 (1017, 32, 32, 3), and int32 (1017,)
    labels.

    They are images 0..1016 of ``data_batch_1``, exact pixels, true labels
    (``jhnas/_data/PROVENANCE.md``). Returns fresh copies.
    """
    global _default_cache
    if _default_cache is None:
        with resources.files("jhnas").joinpath(_DEFAULT_FILE).open("rb") as f, np.load(f) as d:
            _default_cache = (d["images"], d["labels"].astype(np.int32))
    return _default_cache[0].copy(), _default_cache[1].copy()


def _pick(n: int, batch_size: int, key: Any) -> np.ndarray:
    """Indices of a batch: the first ``batch_size``, or a draw without replacement with ``key``."""
    if key is None:
        return np.arange(batch_size)
    return np.asarray(jax.random.choice(key, n, (batch_size,), replace=False))


def default_batch(batch_size: int = 64, *, key: Any = None) -> Batch:
    """A normalised :class:`Batch` of the embedded images: x (batch_size, 32, 32, 3) float32.

    With ``key=None`` (the documented default) the first ``batch_size`` images, deterministic;
    otherwise ``batch_size`` images drawn without replacement with the typed PRNG ``key``
    (``jax.random.key(seed)``). Raises ``ValueError`` unless ``1 <= batch_size <= 1017``.

    Examples:
      >>> batch = default_batch(64)
      >>> batch.x.shape, batch.x.dtype, batch.y.shape, batch.y.dtype
      ((64, 32, 32, 3), dtype('float32'), (64,), dtype('int32'))
    """
    images, labels = default_images()
    if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= len(images):
        raise ValueError(f"batch_size must be in 1..{len(images)} for the embedded images, got "
                         f"{batch_size!r}; use batch_from_cifar or load_batch for more")
    idx = _pick(len(images), int(batch_size), key)
    return Batch(normalize(images[idx]), labels[idx])


def batch_from_cifar(path: str | os.PathLike, dataset: str = "cifar10", batch_size: int = 64, *,
                     key: Any = None, split: str = "train") -> Batch:
    """A normalised :class:`Batch` from the CIFAR batches at ``path`` (see :func:`load_cifar`):
    the first ``batch_size`` images, or a draw without replacement with ``key``."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    images, labels = load_cifar(path, dataset, split, limit=int(batch_size) if key is None else None)
    if batch_size > len(images):
        raise ValueError(f"{path} holds {len(images)} {dataset} {split} images, fewer than "
                         f"batch_size={batch_size}")
    idx = _pick(len(images), int(batch_size), key)
    return Batch(normalize(images[idx]), labels[idx])


# ----------------------------------------------------------------------------- batch files

def _check(where: str, x: np.ndarray, y: np.ndarray) -> None:
    """Validates NCHW ``x`` and labels ``y``; raises ValueError naming ``where`` and the problem."""
    if x.ndim != 4:
        raise ValueError(f"{where}: x must be [N, 3, H, W] (rank 4, NCHW), got shape {x.shape}")
    if x.shape[1] != 3:
        raise ValueError(f"{where}: x must be [N, 3, H, W]: 3 channels expected on axis 1 "
                         f"(NCHW), got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{where}: the batch is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: x must be floating point (normalised), got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{where}: y must be [N] with N = {len(x)} (length of x), got shape "
                         f"{y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: y must hold integer labels, got {y.dtype}")
    if (y < 0).any():
        raise ValueError(f"{where}: y holds negative labels")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: x has non-finite values (NaN or inf)")


def check_labels(y: Any, num_classes: int, where: str = "labels") -> None:
    """``ValueError`` naming ``where`` unless every label is an integer in ``[0, num_classes)``:
    a label out of range would silently select nothing (a zero one-hot row).

    Examples:
      >>> check_labels([0, 2, 1], 3)
      >>> check_labels([0, 3], 3, "batch.y")
      Traceback (most recent call last):
      ...
      ValueError: batch.y: 1 label(s) outside 0..2 (e.g. 3) for a network with 3 outputs
    """
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got {y.dtype}")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(f"{where}: {bad.size} label(s) outside 0..{num_classes - 1} (e.g. "
                         f"{int(bad[0])}) for a network with {num_classes} outputs")


def save_batch(path: str | os.PathLike, batch: Batch) -> None:
    """Writes ``batch`` (x NHWC in memory) to ``path`` as .npz: ``x`` float32 [N, 3, H, W] (NCHW)
    and ``y`` int64 [N]. Validated first; written to a temporary file in the same folder and
    moved into place, so ``path`` is never left half-written."""
    path = Path(path)
    x = np.asarray(to_nchw(np.asarray(batch.x)), np.float32)
    y = np.asarray(batch.y)
    _check(f"batch for {path}", x, y)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y.astype(np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_batch(path: str | os.PathLike) -> Batch:
    """Reads a batch file (``x`` float [N, 3, H, W] normalised, ``y`` int [N]) into a
    :class:`Batch` with x float32 (N, H, W, 3) and y int32 (N,).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the problem for a
    file that is not a complete ``.npz`` (a ``.npy``, truncated, other arrays) or whose arrays
    have the wrong shapes or types, non-finite values or negative labels.

    Examples:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as folder:
      ...     save_batch(os.path.join(folder, "batch.npz"), default_batch(8))
      ...     batch = load_batch(os.path.join(folder, "batch.npz"))
      >>> batch.x.shape, bool((batch.x == default_batch(8).x).all())
      ((8, 32, 32, 3), True)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"batch file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path} is not an .npz batch file: it holds a single array (.npy)")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path} is not an .npz batch file (a zip archive made by numpy.savez or "
                         f"jhnas.data.save_batch); it starts with {magic!r}")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("x", "y") if k not in d.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)} (a batch file "
                                 f"holds x [N, 3, H, W] and y [N]; found "
                                 f"{', '.join(d.files) or 'none'})")
            x, y = d["x"], d["y"]
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is not a complete .npz batch file ({e}); write it again") from None
    _check(str(path), x, y)
    return Batch(np.ascontiguousarray(to_nhwc(x.astype(np.float32))), y.astype(np.int32))
