"""CIFAR readers (complete and truncated), the embedded images, batch files."""
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from jhnas import data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRUNC = DATA / "cifar10-truncated-batches" / "data" / "cifar-10-batches-py"


def _png(path: Path) -> np.ndarray:
    """Minimal decoder for 8-bit RGB PNGs (the foolbox samples)."""
    raw, pos, chunks = path.read_bytes(), 8, b""
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", raw[pos + 8:pos + 18])
            assert depth == 8 and color == 2
        if kind == b"IDAT":
            chunks += raw[pos + 8:pos + 8 + n]
        pos += 12 + n
    rows, stride = zlib.decompress(chunks), 3 * w
    out, prev = np.zeros((h, stride), np.int64), np.zeros(stride, np.int64)
    for r in range(h):
        f, line = rows[r * (stride + 1)], np.frombuffer(rows[r * (stride + 1) + 1:(r + 1) * (stride + 1)], np.uint8).astype(np.int64)
        cur = np.zeros(stride, np.int64)
        for i in range(stride):
            a = cur[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            p = a + b - c
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2,
                    4: a if abs(p - a) <= min(abs(p - b), abs(p - c)) else (b if abs(p - b) <= abs(p - c) else c)}[f]
            cur[i] = (line[i] + pred) % 256
        out[r], prev = cur, cur
    return out.reshape(h, w, 3).astype(np.uint8)


@pytest.fixture
def trunc():
    if not TRUNC.exists():
        pytest.skip("../shared/data is not available")
    return TRUNC


def test_truncated_reader(trunc):
    with pytest.warns(UserWarning, match="truncated: read 1017 complete images of 10000"):
        images, labels = data.load_cifar(trunc, "cifar10", "test")
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8
    assert labels[:20].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    pngs = sorted((DATA / "foolbox-samples" / "foolbox" / "data").glob("cifar10_*.png"))
    assert len(pngs) == 20
    for p in pngs[:5]:
        _, index, label = p.stem.split("_")
        np.testing.assert_array_equal(_png(p), images[int(index)])
        assert labels[int(index)] == int(label)


def test_embedded_default_is_the_first_training_images(trunc):
    images, labels = data.default_images()
    assert images.shape == (256, 32, 32, 3) and images.dtype == np.uint8
    with pytest.warns(UserWarning):
        ref, ref_labels = data.load_cifar(trunc.parent, "cifar10", "train", limit=256)
    np.testing.assert_array_equal(images, ref)
    np.testing.assert_array_equal(labels, ref_labels)


def _write(folder: Path, name: str, images: np.ndarray, labels, key=b"labels"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(folder / name, "wb") as f:
        pickle.dump({b"batch_label": b"x", key: list(labels), b"data": rows}, f)


def test_complete_files_cifar10_and_cifar100(tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (3, 2))
    a[1, 5, 7] = (10, 20, 30)  # pixel (row 5, col 7) of image 1
    _write(tmp_path / "cifar-10-batches-py", "data_batch_1", a, [1, 2, 3])
    _write(tmp_path / "cifar-10-batches-py", "data_batch_2", b, [4, 5])
    images, labels = data.load_cifar(tmp_path, "cifar10", "train")
    np.testing.assert_array_equal(images, np.concatenate([a, b]))
    assert images[1, 5, 7].tolist() == [10, 20, 30] and labels.tolist() == [1, 2, 3, 4, 5]
    assert len(data.load_cifar(tmp_path / "cifar-10-batches-py", limit=4)[0]) == 4
    _write(tmp_path / "cifar-100-python", "test", a, [7, 80, 99], key=b"fine_labels")
    assert data.load_cifar(tmp_path, "cifar100", "test")[1].tolist() == [7, 80, 99]
    batch = data.batch_from_cifar(tmp_path, "cifar10", 4)
    assert batch.x.shape == (4, 32, 32, 3) and batch.y.tolist() == [1, 2, 3, 4]


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_cifar(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no cifar10 train batch"):
        data.load_cifar(tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load_cifar(tmp_path, "svhn")
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a CIFAR python batch"):
        data.load_cifar(tmp_path)


def test_normalize_and_default_batch():
    x = data.normalize(np.full((1, 1, 1, 3), 255, np.uint8))
    np.testing.assert_allclose(x[0, 0, 0], (1 - np.array(data.CIFAR10_MEAN)) / data.CIFAR10_STD,
                               rtol=1e-6)
    b = data.default_batch(64)
    assert b.x.shape == (64, 32, 32, 3) and b.x.dtype == np.float32 and b.y.dtype == np.int32
    np.testing.assert_array_equal(b.x, data.default_batch(64).x)
    import jax

    k = data.default_batch(32, key=jax.random.key(0))
    np.testing.assert_array_equal(k.y, data.default_batch(32, key=jax.random.key(0)).y)
    with pytest.raises(ValueError, match="batch_size must be in 1..256"):
        data.default_batch(257)


def test_batch_files(tmp_path):
    b = data.default_batch(8)
    data.save_batch(tmp_path / "b.npz", b)
    on_disk = np.load(tmp_path / "b.npz")
    assert on_disk["x"].shape == (8, 3, 32, 32)  # NCHW on disk
    back = data.load_batch(tmp_path / "b.npz")
    np.testing.assert_array_equal(back.x, b.x)
    np.testing.assert_array_equal(back.y, b.y)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_batch(tmp_path / "none.npz")
    bad = {"missing": dict(x=on_disk["x"]), "rank": dict(x=on_disk["x"][0], y=b.y),
           "channels": dict(x=on_disk["x"][:, :2], y=b.y), "length": dict(x=on_disk["x"], y=b.y[:3]),
           "labels": dict(x=on_disk["x"], y=b.y.astype(float)),
           "finite": dict(x=np.full_like(on_disk["x"], np.nan), y=b.y)}
    msgs = {"missing": "missing array", "rank": "must be [N, 3, H, W]", "channels": "must be [N, 3",
            "length": "y must be [N]", "labels": "integer labels", "finite": "non-finite"}
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=msgs[name].replace("[", r"\[")):
            data.load_batch(tmp_path / f"{name}.npz")
