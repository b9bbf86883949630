"""NB201 architectures with dead edges: their own M and kappa against their class's (issue 34).

  python bench/nb201_dead_edges.py              # writes results/nb201_dead_edges.{md,json}
  python bench/nb201_dead_edges.py --check 200  # also rescores 200 of them with `jhnas score`

The shipped metric table holds one value per isomorphism class: the class representative's (its
lowest NB201 index). An architecture with dead edges (:func:`jhnas.spaces.nb201.dead_edges`:
edges that are not ``none`` but cannot change the cell's output) is another network than its
representative when the representative lacks those edges, and the official per-sample NTK
decomposition with train-mode BatchNorm does not ignore them: a convolution of a zero node, with
the ``"hnas"`` preset's conv bias, feeds its BatchNorm a constant (batch variance 0), so the
per-sample output cotangents of that convolution are scaled by about 1/sqrt(eps): its bias's
per-sample gradients (which sum to zero over the batch) then dominate the Gram (the report's
last table: which layers make M on one such architecture and on its representative). The table
therefore also ships each such architecture's own M and kappa (``MetricTable.own``, scored by
``score_space.py --set dead``), which is what ``jhnas score`` gives for it.

Report: for the 5,858 dead-edge architectures that are not their class's representative, the
ratio own / class value of M and kappa, and Spearman rho of either with the benchmark's 200-epoch
CIFAR-10 test accuracy. ``--check N``: ``N`` of them drawn with seed 0 and rescored by the same
scorer as ``jhnas score`` (``jhnas.experiments.score.score_arch``: seed 0, the first 64 embedded images,
5 cells, compiled blocks), against the table's own values.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jhnas import data, ntk

from jhnas.experiments import score
from jhnas.net import vjp as net_vjp
from jhnas.experiments.results import cpu_name, write_atomic
from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"


def dead_indices() -> np.ndarray:
    classes = nb201.class_index()
    return np.array([i for i, a in enumerate(nb201.all_archs())
                     if classes[i] != i and nb201.dead_edges(a)])


def summary(table, bench, idx: np.ndarray) -> dict:
    out = {"architectures": int(idx.size)}
    acc = bench.test200[idx, 0]
    for name in ("ntk_trace", "ntk_cond"):
        own, cls = table.own[name][idx], table.values[name][idx]
        ok = np.isfinite(own) & np.isfinite(cls)
        ratio = own[ok] / cls[ok]
        logr = np.abs(np.log10(ratio))
        out[name] = {
            "own_values": int(np.isfinite(own).sum()),
            "ratio_median": float(np.median(ratio)),
            "ratio_p5_p95": [float(np.percentile(ratio, 5)), float(np.percentile(ratio, 95))],
            "share_over_2x": float(np.mean(logr > np.log10(2))),
            "share_over_10x": float(np.mean(logr > 1)),
            "rho_test200_own": float(stats.spearmanr(own[ok], acc[ok])[0]),
            "rho_test200_class": float(stats.spearmanr(cls[ok], acc[ok])[0])}
    return out


def check(table, idx: np.ndarray, n: int) -> dict:
    pick = np.sort(np.random.default_rng(0).choice(idx, size=min(n, idx.size), replace=False))
    batch = data.default_batch(64)
    worst = {"ntk_trace": 0.0, "ntk_cond": 0.0}
    missing, t = 0, time.perf_counter()
    for i in pick:
        got = score.score_arch(nb201.arch_at(int(i)), list(worst), batch)
        for name in worst:
            want = table.own[name][i]
            if not np.isfinite(want):
                missing += 1
                continue
            worst[name] = max(worst[name], abs(got[name] - want) / abs(want))
    return {"rescored": int(pick.size), "without_own_value": missing,
            "max_rel_diff": worst, "seconds": time.perf_counter() - t}


def explain(index: int) -> list[dict]:
    """M of NB201 ``index`` and of its class representative (``jhnas score``'s protocol), with
    each one's largest per-layer shares of tr(Theta) and the RMS of those layers' per-sample
    output cotangents and inputs."""
    batch = data.default_batch(64)
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
    out = []
    for i in (index, int(nb201.class_index()[index])):
        arch = nb201.arch_at(i)
        net = nb201.make_net(arch)
        params = net.init(score.arch_key(0, arch), batch.x[:1])
        specs, dy0 = net.layers(params, x)
        logits, pull, (taps, _) = net_vjp(net, params, x, dy0)
        deltas = jax.vmap(lambda c: pull(c, ("dy",))["dy"])(
            ntk.output_cotangents(logits, y, "label"))
        trace = {p: float(jnp.trace(ntk.gram_from_taps({p: s}, taps.inputs, deltas)))
                 for p, s in specs.items()}
        total = sum(trace.values())
        top = sorted(trace, key=trace.get, reverse=True)[:3]
        rms = lambda a: float(jnp.sqrt(jnp.mean(a ** 2)))  # noqa: E731
        out.append({"index": i, "arch": arch, "dead_edges": nb201.dead_edges(arch),
                    "M": float(np.sqrt(total / len(y))),
                    "layers": [{"layer": "/".join(p), "share": trace[p] / total,
                                "cotangent_rms": rms(deltas[p]),
                                "input_rms": rms(taps.inputs[p])} for p in top]})
    return out


def report(res: dict) -> str:
    s = res["summary"]
    lines = ["# Dead-edge architectures of NB201: own values against class values", "",
             f"{s['architectures']} architectures with dead edges that are not their "
             f"isomorphism class's representative; protocol of the shipped table (seed 0, first "
             f"64 embedded CIFAR-10 images, 5 cells, C = 16, preset hnas, train-mode BN); "
             f"jax {res['jax']}, {res['machine']}.", "",
             "| metric | own values | median own/class | 5-95 % own/class | > 2x off | > 10x off "
             "| rho test200, own | rho test200, class |", "|---|---|---|---|---|---|---|---|"]
    for name in ("ntk_trace", "ntk_cond"):
        r = s[name]
        lines.append(f"| {name} | {r['own_values']} | {r['ratio_median']:.3g} | "
                     f"{r['ratio_p5_p95'][0]:.3g} - {r['ratio_p5_p95'][1]:.3g} | "
                     f"{r['share_over_2x']:.1%} | {r['share_over_10x']:.1%} | "
                     f"{r['rho_test200_own']:+.3f} | {r['rho_test200_class']:+.3f} |")
    if "check" in res:
        c = res["check"]
        lines += ["", f"`jhnas score` against the table's own values: {c['rescored']} "
                  f"architectures drawn with seed 0 and rescored ({c['seconds']:.0f} s): max "
                  f"relative difference M {c['max_rel_diff']['ntk_trace']:.2g}, kappa "
                  f"{c['max_rel_diff']['ntk_cond']:.2g}; {c['without_own_value']} values "
                  f"missing from the table."]
    lines += ["", "Where M comes from (largest per-layer shares of tr Theta, with the RMS of the "
              "layer's per-sample output cotangents and of its input):", "",
              "| index | dead edges (target, source) | M | layer | share | cotangent RMS | input "
              "RMS |", "|---|---|---|---|---|---|---|"]
    for e in res["explain"]:
        for k, layer in enumerate(e["layers"]):
            head = (f"| {e['index']} | {list(e['dead_edges']) or 'none'} | {e['M']:.4g} "
                    if k == 0 else "| | | ")
            lines.append(f"{head}| {layer['layer']} | {layer['share']:.1%} | "
                         f"{layer['cotangent_rms']:.3g} | {layer['input_rms']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", type=int, default=0, help="rescore this many (0: none)")
    p.add_argument("--explain", type=int, default=13454,
                   help="the dead-edge architecture whose M is taken apart")
    args = p.parse_args()
    table, bench = nb201.metric_table(), nb201.benchmark()
    idx = dead_indices()
    res = {"jax": jax.__version__, "machine": cpu_name(), "summary": summary(table, bench, idx),
           "explain": explain(args.explain)}
    if args.check:
        res["check"] = check(table, idx, args.check)
    write_atomic(RESULTS / "nb201_dead_edges.json", json.dumps(res, indent=1) + "\n")
    write_atomic(RESULTS / "nb201_dead_edges.md", report(res))
    print(report(res))


if __name__ == "__main__":
    main()
