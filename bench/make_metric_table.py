"""Builds jhnas/_data/nb201_metrics.csv.gz (``jhnas.spaces.nb201.metric_table()``) from the
scoring shards in bench/results/nb201_space/<metrics>/chunk_*.csv (bench/score_space.py).

One row per scored isomorphism class, keyed by its representative's NB201 index (the lowest index
of the class); the loader copies it to every member. Unscored classes are absent (NaN when
loaded). Every value comes from the same protocol, written into the file's header lines.
"""
import csv
import gzip
import sys
from pathlib import Path

import flax
import jax

from jhnas.spaces import nb201

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT / "bench" / "results" / "nb201_space"
OUT = ROOT / "jhnas" / "_data" / "nb201_metrics.csv.gz"
PROTOCOL = {
    "network": "NB201Net, 5 cells per stage, C=16, preset hnas (official HNAS/zero-cost network), "
               "PyTorch-default init with key fold_in(split(key(0))[1], nb201_index of the class "
               "representative), train-mode BatchNorm, float32 (synflow float64)",
    "batch": "the first 64 embedded CIFAR-10 training images (jhnas.data.default_batch(64)), "
             "true labels, CIFAR normalisation",
    "scorer": "jhnas score / bench/score_space.py with compile=blocks",
    "fisher": "with the official code's fan-in weighting (rescored 2026-11-25 in "
              "nb201_space/fisher; the unweighted values were removed from the older shards)",
    "jax": jax.__version__, "flax": flax.__version__,
}


def main() -> None:
    values: dict[int, dict[str, str]] = {}
    names: list[str] = []
    classes = nb201.class_index()
    for folder in sorted(p for p in SHARDS.iterdir() if p.is_dir() and p.name != "network_check"):
        for chunk in sorted(folder.glob("chunk_*.csv")):
            with open(chunk, newline="") as f:
                for row in csv.DictReader(f):
                    i = nb201.index_of(row["arch"])
                    assert classes[i] == i, f"{row['arch']} is not its class's representative"
                    for k, v in row.items():
                        if k not in ("arch", "seconds"):
                            values.setdefault(i, {})[k] = v
                            if k not in names:
                                names.append(k)
    n_classes = len(set(classes.tolist()))
    lines = [f"# {k}: {v}" for k, v in PROTOCOL.items()]
    for name in names:
        done = sum(name in v for v in values.values())
        lines.append(f"# coverage {name}: {done} of {n_classes} isomorphism classes")
    lines.append(",".join(["index", *names]))
    for i in sorted(values):
        lines.append(",".join([str(i), *(values[i].get(n, "") for n in names)]))
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    print(f"{OUT.name}: {len(values)} classes, metrics {names}", file=sys.stderr)


if __name__ == "__main__":
    main()
