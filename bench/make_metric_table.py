"""Builds jhnas/_data/nb201_metrics.csv.gz (``jhnas.spaces.nb201.metric_table()``) from the
scoring shards in bench/results/nb201_space/<metrics>/chunk_*.csv (bench/score_space.py).

One row per scored isomorphism class, keyed by its representative's NB201 index (the lowest index
of the class); the loader copies it to every member. Unscored classes are absent (NaN when
loaded). Then one row per scored architecture that has dead edges and is not its class's
representative (bench/results/nb201_space/dead_edges/, ``score_space.py --set dead``): the value
of its own network, which the loader keeps apart (``MetricTable.own``). Every value comes from the
same protocol, written into the file's header lines.
"""
import gzip
import io
import sys
from pathlib import Path

import flax
import jax

from jhnas.experiments.results import read_rows, write_atomic
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
    "own values": "rows whose index is not its class's representative hold that architecture's "
                  "own network's values (architectures with dead edges, jhnas.spaces.nb201."
                  "dead_edges; same protocol, key fold_in(split(key(0))[1], its own index))",
    "jax": jax.__version__, "flax": flax.__version__,
}


def main() -> None:
    values: dict[int, dict[str, str]] = {}
    names: list[str] = []
    classes = nb201.class_index()
    folders = [(p, True) for p in SHARDS.iterdir() if p.is_dir() and p.name not in
               ("network_check", "dead_edges")]
    folders += [(p, False) for p in (SHARDS / "dead_edges").glob("*") if p.is_dir()]
    for folder, representatives in sorted(folders, key=lambda f: (not f[1], f[0])):
        for chunk in sorted(folder.glob("chunk_*.csv")):
            for row in read_rows(chunk):
                i = nb201.index_of(row["arch"])
                if representatives:
                    assert classes[i] == i, f"{row['arch']} is not its class's representative"
                else:
                    assert classes[i] != i and nb201.dead_edges(row["arch"]), row["arch"]
                for k, v in row.items():
                    if k not in ("arch", "seconds"):
                        values.setdefault(i, {})[k] = v
                        if k not in names:
                            names.append(k)
    n_classes = len(set(classes.tolist()))
    n_dead = sum(1 for i, a in enumerate(nb201.all_archs())
                 if classes[i] != i and nb201.dead_edges(a))
    lines = [f"# {k}: {v}" for k, v in PROTOCOL.items()]
    for name in names:
        done = sum(name in v for i, v in values.items() if classes[i] == i)
        own = sum(name in v for i, v in values.items() if classes[i] != i)
        lines.append(f"# coverage {name}: {done} of {n_classes} isomorphism classes, own values "
                     f"of {own} of the {n_dead} dead-edge architectures that are not their "
                     f"class's representative")
    lines.append(",".join(["index", *names]))
    for i in sorted(values):
        lines.append(",".join([str(i), *(values[i].get(n, "") for n in names)]))
    buf = io.BytesIO()  # the gzip header names the file, as GzipFile(OUT) wrote it
    with gzip.GzipFile(OUT.name, "wb", fileobj=buf, mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    write_atomic(OUT, buf.getvalue())
    print(f"{OUT.name}: {len(values)} rows (classes and own values), metrics {names}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
