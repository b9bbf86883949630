"""The ``jhnas`` command line.

  jhnas search --space nb201 --method hnas --metric ntk_trace --budget 20 --seeds 10
               --dataset cifar10 --out results.json
  jhnas search --space {nb201,darts} --signal train [--preset cpu|paper] [--data-dir DIR]
               [--pool N] --budget 5 --seeds 1 --out results.json
  jhnas score --space nb201 (--archs FILE | --sample N) [--metrics ntk_trace,ntk_cond]
              [--batch FILE.npz] [--batch-size 64] [--cells 5] [--compile blocks|network]
              [--seed S] [--compile-cache DIR|none] [--quiet] --out FILE.csv
  jhnas theory [--arch ARCH|mlp] [--seed S] [--batch FILE.npz] [--batch-size 8]

Every input is checked before any work: bad input (architecture string, path, metric name, label,
a results file made with other options) ends with a one-line error and exit code 2. Progress goes
to standard error: a bar on a terminal, a line per step when redirected.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jhnas import data, theory
from jhnas.experiments import problems, runners, score
from jhnas.experiments.results import write_atomic
from jhnas.hnas import ACQUISITIONS, NU_SCALES, Config
from jhnas.metrics import METRICS
from jhnas.spaces import nb201
from jhnas.spaces.nb201 import DATASETS, ArchError


class UsageError(Exception):
    """An error in the user's input, reported in one line."""


def _output(path: str, flag: str) -> Path:
    """The output file of ``flag``, checked before any work: its folder exists and takes a new
    file, and it is not itself a folder."""
    p = Path(path)
    for q in (p.parent, *p.parent.parents):
        if q.exists() and not q.is_dir():
            raise UsageError(f"{flag} {path}: {q} is a file, not a folder")
    if not p.parent.exists():
        raise UsageError(f"{flag} {path}: folder {p.parent} does not exist")
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder: name a file in it")
    try:  # the only reliable test (root, ACLs, read-only mounts): write a file there
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.", suffix=".check"):
            pass
        if p.exists() and not os.access(p, os.W_OK):
            raise PermissionError
    except OSError:
        raise UsageError(f"{flag} {path}: cannot write there (permission denied)") from None
    return p


def _batch(args, num_classes: int | None = 10):
    """The batch of ``--batch``/``--batch-size``, its labels checked against ``num_classes``."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.batch:
        n = len(data.default_images()[1])
        if args.batch_size > n:
            raise UsageError(f"--batch-size {args.batch_size}: the embedded set has {n} images; "
                             f"pass more with --batch FILE.npz")
        return data.default_batch(args.batch_size)
    if not Path(args.batch).is_file():
        raise UsageError(f"--batch: no such file {args.batch}")
    try:
        batch = data.load_batch(args.batch)
    except ValueError as e:
        raise UsageError(f"--batch: {e}") from None
    if len(batch.y) < args.batch_size:
        raise UsageError(f"--batch {args.batch} has {len(batch.y)} samples, fewer than "
                         f"--batch-size {args.batch_size}")
    batch = data.Batch(batch.x[: args.batch_size], batch.y[: args.batch_size])
    if num_classes is None:
        return batch
    try:
        data.check_labels(batch.y, num_classes, f"--batch {args.batch}")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return batch


def _read_archs(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--archs: no such file {path}")
    lines = [(i, line.strip()) for i, line in enumerate(p.read_text().splitlines(), 1)]
    archs = []
    for i, line in lines:
        if not line or line.startswith("#"):
            continue
        archs.append((i, line))
    if not archs:
        raise UsageError(f"--archs: {path} holds no architecture")

    for i, a in archs:
        try:
            nb201.parse(a)
        except ArchError as e:
            raise UsageError(f"--archs {path}, line {i}: {e}") from None
    return [a for _, a in archs]


def _score(args) -> None:
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise UsageError(f"--metrics: unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(METRICS)}")
    if args.archs:
        archs = _read_archs(args.archs)
    else:
        if not 1 <= args.sample <= nb201.NUM_ARCHS:
            raise UsageError(f"--sample must be in 1..{nb201.NUM_ARCHS}, got {args.sample}")
        archs = nb201.sample(score.keys(args.seed)[0], args.sample)
    batch = _batch(args)
    out = _output(args.out, "--out")
    if args.cells < 1:
        raise UsageError(f"--cells must be >= 1, got {args.cells}")
    if args.compile_cache != "none":
        try:
            score.enable_compile_cache(args.compile_cache)
        except OSError as e:
            raise UsageError(f"--compile-cache: {e}") from None
    table = score.score_archs(archs, names, batch, str(out), seed=args.seed, cells=args.cells,
                              preset=args.preset, compile=args.compile,
                              progress=not args.quiet)
    n = len(table.rows)
    print(f"{n} architecture{'s' if n != 1 else ''} in {out}", file=sys.stderr)


def _search(args) -> None:
    if args.budget < 1:
        raise UsageError(f"--budget must be >= 1, got {args.budget}")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    out = _output(args.out, "--out")
    if args.space == "darts" and args.signal != "train":
        raise UsageError("--space darts has no benchmark table: use --signal train")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir: no such folder {args.data_dir}")
    if args.signal == "table" and args.data_dir is not None:
        raise UsageError("--data-dir is for --signal train (the table needs no images)")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.trust_region and (args.space != "nb201" or args.method != "hnas"):
        raise UsageError("--trust-region is for --method hnas on --space nb201")
    config = Config(acquisition=args.acquisition, nu_scale=args.nu_scale,
                    trust_region=args.trust_region)
    if args.signal == "train" and args.dataset not in ("cifar10", "cifar100"):
        raise UsageError("--signal train trains on CIFAR-10 or CIFAR-100 (--dataset)")
    if args.space == "darts":
        if args.method not in runners.SPACE_FREE:
            raise UsageError(f"--method {args.method} is not available on --space darts")
        if args.metric != "ntk_trace":
            raise UsageError("--space darts scores its pool with ntk_trace (M) and ntk_cond")
        if args.pool < 2:
            raise UsageError(f"--pool must be >= 2, got {args.pool}")
        res = runners.run_darts(args.method, pool=args.pool, budget=args.budget, seeds=seeds,
                                config=config, preset=args.preset, data_dir=args.data_dir,
                                dataset=args.dataset, first_key=args.first_seed,
                                progress=not args.quiet)
    elif args.signal == "train":
        preset = problems.PRESETS[args.preset]
        tr, va = problems.signal_data(preset, args.data_dir, args.dataset)
        res = runners.run_nb201(args.method, args.metric, args.dataset, budget=args.budget,
                                seeds=seeds, config=config, progress=not args.quiet,
                                signal=problems.nb201_signal(
                                    preset, tr, va, 100 if args.dataset == "cifar100" else 10),
                                signal_name=runners.signal_description(args.preset, tr, va))
    else:
        res = runners.run_nb201(args.method, args.metric, args.dataset, budget=args.budget,
                                seeds=seeds, config=config, progress=not args.quiet)
    write_atomic(out, json.dumps(res, indent=1))
    m, s = res["mean"], res["std"]
    runs = f"{args.budget} evaluations, {args.seeds} seed{'s' if args.seeds != 1 else ''}"
    if args.space == "darts":
        print(f"{args.method} on DARTS ({runs}): signal {m['signal']:.2f}+-{s['signal']:.2f} "
              f"(held-out accuracy after the short training), training cost {m['cost']:.0f} s "
              f"-> {out}", file=sys.stderr)
        return
    signal = ("short-training accuracy" if args.signal == "train"
              else f"{args.dataset} 12-epoch validation accuracy")
    cost = "training seconds" if args.signal == "train" else "simulated 12-epoch training cost"
    print(f"{args.method} ({args.metric} as M, signal: {signal}; {runs}): mean 200-epoch test "
          f"accuracy of the found architectures " + ", ".join(
              f"{name} {m['test200_' + d]:.2f}+-{s['test200_' + d]:.2f}"
              for d, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"),
                              ("ImageNet16-120", "ImageNet16-120")))
          + f"; {cost} {m['cost']:.0f} s -> {out}", file=sys.stderr)


#: ``jhnas theory``'s networks, kept for the process: repeated calls reuse their compilations.
_theory_net = functools.lru_cache(maxsize=8)(problems.theory_net)


def _theory(args) -> int:
    """``jhnas theory``: checks the relations of :mod:`jhnas.theory` on one small network in
    float64 and prints lhs / rhs / slack per bound; exit code 1 if one is violated."""
    for name in ("batch_size", "image_size", "channels", "cells", "width", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if 32 % args.image_size:
        raise UsageError(f"--image-size must divide 32 (images are subsampled), got "
                         f"{args.image_size}")
    batch = _batch(args, num_classes=None)  # the theory network has max(10, labels) outputs
    step = max(batch.x.shape[1] // args.image_size, 1)
    x = np.asarray(batch.x[: args.batch_size, ::step, ::step], np.float32)
    y = np.asarray(batch.y[: args.batch_size], np.int32)
    num_classes = max(10, int(y.max()) + 1)
    if args.arch == "mlp":
        what = f"MLP {x[0].size}-{args.width}-{args.width}-{num_classes} (tanh)"
        net = _theory_net("mlp", num_classes, width=args.width)
    else:
        arch = nb201.format_arch(nb201.parse(args.arch))
        net = _theory_net(arch, num_classes, cells=args.cells, channels=args.channels)
        what = (f"NB201 {arch}, {args.cells} cell(s) per stage, C={args.channels}, "
                f"train-mode BatchNorm")
    with jax.enable_x64(True):
        init = jax.jit(net.init, compiler_options=theory.COMPILER_OPTIONS)  # eager init: slow
        params = theory.as_float64(init(jax.random.key(args.seed), x[:1]))
        b = (theory.as_float64(jnp.asarray(x)), jnp.asarray(y))
        checks = theory.check_all(net, params, b, hessian_max=args.hessian_max, steps=args.steps)
    rows = theory.table(checks, tol=args.tol)
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    print(f"{what}; {n_params} parameters; batch of {len(y)} images "
          f"{x.shape[1]}x{x.shape[2]}; seed {args.seed}; float64; tolerance {args.tol:g} relative")
    print(theory.format_table(rows))
    bad = [r for r in rows if r["status"] == "VIOLATED"]
    print(f"{len(rows) - len(bad)} of {len(rows)} rows hold or are skipped; "
          f"{len(bad)} violated", file=sys.stderr)
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jhnas", description="The jhnas command line.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score architectures with training-free metrics")
    s.add_argument("--space", choices=["nb201"], default="nb201")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--archs", help="file with one NB201 arch string per line")
    g.add_argument("--sample", type=int, help="score N architectures drawn with --seed")
    s.add_argument("--metrics", default="ntk_trace,ntk_cond",
                   help="comma-separated metric names (default: ntk_trace,ntk_cond)")
    s.add_argument("--batch", help=".npz with x float32 [N,3,H,W] (normalised) and y int [N]; "
                                   "default: the embedded CIFAR-10 images")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--cells", type=int, default=5, help="cells per stage (NB201: 5)")
    s.add_argument("--compile", choices=["blocks", "network"], default="blocks",
                   help="blocks: compile each building block once, no compilation per "
                        "architecture (default, fastest for many archs); network: one "
                        "compilation per architecture")
    s.add_argument("--preset", choices=["hnas", "nb201"], default="hnas",
                   help="cell BN/bias settings: the official HNAS code's (default) or NB201's")
    s.add_argument("--compile-cache", metavar="DIR",
                   help="keep compilations on disk for the next run (default: "
                        "$JHNAS_COMPILE_CACHE or ~/.cache/jhnas/xla; 'none': off)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="CSV; rerunning with the same file resumes")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_score)

    r = sub.add_parser("search", help="search NB201 with HNAS or a baseline (tabular signal)")
    r.add_argument("--space", choices=["nb201", "darts"], default="nb201")
    r.add_argument("--signal", choices=["table", "train"], default="table",
                   help="table: the benchmark's 12-epoch accuracy (NB201); train: a short "
                        "training of each evaluated architecture (jhnas.train)")
    r.add_argument("--preset", choices=["cpu", "paper"], default="cpu",
                   help="size of the training signal (cpu: minutes on 2 cores; paper: the "
                        "paper's 10 epochs on half of CIFAR-10, for a GPU/TPU)")
    r.add_argument("--data-dir", help="CIFAR python batches for --signal train (default: the "
                                      "1,017 embedded CIFAR-10 images)")
    r.add_argument("--pool", type=int, default=12,
                   help="--space darts: random genotypes scored with M and kappa")
    r.add_argument("--method", choices=list(runners.METHODS), default="hnas")
    r.add_argument("--metric", default="ntk_trace",
                   help="M of the objective: a column of the shipped metric table")
    r.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="whose 12-epoch validation accuracy is the signal")
    r.add_argument("--budget", type=int, default=20, help="evaluated architectures per search")
    r.add_argument("--seeds", type=int, default=10, help="independent searches")
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--acquisition", choices=ACQUISITIONS, default="ei")
    r.add_argument("--nu-scale", choices=NU_SCALES, default="linear",
                   help="sqrt(nu) = t*s (linear: the official HNAS) or s**t (log: ours, better "
                        "on NB201; see bench/results/hnas_nb201.md)")
    r.add_argument("--trust-region", action="store_true",
                   help="after the initial probes, pick argmin F among the one-edit neighbours "
                        "of the best architecture so far (ours; see bench/results/hnas_nb201.md)")
    r.add_argument("--out", required=True, help="results JSON")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_search)

    t = sub.add_parser("theory", help="check the NTK bounds of jhnas.theory on a small network")
    t.add_argument("--arch", default="|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+"
                                     "|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
                   help="an NB201 architecture string, or 'mlp'")
    t.add_argument("--seed", type=int, default=0, help="initialisation key")
    t.add_argument("--batch", help=".npz batch file (as for score); default: the embedded "
                                   "CIFAR-10 images")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--image-size", type=int, default=8,
                   help="images are subsampled to this size (a divisor of 32)")
    t.add_argument("--cells", type=int, default=1, help="NB201 cells per stage")
    t.add_argument("--channels", type=int, default=4, help="NB201 channels C")
    t.add_argument("--width", type=int, default=16, help="MLP hidden width")
    t.add_argument("--steps", type=int, default=20, help="gradient-descent steps checked")
    t.add_argument("--hessian-max", type=int, default=1500,
                   help="largest parameter count for the dense-Hessian GraSP rows")
    t.add_argument("--tol", type=float, default=1e-9, help="relative tolerance")
    t.set_defaults(func=_theory)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (UsageError, ArchError, ValueError, OSError) as e:
        print(f"jhnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jhnas: interrupted; finished rows are saved, rerun to resume", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
