"""Several `jhnas score` processes on one results file (issue 32): wall time and exactly-once.

  python bench/shared_results.py        # writes results/shared_results.{md,json}

30 NB201 architectures (drawn with seed 7), M and kappa, the official protocol (5 cells, batch 64
of the embedded images, compiled blocks). A first process fills a private compile cache with
other architectures, so that every timed process loads its blocks instead of compiling them.
Then, alternately, one process scores the 30 into a fresh file, and three processes started
together score them into one shared fresh file; each configuration twice. Reported: wall time
from the first start to the last exit, that every architecture is in each file exactly once,
and that the shared files' values equal the single process's bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from jhnas.experiments.results import cpu_name, read_rows, write_atomic
from jhnas.spaces import nb201

RESULTS = Path(__file__).resolve().parent / "results"
N_ARCHS, PROCESSES, REPEATS = 30, 3, 2


def run(archs_file: Path, out: Path, cache: Path, processes: int) -> float:
    cmd = [sys.executable, "-m", "jhnas.cli", "score", "--archs", str(archs_file), "--out",
           str(out), "--compile-cache", str(cache), "--quiet"]
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(processes)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a scorer failed: exit codes {codes}")
    return time.perf_counter() - t


def main() -> None:
    archs = nb201.sample(jax.random.key(7), N_ARCHS)
    warm = [a for a in nb201.sample(jax.random.key(8), 12) if a not in archs]
    res = {"jax": jax.__version__, "machine": cpu_name(), "cores": os.cpu_count(),
           "archs": N_ARCHS, "processes": PROCESSES, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_atomic(tmp / "warm.txt", "\n".join(warm) + "\n")
        write_atomic(tmp / "archs.txt", "\n".join(archs) + "\n")
        cache = tmp / "xla"
        res["warm_s"] = run(tmp / "warm.txt", tmp / "warm.csv", cache, 1)
        reference = None
        for r in range(REPEATS):
            for processes in (1, PROCESSES):
                out = tmp / f"run{r}_{processes}.csv"
                wall = run(tmp / "archs.txt", out, cache, processes)
                rows = read_rows(out)
                keys = [row["arch"] for row in rows]
                values = {row["arch"]: (row["ntk_trace"], row["ntk_cond"]) for row in rows}
                reference = reference or values
                res["runs"].append({"processes": processes, "wall_s": wall,
                                    "exactly_once": sorted(keys) == sorted(archs),
                                    "values_equal_single": values == reference})
                print(res["runs"][-1], flush=True)
    write_atomic(RESULTS / "shared_results.json", json.dumps(res, indent=1) + "\n")
    write_atomic(RESULTS / "shared_results.md", report(res))
    print(report(res))


def report(res: dict) -> str:
    lines = ["# Several scorers on one results file", "",
             f"{res['archs']} NB201 architectures, M + kappa, 5 cells, batch 64, compiled blocks "
             f"loaded from a warm compile cache; jax {res['jax']}, {res['machine']}, "
             f"{res['cores']} cores. Runs alternate; wall time from the first start to the last "
             f"exit (process start-up and cache loading included).", "",
             "| processes | wall s | every architecture once | values = one process |",
             "|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['processes']} | {r['wall_s']:.1f} | {r['exactly_once']} | "
                     f"{r['values_equal_single']} |")
    one = [r["wall_s"] for r in res["runs"] if r["processes"] == 1]
    many = [r["wall_s"] for r in res["runs"] if r["processes"] > 1]
    lines += ["", f"Mean wall time: 1 process {sum(one) / len(one):.1f} s, "
              f"{res['processes']} processes {sum(many) / len(many):.1f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
