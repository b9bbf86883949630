"""Scores one architecture per NAS-Bench-201 isomorphism class, in resumable shards.

  python bench/score_space.py --metrics ntk_trace,ntk_cond --shard 0/2   # one process per core
  python bench/score_space.py --metrics ntk_trace,ntk_cond --shard 1/2

The 6,466 classes are those of :func:`jhnas.spaces.nb201.canonical` (NATS-Bench's unique
strings); each class is represented by its lowest NB201 index. Chunk k holds representatives
k*100 .. k*100+99 and is written to ``bench/results/nb201_space/<metrics>/chunk_<k>.csv`` by the
same scorer as ``jhnas score`` (same protocol as bench/nb201_correlation.py, seed 0). Process i of
n takes chunks i, i+n, ...; ``--chunks 21,23,40`` names the chunks explicitly instead (to
rebalance the cores when one shard is ahead). Rerunning resumes. Finished chunks are committed as
they complete.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jhnas import data, score
from jhnas.spaces import nb201

CHUNK = 100
OUT = Path(__file__).resolve().parent / "results" / "nb201_space"


def representatives() -> list[str]:
    seen: dict[str, str] = {}
    for arch in nb201.all_archs():
        seen.setdefault(nb201.canonical(arch), arch)
    return list(seen.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="ntk_trace,ntk_cond")
    p.add_argument("--shard", default="0/1")
    p.add_argument("--chunks", help="comma-separated chunk indices; overrides --shard")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    i, n = map(int, args.shard.split("/"))
    names = args.metrics.split(",")
    reps = representatives()
    folder = OUT / "_".join(names)
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
