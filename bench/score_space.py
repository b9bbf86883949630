"""Scores one architecture per NAS-Bench-201 isomorphism class, in resumable shards.

  python bench/score_space.py --metrics ntk_trace,ntk_cond --shard 0/2   # one process per core
  python bench/score_space.py --metrics ntk_trace,ntk_cond --shard 1/2
  python bench/score_space.py --set dead --metrics ntk_trace,ntk_cond --shard 0/2

The 6,466 classes are those of :func:`jhnas.spaces.nb201.canonical` (NATS-Bench's unique
strings); each class is represented by its lowest NB201 index. Chunk k holds representatives
k*100 .. k*100+99 and is written to ``bench/results/nb201_space/<metrics>/chunk_<k>.csv`` by the
same scorer as ``jhnas score`` (same protocol as bench/nb201_correlation.py, seed 0). Process i of
n takes chunks i, i+n, ...; ``--chunks 21,23,40`` names the chunks explicitly instead (to
rebalance the cores when one shard is ahead). Rerunning resumes. Finished chunks are committed as
they complete.

``--set dead`` scores instead the 5,858 architectures that have dead edges
(:func:`jhnas.spaces.nb201.dead_edges`) and are not their class's representative, in NB201 index
order, into ``bench/results/nb201_space/dead_edges/<metrics>/``: their own networks differ from
the representative's (the dead edges' parameters), and ``make_metric_table.py`` ships their own
values beside the class values.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jhnas import data

from jhnas.experiments import score
from jhnas.spaces import nb201

CHUNK = 100
OUT = Path(__file__).resolve().parent / "results" / "nb201_space"


def representatives() -> list[str]:
    seen: dict[str, str] = {}
    for arch in nb201.all_archs():
        seen.setdefault(nb201.canonical(arch), arch)
    return list(seen.values())


def dead_edge_archs() -> list[str]:
    """Architectures with dead edges that are not their isomorphism class's representative."""
    classes = nb201.class_index()
    return [a for i, a in enumerate(nb201.all_archs())
            if classes[i] != i and nb201.dead_edges(a)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="ntk_trace,ntk_cond")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--chunks", help="comma-separated chunk indices; overrides --shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", choices=["classes", "dead"], default="classes",
                   help="one architecture per class (default), or the dead-edge architectures "
                        "that are not their class's representative")
    args = p.parse_args()
    i, n = map(int, args.shard.split("/"))
    names = args.metrics.split(",")
    reps = representatives() if args.set == "classes" else dead_edge_archs()
    folder = (OUT if args.set == "classes" else OUT / "dead_edges") / "_".join(names)
    folder.mkdir(parents=True, exist_ok=True)
    batch = data.default_batch(64)
    n_chunks = -(-len(reps) // CHUNK)
    chunks = ([int(c) for c in args.chunks.split(",")] if args.chunks
              else range(i, n_chunks, n))
    bad = [k for k in chunks if not 0 <= k < n_chunks]
    if bad:
        p.error(f"chunk(s) {bad} out of range 0..{n_chunks - 1}")
    for k in chunks:
        score.score_archs(reps[k * CHUNK:(k + 1) * CHUNK], names, batch,
                          str(folder / f"chunk_{k:03d}.csv"), seed=args.seed, cells=5,
                          preset="hnas")


if __name__ == "__main__":
    main()
