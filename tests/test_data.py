"""jhnas.data: CIFAR readers (complete and truncated), the embedded images, batch files."""
import hashlib
import pickle
import re
import struct
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from jhnas import data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRUNC = DATA / "cifar10-truncated-batches" / "data" / "cifar-10-batches-py"
FOOLBOX = DATA / "foolbox-samples" / "foolbox" / "data"
# sha256 of images.tobytes() + labels.astype(uint8).tobytes() of the embedded set (PROVENANCE.md)
DEFAULT_CONTENT_SHA256 = "ab1cfc5b80d3c46f0eb2e73c80eed18103143c5cba08aba10912dff5a9c6a1b7"


@pytest.fixture(scope="module")
def trunc() -> Path:
    if not TRUNC.is_dir():
        pytest.skip("../shared/data (truncated CIFAR-10 batches) is not available")
    return TRUNC


# ----------------------------------------------------------------------------- helpers

def _png(path: Path) -> np.ndarray:
    """Minimal decoder for 8-bit RGB, non-interlaced PNGs (the foolbox samples): (H, W, 3)."""
    raw, pos, idat = path.read_bytes(), 8, b""
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", raw[pos + 8:pos + 21])
            assert (depth, color, interlace) == (8, 2, 0), "only 8-bit RGB non-interlaced PNGs"
        elif kind == b"IDAT":
            idat += raw[pos + 8:pos + 8 + n]
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    out, prev = np.zeros((h, 3 * w), np.int64), np.zeros(3 * w, np.int64)
    for r in range(h):
        f, line, cur = rows[r, 0], rows[r, 1:].astype(np.int64), np.zeros(3 * w, np.int64)
        for i in range(3 * w):  # filters: 0 none, 1 sub, 2 up, 3 average, 4 Paeth
            a, b, c = (cur[i - 3] if i >= 3 else 0), prev[i], (prev[i - 3] if i >= 3 else 0)
            if f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                pred = (0, a, b, (a + b) // 2)[f]
            cur[i] = (line[i] + pred) % 256
        out[r] = prev = cur
    return out.reshape(h, w, 3).astype(np.uint8)


def _pickle_batch(folder: Path, name: str, images: np.ndarray, labels, key=b"labels",
                  protocol: int = 2, filenames: bool = False) -> Path:
    """A complete CIFAR python batch: dict with b'data' uint8 (n, 3072) CHW rows and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    d = {b"batch_label": b"synthetic", key: [int(v) for v in labels],
         b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1)}
    if filenames:
        d[b"filenames"] = [b"img_%05d.png" % i for i in range(len(images))]
    (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    return folder / name


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- embedded default

def test_embedded_default_content():
    images, labels = data.default_images()
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1017,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9 and len(np.unique(labels)) == 10
    sha = hashlib.sha256(images.tobytes() + labels.astype(np.uint8).tobytes()).hexdigest()
    assert sha == DEFAULT_CONTENT_SHA256
    images[:] = 0  # a copy: the cache is not touched
    assert data.default_images()[0].any()


def test_embedded_default_is_the_first_training_images(trunc):
    images, labels = data.default_images()
    with pytest.warns(UserWarning, match="truncated"):
        ref, ref_labels = data.load_cifar(trunc, "cifar10", "train", limit=1017)
    np.testing.assert_array_equal(images, ref)
    np.testing.assert_array_equal(labels, ref_labels)


# ----------------------------------------------------------------------------- truncated files

@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_reader_reads_every_complete_image(trunc, split):
    with pytest.warns(UserWarning, match="truncated: read 1017 complete images of 10000"):
        images, labels = data.load_cifar(trunc.parent, "cifar10", split)  # the parent folder
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1017,) and labels.dtype == np.int32
    if split == "test":  # PROVENANCE.md: first labels and class counts of the 1,017 test images
        assert labels[:20].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
        assert np.bincount(labels).tolist() == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]


def test_truncated_test_images_match_foolbox_pngs(trunc):
    pngs = sorted(FOOLBOX.glob("cifar10_*.png"))
    if len(pngs) != 20:
        pytest.skip("foolbox CIFAR-10 samples are not available")
    with pytest.warns(UserWarning, match="truncated"):
        images, labels = data.load_cifar(trunc, "cifar10", "test", limit=20)
    seen = set()
    for p in pngs:
        _, index, label = p.stem.split("_")
        np.testing.assert_array_equal(_png(p), images[int(index)], err_msg=p.name)
        assert labels[int(index)] == int(label), p.name
        seen.add(int(index))
    assert seen == set(range(20))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("cut", [3 * 3072 + 100, 1, 3072])  # bytes removed from the data end
def test_synthetic_truncated_file(tmp_path, protocol, cut):
    """A complete file cut inside the pixel string: the complete images and their labels."""
    images, labels = _images(5), [3, 1, 4, 1, 5]
    if protocol == 2:  # a Python 2 style pickle: raw str (BINSTRING) pixels, as in real CIFAR
        raw = _py2_pickle(images, labels)
    else:
        raw = _pickle_batch(tmp_path / "full", "test_batch", images, labels,
                            protocol=protocol).read_bytes()
    end = raw.index(images.transpose(0, 3, 1, 2).tobytes()) + 5 * 3072
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(raw[:end - cut])
    n = (5 * 3072 - cut) // 3072
    with pytest.warns(UserWarning, match=f"truncated: read {n} complete images of 5"):
        got, got_labels = data.load_cifar(tmp_path, split="test")
    np.testing.assert_array_equal(got, images[:n])
    assert got_labels.tolist() == labels[:n]


def _py2_pickle(images: np.ndarray, labels) -> bytes:
    """Protocol-2 bytes laid out like the original CIFAR pickles (keys as str, BINSTRING data)."""
    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b
    rows = images.transpose(0, 3, 1, 2).tobytes()
    out = b"\x80\x02}q\x01(" + s(b"batch_label") + s(b"synthetic") + s(b"labels") + b"](" \
        + b"".join(b"K" + bytes([v]) for v in labels) + b"e" + s(b"data") \
        + b"cnumpy.core.multiarray\n_reconstruct\nq\x06cnumpy\nndarray\nq\x07K\x00\x85" + s(b"b") \
        + b"\x87Rq\x08(K\x01M" + struct.pack("<H", len(labels)) + b"M\x00\x0c\x86cnumpy\ndtype\n" \
        + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" \
        + b"K\x00tb\x89" + s(rows) + b"tbu."
    return out


def test_py2_style_pickle_loads_completely(tmp_path):
    """The hand-written Python 2 layout above is a valid CIFAR batch (restricted unpickler)."""
    images = _images(5)
    (tmp_path / "test_batch").write_bytes(_py2_pickle(images, [3, 1, 4, 1, 5]))
    got, labels = data.load_cifar(tmp_path, split="test")
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [3, 1, 4, 1, 5]


def test_file_cut_after_the_pixels_keeps_all_images(tmp_path):
    images = _images(4)
    raw = _pickle_batch(tmp_path / "full", "data_batch_1", images, [0, 1, 2, 3], protocol=4,
                        filenames=True).read_bytes()
    (tmp_path / "data_batch_1").write_bytes(raw[:-30])  # cut inside b'filenames'
    with pytest.warns(UserWarning, match="read 4 complete images of 4"):
        got, labels = data.load_cifar(tmp_path)
    np.testing.assert_array_equal(got, images)


# ----------------------------------------------------------------------------- complete files

@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_complete_cifar10_folder(tmp_path, protocol):
    a, b = _images(3, 0), _images(2, 1)
    a[1, 5, 7] = (10, 20, 30)  # image 1, row 5, column 7: R, G, B
    folder = tmp_path / "cifar-10-batches-py"
    _pickle_batch(folder, "data_batch_1", a, [1, 2, 3], protocol=protocol)
    _pickle_batch(folder, "data_batch_2", b, [4, 5], protocol=protocol)
    _pickle_batch(folder, "test_batch", b, [9, 8], protocol=protocol)
    images, labels = data.load_cifar(tmp_path, "cifar10", "train")  # parent folder
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, np.concatenate([a, b]))
    assert labels.tolist() == [1, 2, 3, 4, 5]
    # NHWC: in the file, R of pixel (5, 7) is byte 5 * 32 + 7 of the record, G 1024 later, B 2048
    record = np.concatenate([a, b]).transpose(0, 3, 1, 2).reshape(5, -1)[1]
    assert [record[c * 1024 + 5 * 32 + 7] for c in range(3)] == [10, 20, 30]
    assert images[1, 5, 7].tolist() == [10, 20, 30]
    images, labels = data.load_cifar(folder, limit=4)  # the folder itself; limit spans files
    assert len(images) == 4 and labels.tolist() == [1, 2, 3, 4]
    assert data.load_cifar(folder, split="test")[1].tolist() == [9, 8]


def test_complete_cifar100_folder(tmp_path):
    a = _images(3)
    folder = tmp_path / "cifar-100-python"
    _pickle_batch(folder, "train", a, [7, 80, 99], key=b"fine_labels")
    _pickle_batch(folder, "test", a[:2], [0, 42], key=b"fine_labels")
    images, labels = data.load_cifar(tmp_path, "cifar100")
    np.testing.assert_array_equal(images, a)
    assert labels.tolist() == [7, 80, 99]
    assert data.load_cifar(folder, "cifar100", "test")[1].tolist() == [0, 42]


def test_batch_from_cifar(tmp_path):
    a = _images(6)
    _pickle_batch(tmp_path, "data_batch_1", a, [0, 1, 2, 3, 4, 5])
    batch = data.batch_from_cifar(tmp_path, "cifar10", 4)
    assert batch.x.shape == (4, 32, 32, 3) and batch.x.dtype == np.float32
    np.testing.assert_allclose(batch.x, data.normalize(a[:4]))
    assert batch.y.tolist() == [0, 1, 2, 3]
    drawn = data.batch_from_cifar(tmp_path, batch_size=6, key=jax.random.key(1))
    assert sorted(drawn.y.tolist()) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(drawn.x, data.normalize(a[drawn.y]))
    with pytest.raises(ValueError, match="fewer than batch_size=7"):
        data.batch_from_cifar(tmp_path, batch_size=7, key=jax.random.key(1))


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR folder .*nope does not exist"):
        data.load_cifar(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="holds no cifar10 train batch: expected data_batch_1"):
        data.load_cifar(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no cifar100 test batch: expected test"):
        data.load_cifar(tmp_path, "cifar100", "test")
    with pytest.raises(ValueError, match="dataset must be one of cifar10, cifar100"):
        data.load_cifar(tmp_path, "svhn")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_cifar(tmp_path, split="valid")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        data.load_cifar(tmp_path, limit=0)
    bad = tmp_path / "data_batch_1"
    cases = {
        b"not a pickle at all": "not a CIFAR python batch",
        pickle.dumps([1, 2, 3]): "expected a dict with b'data'",
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}): r"got keys \[\"b'data'\"\]",
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}): r"\(N, 3072\)",
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}): "2 integer labels",
        pickle.dumps({b"data": np.zeros((1, 3072)), b"labels": [0]}): "uint8 pixels",
        pickle.dumps({b"data": Path("x"), b"labels": [0]}): "is not allowed in a CIFAR batch",
    }
    for raw, msg in cases.items():
        bad.write_bytes(raw)
        with pytest.raises(ValueError, match=msg):
            data.load_cifar(tmp_path)
    for raw in (pickle.dumps({b"labels": [0, 1]})[:-3], b"\x80\x02}q\x01(U\x06labels](K\x00"):
        bad.write_bytes(raw)  # cut before any pixel: not readable, named as truncated
        with pytest.raises(ValueError, match=re.escape(f"{bad} is not a CIFAR python batch")):
            data.load_cifar(tmp_path)


# ----------------------------------------------------------------------------- normalisation

def test_normalize_values():
    assert data.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert data.CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    px = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    want = (np.array([0, 128, 255]) / 255 - np.array(data.CIFAR10_MEAN)) / data.CIFAR10_STD
    got = data.normalize(px)
    assert got.dtype == np.float32 and got.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.normalize(px, mean=(0, 0, 0), std=(1, 1, 1))[0, 0, 0],
                               [0, 128 / 255, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="channels-last with 3 channels"):
        data.normalize(np.zeros((1, 3, 32, 32), np.uint8))  # NCHW by mistake


def test_layout_helpers():
    x = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    assert data.to_nchw(x).shape == (2, 3, 4, 5) and data.to_nchw(x)[1, 2, 3, 4] == x[1, 3, 4, 2]
    np.testing.assert_array_equal(data.to_nhwc(data.to_nchw(x)), x)
    with pytest.raises(ValueError, match="rank-4"):
        data.to_nhwc(x[0])


# ----------------------------------------------------------------------------- default batch

def test_default_batch_deterministic():
    b = data.default_batch()
    assert b.x.shape == (64, 32, 32, 3) and b.x.dtype == np.float32 and b.y.dtype == np.int32
    images, labels = data.default_images()
    np.testing.assert_array_equal(b.x, data.normalize(images[:64]))
    np.testing.assert_array_equal(b.y, labels[:64])
    np.testing.assert_array_equal(data.default_batch(64).x, b.x)


def test_default_batch_with_key():
    k1 = data.default_batch(32, key=jax.random.key(0))
    k2 = data.default_batch(32, key=jax.random.key(0))
    np.testing.assert_array_equal(k1.x, k2.x)
    np.testing.assert_array_equal(k1.y, k2.y)
    other = data.default_batch(32, key=jax.random.key(1))
    assert not np.array_equal(other.x, k1.x)
    full = data.default_batch(1017, key=jax.random.key(0))  # without replacement: a permutation
    images, labels = data.default_images()
    where = {im.tobytes(): i for i, im in enumerate(data.normalize(images))}
    idx = [where[im.tobytes()] for im in full.x]
    assert sorted(idx) == list(range(1017)) and idx != list(range(1017))
    np.testing.assert_array_equal(full.y, labels[idx])
    for bad in (0, 1018):
        with pytest.raises(ValueError, match="batch_size must be in 1..1017"):
            data.default_batch(bad)


# ----------------------------------------------------------------------------- batch files

def test_batch_file_round_trip(tmp_path):
    b = data.default_batch(8)
    path = tmp_path / "b.npz"
    data.save_batch(path, b)
    with np.load(path) as on_disk:
        assert on_disk["x"].shape == (8, 3, 32, 32) and on_disk["x"].dtype == np.float32  # NCHW
        np.testing.assert_array_equal(on_disk["x"], b.x.transpose(0, 3, 1, 2))
        assert np.issubdtype(on_disk["y"].dtype, np.integer)
    back = data.load_batch(path)
    assert back.x.shape == (8, 32, 32, 3) and back.x.dtype == np.float32  # NHWC
    assert back.y.dtype == np.int32
    np.testing.assert_array_equal(back.x, b.x)
    np.testing.assert_array_equal(back.y, b.y)
    data.save_batch(path, data.default_batch(4))  # overwrites atomically, no temp files left
    assert len(data.load_batch(path).y) == 4 and [p.name for p in tmp_path.iterdir()] == ["b.npz"]


def test_batch_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"batch file .*none\.npz does not exist"):
        data.load_batch(tmp_path / "none.npz")
    x, y = data.to_nchw(data.default_batch(4).x), np.arange(4)
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    cases = {
        "missing": (dict(x=x), r"missing array\(s\) y"),
        "rank": (dict(x=x[0], y=y), r"x must be \[N, 3, H, W\] \(rank 4"),
        "channels": (dict(x=x[:, :2], y=y), "3 channels expected"),
        "nhwc": (dict(x=x.transpose(0, 2, 3, 1), y=y), "3 channels expected"),
        "length": (dict(x=x, y=y[:3]), r"y must be \[N\] with N = 4"),
        "labels": (dict(x=x, y=y.astype(float)), "integer labels"),
        "pixels": (dict(x=(x * 0).astype(np.uint8), y=y), "floating point"),
        "finite": (dict(x=nan, y=y), "non-finite"),
    }
    for name, (arrays, msg) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=msg):
            data.load_batch(path)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not an .npz batch file"):
        data.load_batch(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", x)
    with pytest.raises(ValueError, match="single array"):
        data.load_batch(tmp_path / "single.npy")
    with pytest.raises(ValueError, match="non-finite"):  # save_batch validates too, writes nothing
        data.save_batch(tmp_path / "out.npz", data.Batch(data.to_nhwc(nan), y))
    assert not (tmp_path / "out.npz").exists()
