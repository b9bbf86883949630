"""Is the short-training signal real? Real CIFAR-10 images, NB201 architectures.

  taskset -c 1 python bench/train_signal.py          # writes results/train_signal.{md,json}

Data: the truncated CIFAR-10 batches of ../shared/data (1,017 complete images of data_batch_1 for
training, 1,017 of test_batch held out), CIFAR normalisation. Training: `jhnas.train.train`, SGD
with Nesterov momentum 0.9, lr 0.05 cosine to 0, weight decay 5e-4, clip 5, batch 64, random
crop + flip, train-mode BatchNorm; the benchmark's NB201 network (`preset="nb201"`) with C = 8 and
one cell per stage, key `fold_in(key(0), nb201_index)`.

1. One architecture trained for 10 epochs: loss and held-out accuracy per epoch.
2. `--archs` architectures (default 20), stratified over the benchmark's range: 400 drawn with key
   1, sorted by 200-epoch CIFAR-10 test accuracy, every 20th taken; each trained for `--epochs`
   (default 5); Spearman rho of the held-out accuracy with the benchmark's 12-epoch CIFAR-10
   validation accuracy and 200-epoch test accuracy.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from jhnas import data, train
from jhnas.spaces import nb201
from jhnas.experiments.results import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
CIFAR = (Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-truncated-batches" /
         "data")
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncated files say so
        xtr, ytr = data.load_cifar(CIFAR, "cifar10", "train")
        xte, yte = data.load_cifar(CIFAR, "cifar10", "test")
    tr, te = (data.normalize(xtr), ytr), (data.normalize(xte), yte)
    cfg = train.TrainConfig(epochs=10, batch_size=64, learning_rate=0.05)
    module = lambda a: nb201.NB201Net(a, C=8, N=1, preset="nb201")  # noqa: E731
    key = lambda a: jax.random.fold_in(jax.random.key(0), nb201.index_of(a))  # noqa: E731
    _, h = train.train(key(BEST), module(BEST), tr, te, cfg, progress=False)
    res = {"jax": jax.__version__, "train_images": len(ytr), "held_out": len(yte),
           "curve": {"arch": BEST, **h._asdict()}}
    print("curve", h, flush=True)

    bench = nb201.benchmark()
    pool = nb201.sample_indices(jax.random.key(1), 400)
    pool = pool[np.argsort(bench.test200[pool, 0])]
    picks = pool[np.linspace(0, len(pool) - 1, args.archs).round().astype(int)]
    cfg = cfg._replace(epochs=args.epochs)
    rows = []
    for i in picks:
        a = nb201.arch_at(int(i))
        t = time.perf_counter()
        _, h = train.train(key(a), module(a), tr, te, cfg, progress=False)
        rows.append({"arch": a, "held_out_acc": h.val_acc[-1], "train_loss": h.train_loss[-1],
                     "val12": float(bench.val12[i, 0]), "test200": float(bench.test200[i, 0]),
                     "seconds": time.perf_counter() - t})
        print(rows[-1], flush=True)
    acc = [r["held_out_acc"] for r in rows]
    res.update(epochs=args.epochs, archs=rows,
               rho_val12=float(stats.spearmanr(acc, [r["val12"] for r in rows])[0]),
               rho_test200=float(stats.spearmanr(acc, [r["test200"] for r in rows])[0]))
    write_atomic(RESULTS / "train_signal.json", json.dumps(res, indent=1))
    c = res["curve"]
    lines = ["# The short-training signal on real CIFAR-10 images", "",
             f"jax {res['jax']}; {len(ytr)} training images (data_batch_1), {len(yte)} held out "
             "(test_batch), NB201 network `preset=\"nb201\"`, C = 8, one cell per stage; settings "
             "in the docstring of bench/train_signal.py.", "",
             f"## Learning curve, {BEST}, 10 epochs ({c['seconds']:.0f} s, one core)", "",
             "| epoch | train loss | train acc % | held-out loss | held-out acc % |",
             "|---|---|---|---|---|"]
    lines += [f"| {e + 1} | {c['train_loss'][e]:.3f} | {c['train_acc'][e]:.1f} | "
              f"{c['val_loss'][e]:.3f} | {c['val_acc'][e]:.1f} |" for e in range(len(c['val_acc']))]
    lines += ["", f"## {len(rows)} architectures, {args.epochs} epochs each", "",
              f"Spearman rho of the held-out accuracy with the benchmark's 12-epoch CIFAR-10 "
              f"validation accuracy: **{res['rho_val12']:.3f}**; with its 200-epoch test "
              f"accuracy: **{res['rho_test200']:.3f}**. Mean {np.mean([r['seconds'] for r in rows]):.1f}"
              " s per training (compilation included).", "",
              "| arch | held-out acc % | benchmark val12 | benchmark test200 |", "|---|---|---|---|"]
    lines += [f"| `{r['arch']}` | {r['held_out_acc']:.1f} | {r['val12']:.2f} | {r['test200']:.2f} |"
              for r in rows]
    write_atomic(RESULTS / "train_signal.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
