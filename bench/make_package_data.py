"""Regenerates the data shipped in jhnas/_data from ../shared/data (see its PROVENANCE.md)."""
import csv
import gzip
import hashlib
from pathlib import Path

import numpy as np

from jhnas import data
from jhnas.spaces import nb201

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "jhnas" / "_data"


def main() -> None:
    with open(SHARED / "nats-bench-landscape" / "nats_bench.csv") as f:
        archs = [r["ArchitectureString"] for r in csv.DictReader(f)]
    lines = ["".join(str(nb201.OPS.index(op)) for op in nb201.parse(a)) for a in archs]
    with gzip.GzipFile(OUT / "nb201_archs.txt.gz", "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    images, labels = data.load_cifar(SHARED / "cifar10-truncated-batches" / "data", "cifar10",
                                     "train", limit=256)
    np.savez_compressed(OUT / "cifar10_train_256.npz", images=images,
                        labels=labels.astype(np.uint8))
    for name in ("nb201_archs.txt.gz", "cifar10_train_256.npz"):
        print(name, hashlib.sha256((OUT / name).read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
