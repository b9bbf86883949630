"""Regenerates the embedded default images, ``jhnas/_data/cifar10_train_1017.npz``.

    python bench/make_default_data.py [CIFAR_PATH] [--out FILE] [-n 1017]

CIFAR_PATH is a CIFAR-10 python-batches folder or its parent (default: the truncated copy in
``../shared/data/cifar10-truncated-batches/data``, whose first 1,017 images of ``data_batch_1``
are complete and exact). The file holds the first ``n`` images of the training split
(``data_batch_1``) as ``images`` uint8 [n, 32, 32, 3] (NHWC) and ``labels`` uint8 [n], written
with ``np.savez_compressed``. Prints the sha256 of the file and of its content
(``images.tobytes() + labels.tobytes()``), as recorded in ``jhnas/_data/PROVENANCE.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np

from jhnas import data
from jhnas.experiments.results import write_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "cifar10-truncated-batches" / "data"
DEFAULT_OUT = ROOT / "jhnas" / "_data" / "cifar10_train_1017.npz"


def make_default_data(src: str | Path = DEFAULT_SRC, out: str | Path = DEFAULT_OUT,
                      n: int = data.DEFAULT_IMAGES) -> dict[str, str]:
    """Writes the first ``n`` CIFAR-10 training images at ``src`` to ``out``; returns sha256s."""
    with warnings.catch_warnings(record=True) as caught:  # a truncated source is expected
        warnings.simplefilter("always")
        images, labels = data.load_cifar(src, "cifar10", "train", limit=n)
    for w in caught:
        print("note:", w.message)
    if len(images) < n:
        raise ValueError(f"{src} holds only {len(images)} complete training images, need {n}")
    labels = labels.astype(np.uint8)
    out = Path(out)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    write_atomic(out, buf.getvalue())
    return {"file": hashlib.sha256(out.read_bytes()).hexdigest(),
            "content": hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default=DEFAULT_SRC, type=Path)
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path)
    parser.add_argument("-n", type=int, default=data.DEFAULT_IMAGES)
    args = parser.parse_args()
    sha = make_default_data(args.src, args.out, args.n)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")
    print(f"sha256 file    {sha['file']}\nsha256 content {sha['content']}")


if __name__ == "__main__":
    main()
