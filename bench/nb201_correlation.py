"""Rank correlation of the training-free metrics with NAS-Bench-201 accuracy on a fixed sample.

Protocol (the official zero-cost / HNAS one): NB201 network with 5 cells per stage, C = 16, the
'hnas' preset (the official zero-cost/HNAS PyTorch network), PyTorch-default init with key
fold_in(init_key(seed), nb201_index), train-mode BatchNorm, one fixed batch of the first 64
embedded CIFAR-10 training images (true labels, CIFAR normalisation), float32 (synflow float64).
The sample: 200 architectures drawn without replacement with `jhnas score --sample 200 --seed 0`.

  python bench/nb201_correlation.py score --shard 0/2   # two processes, one per core
  python bench/nb201_correlation.py score --shard 1/2
  python bench/nb201_correlation.py report              # writes bench/results/*.md/json

Each architecture is compiled once and scored with init seeds 0 and 1 (seed-to-seed rank
agreement); scores land in bench/results/nb201_sample200_seed{S}.shard{i}of{n}.csv (resumable;
the `seconds` column of seed 0 includes the compilation, seed 1's does not).

A metric whose definition was corrected after those shards were scored is rescored into tagged
files, ``score --metrics fisher --tag fisher --compile blocks`` ->
nb201_sample200_seed{S}.fisher.shard{i}of{n}.csv; the report takes a tagged file's columns over
the untagged ones (fisher: the fan-in weighting of the official code, added 2026-11-25).
The accuracies come from ../shared/data (NATS-Bench tss 200-epoch test accuracy).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
from pathlib import Path

import numpy as np

from jhnas.experiments.results import read_rows, write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data"
N_ARCHS, SAMPLE_SEED = 200, 0
ALL = ["ntk_trace", "ntk_cond", "grad_norm", "snip", "grasp", "fisher", "synflow", "jacob_cov",
       "naswot", "zico"]
# zico costs a third compile of the loss gradient; the 200-arch run leaves it out (issue 4's
# full-space table has it)
DEFAULT = [m for m in ALL if m != "zico"]
# Abdelfattah et al. 2021, all 15,625 archs, batch 64, CIFAR-10 (their published table).
PUBLISHED = {"grad_norm": 0.59, "snip": 0.60, "grasp": 0.51, "fisher": 0.36, "synflow": 0.74,
             "jacob_cov": 0.73}
# metrics where a smaller value predicts a better architecture
SMALLER_IS_BETTER = {"ntk_cond"}


def sample_archs() -> list[str]:
    from jhnas.experiments import score
    from jhnas.spaces import nb201

    return nb201.sample(score.keys(SAMPLE_SEED)[0], N_ARCHS)


def cmd_score(args) -> None:
    """Scores this shard's archs with both seeds; the second seed reuses the compiled function."""
    import time

    from tqdm import tqdm

    from jhnas import data

    from jhnas.experiments import score
    from jhnas.metrics import metrics_fn
    from jhnas.net import from_flax
    from jhnas.experiments.results import ResultsCSV
    from jhnas.spaces import nb201

    i, n = map(int, args.shard.split("/"))
    names = args.metrics.split(",")
    batch = data.default_batch(64)
    seeds = [int(s) for s in args.seeds.split(",")]
    tag = f".{args.tag}" if args.tag else ""
    tables = {s: ResultsCSV(RESULTS / f"nb201_sample{N_ARCHS}_seed{s}{tag}.shard{i}of{n}.csv",
                            ["arch", *names, "seconds"]) for s in seeds}
    todo = [a for a in sample_archs()[i::n] if any(a not in t for t in tables.values())]
    for arch in tqdm(todo, desc=f"shard {i}/{n}", unit="arch"):
        if args.compile == "network":
            net = from_flax(nb201.NB201Net(arch, num_classes=10, C=16, N=5, preset="hnas"))
        else:
            net = nb201.make_net(arch, compile=args.compile, C=16, N=5, preset="hnas")
        fn = metrics_fn(net, names)
        for s in seeds:
            t = time.perf_counter()
            key = score.arch_key(s, arch)
            values = fn(net.init(key, batch.x[:1]), batch, key)
            tables[s].append({"arch": arch, **values, "seconds": round(time.perf_counter() - t, 3)})


def load_scores(seed: int) -> dict[str, dict[str, float]]:
    """arch -> metric -> value; tagged rescoring files override the untagged shards' columns
    (their ``seconds`` is kept as ``seconds_<tag>``)."""
    rows: dict[str, dict[str, float]] = {}
    stem = f"nb201_sample{N_ARCHS}_seed{seed}"
    untagged = sorted(glob.glob(str(RESULTS / f"{stem}.shard*.csv")))
    tagged = sorted(set(glob.glob(str(RESULTS / f"{stem}.*.shard*.csv"))) - set(untagged))
    for f in untagged + tagged:
        tag = Path(f).name.split(".")[1] if f in tagged else ""
        for r in read_rows(f):
            row = rows.setdefault(r["arch"], {})
            for k, v in r.items():
                if k != "arch":
                    row[f"seconds_{tag}" if tag and k == "seconds" else k] = float(v)
    return rows


def accuracies() -> dict[str, tuple[float, float, float]]:
    path = DATA / "nats-bench-landscape" / "nats_bench.csv"
    if not path.exists():
        raise SystemExit(f"needs the benchmark table {path}")
    with open(path) as fh:
        return {r["ArchitectureString"]: (float(r["CIFAR10TestAccuracy200Epochs"]),
                                          float(r["CIFAR100TestAccuracy200Epochs"]),
                                          float(r["ImageNetTestAccuracy200Epochs"]))
                for r in csv.DictReader(fh)}


def suite_zero() -> dict[str, dict[str, float]]:
    """NAS-Bench-Suite-Zero's values per arch string, under our metric names."""
    from nb201_space_report import SUITE_ZERO, SZ_NAMES

    if not SUITE_ZERO.exists():
        return {}
    with open(SUITE_ZERO, newline="") as fh:
        return {r["net_str"]: {ours: float(r[theirs]) for ours, theirs in SZ_NAMES.items()}
                for r in csv.DictReader(fh)}


def spearman(a, b) -> tuple[float, int]:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic), int(ok.sum())


def cmd_report(args) -> None:
    import jax

    from jhnas.experiments.results import cpu_name

    acc = accuracies()
    sz = suite_zero()
    s0, s1 = load_scores(0), load_scores(1)
    archs = sample_archs()
    missing = [a for a in archs if a not in s0]
    archs = [a for a in archs if a in s0]
    metrics = [m for m in ALL if archs and m in s0[archs[0]]]
    out = {"protocol": __doc__.split("\n\n")[1].replace("\n", " "), "n_archs": len(archs),
           "missing": len(missing), "jax": jax.__version__, "machine": cpu_name(),
           "seconds_per_arch_mean": float(np.mean([s0[a]["seconds"] for a in archs]))
           if archs else None, "metrics": {}}
    lines = ["# Training-free metrics vs NAS-Bench-201 accuracy (200 sampled architectures)", "",
             out["protocol"], "",
             f"Architectures scored: {len(archs)} of {N_ARCHS}; jax {jax.__version__}; mean "
             f"{out['seconds_per_arch_mean']:.1f} s per architecture for all metrics (incl. "
             "compilation).", "",
             "Spearman rho with the 200-epoch test accuracy (metric sign as defined; ntk_cond is "
             "expected negative). 'published' = Abdelfattah et al. 2021 over all 15,625 archs. "
             "'seed agreement' = Spearman between two initialisation seeds on the same archs. "
             "'Suite-Zero agreement' = Spearman between our value and NAS-Bench-Suite-Zero's on "
             "the sampled archs it covers (it leaves out archs disconnected by `none`).", "",
             "| metric | CIFAR-10 | CIFAR-100 | ImageNet16-120 | published C-10 | C-10 diff | "
             "seed agreement | Suite-Zero agreement | n |", "|---|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        vals = [s0[a][m] for a in archs]
        rhos = [spearman(vals, [acc[a][d] for a in archs]) for d in range(3)]
        both = [a for a in archs if a in s1 and m in s1[a]]
        agree = spearman([s0[a][m] for a in both], [s1[a][m] for a in both])[0] if len(
            both) > 10 else None
        pub = PUBLISHED.get(m)
        common = [a for a in archs if a in sz and m in sz[a]]
        sza = spearman([s0[a][m] for a in common], [sz[a][m] for a in common]) if common else None
        out["metrics"][m] = {"rho": [r for r, _ in rhos], "n": rhos[0][1], "published": pub,
                             "seed_agreement": agree, "n_seed_pairs": len(both),
                             "suite_zero_agreement": sza}
        diff = f"{rhos[0][0] - pub:+.3f}" if pub is not None else ""
        lines.append(f"| {m} | {rhos[0][0]:.3f} | {rhos[1][0]:.3f} | {rhos[2][0]:.3f} | "
                     f"{pub if pub is not None else ''} | {diff} | "
                     f"{'' if agree is None else f'{agree:.3f} ({len(both)})'} | "
                     f"{'' if sza is None else f'{sza[0]:.3f} ({sza[1]})'} | {rhos[0][1]} |")
    write_atomic(RESULTS / "nb201_correlation_200.md", "\n".join(lines) + "\n")
    write_atomic(RESULTS / "nb201_correlation_200.json", json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("--seeds", default="0,1", help="init seeds, all computed per compile")
    s.add_argument("--shard", default="0/1", help="i/n: score every n-th arch from i")
    s.add_argument("--metrics", default=",".join(DEFAULT))
    s.add_argument("--tag", default="", help="write to ..._seed{S}.<tag>.shard*.csv (rescoring)")
    s.add_argument("--compile", choices=("network", "blocks"), default="network")
    s.set_defaults(func=cmd_score)
    r = sub.add_parser("report")
    r.set_defaults(func=cmd_report)
    args = p.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
