"""PyTorch reference of the official metrics on NB201, side by side with jhnas (issue 8).

  taskset -c 1 python bench/torch_reference.py             # writes results/torch_vs_jax.{md,json}
  python bench/torch_reference.py --archs 2 --network-archs 0 --float64-archs 1   # smoke run
  taskset -c 1 python bench/torch_reference.py pool        # M + kappa of 200 archs, 2 fresh runs
  taskset -c 1 python bench/torch_reference.py pool --metrics grad_norm --pool-archs 100
  taskset -c 1 python bench/torch_reference.py xla-flags   # XLA:CPU settings vs the gradient step
  python bench/torch_reference.py memory                   # only the peak-memory table
  taskset -c 1 python bench/torch_reference.py nt          # neural-tangents vs jhnas, ~10 min
  python bench/torch_reference.py report                   # rewrite the .md from the .json

The reference (the NB201 network in PyTorch and the metrics as the official HNAS / zero-cost-proxy
code computes them) is tests/torch_nb201.py.

Weights: jhnas initialises the network (``nb201.make_net``, PyTorch-default init with key
``jhnas.experiments.score.arch_key(0, arch)``) and the same values are copied into the torch module (Flax HWIO
kernels -> OIHW, Dense (in, out) -> Linear (out, in)). Images: ``jhnas.data.default_batch(64)``.

Speed protocol: one process pinned to one core (taskset), ``torch.set_num_threads(1)`` and
XLA_FLAGS ``--xla_cpu_multi_thread_eigen=false`` (and the taskset); for each
architecture each metric runs in torch and then in jhnas, so machine load affects both alike (the
load is recorded). Per-architecture seconds are amortised: total time over the architectures, jhnas
compilations included (compiled blocks: compilations happen in the first architectures only;
``compile="network"``: one compilation per architecture and metric, measured on the first
``--network-archs`` architectures). Peak memory: torch, the peak RSS of a child
process while the metric runs (VmHWM, reset after setup and a warm-up call) minus its RSS before
the metric (tracemalloc does not see torch's allocator); jhnas, XLA's
memory analysis (arguments + outputs + temporaries) of the jit-compiled network-mode function, and
the same RSS measure for the compiled-blocks path.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "torch_vs_jax"
STATIC = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


# The reference model and metrics (also loaded by tests/test_torch_parity.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from torch_nb201 import (EDGES, TORCH_FNS, TORCH_METRICS, _eig, func_gram, ntk_both, rel, torch_batch, torch_metrics, torch_net)


# ----------------------------------------------------------------------------- jhnas side

def jhnas_setup(arch, batch, *, compile="blocks", C=16, N=5, seed=0, dtype=None):
    """(net, params): the jhnas network of ``arch`` and its parameters (key arch_key(seed, arch))."""
    import jax
    import jax.numpy as jnp
    from jhnas.experiments import score
    from jhnas.spaces import nb201
    net = nb201.make_net(arch, bn="train", compile=compile, C=C, N=N)
    params = net.init(score.arch_key(seed, arch), np.asarray(batch.x[:1]))
    if dtype is not None:
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return net, params



# ----------------------------------------------------------------------------- benchmark

def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _load() -> dict:
    la = os.getloadavg()
    others = []
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                            text=True, timeout=10).stdout.splitlines()[1:6]
        others = [p.strip()[:120] for p in ps if str(os.getpid()) not in p.split()[0]]
    except Exception:  # noqa: BLE001 -- informative only
        pass
    return {"loadavg": la, "top_processes": others}


def _compile_events():
    import jax
    from jhnas._compat import BACKEND_COMPILE_EVENT
    events: list[float] = []

    def listener(event, duration, **kw):
        if event == BACKEND_COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return events


def bench_blocks(archs, batch, cells=5) -> list[dict]:
    """Per architecture and metric: torch (official style), then jhnas compiled blocks."""
    from jhnas import ntk as jntk
    from jhnas.metrics import metrics_fn
    events = _compile_events()
    xt, yt = torch_batch(batch)
    rows = []
    for i, arch in enumerate(archs):
        r = {"arch": arch, "torch_s": {}, "jax_s": {}, "torch": {}, "jax": {}}
        before = len(events)
        (net, params), r["jax_s"]["build"] = _timed(lambda: jhnas_setup(arch, batch, N=cells))
        tnet, r["torch_s"]["build"] = _timed(lambda: torch_net(arch, params, N=cells))
        for name, fn in TORCH_FNS.items():  # each metric in turn: torch, then jhnas
            r["torch"][name], r["torch_s"][name] = _timed(fn, tnet, xt, yt)
            r["jax"][name], r["jax_s"][name] = _timed(
                lambda n: metrics_fn(net, [n])(params, batch)[n], name)
        _, r["torch_s"]["ntk_both"] = _timed(ntk_both, tnet, xt, yt)
        r["torch_s"]["ntk_official"] = r["torch_s"]["ntk_trace"] + r["torch_s"]["ntk_cond"]
        _, r["jax_s"]["ntk_both"] = _timed(
            lambda: metrics_fn(net, ["ntk_trace", "ntk_cond"])(params, batch))
        _, r["jax_s"]["all"] = _timed(lambda: metrics_fn(net, list(TORCH_METRICS))(params, batch))
        r["jax_compiles"] = len(events) - before
        r["jax_compile_s"] = sum(events[before:])
        r["kappa_guarded"] = r["jax"]["ntk_cond"] >= 0.999 / jntk.cond_floor(batch.x.shape[0])
        r["rel"] = {n: rel(r["torch"][n], r["jax"][n]) for n in TORCH_METRICS}
        rows.append(r)
        print(f"{i + 1:3d} torch {sum(r['torch_s'][n] for n in TORCH_METRICS):6.1f} s  jax "
              f"{sum(r['jax_s'][n] for n in TORCH_METRICS):6.1f} s  compiles {r['jax_compiles']:3d}"
              f"  max rel {max(r['rel'].values()):.1e}", flush=True)
    return rows


def bench_network(archs, batch, cells=5) -> list[dict]:
    """jhnas ``compile="network"`` (one compilation per architecture and function) for each
    metric function, the torch.func per-sample variant and jhnas ``per_sample``; compile and run
    seconds, XLA memory analysis. Torch is timed back to back on the same architecture."""
    import jax
    import jax.numpy as jnp
    from jhnas import metrics as jm
    from jhnas import ntk as jntk
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y, jnp.int32)
    xt, yt = torch_batch(batch)
    rows = []
    for arch in archs:
        net, params = jhnas_setup(arch, batch, compile="network", N=cells)
        tnet = torch_net(arch, params, N=cells)
        r = {"arch": arch, "jax": {}, "torch_s": {}, "values": {}}
        fns = {"loss (grad_norm/snip)": jax.jit(jm._device_passes(net, frozenset({"loss"}), 2)),
               "grasp": jax.jit(jm._device_passes(net, frozenset({"grasp"}), 2)),
               "ntk (M+kappa)": jax.jit(jm._device_passes(net, frozenset({"ntk"}), 2)),
               "per_sample NTK": jntk.empirical_ntk_fn(net, implementation="per_sample")}
        for name, f in fns.items():
            t = time.perf_counter()
            c = f.lower(params, x, y).compile()
            compile_s = time.perf_counter() - t
            out, first = _timed(lambda: jax.block_until_ready(c(params, x, y)))
            _, run = _timed(lambda: jax.block_until_ready(c(params, x, y)))
            m = c.memory_analysis()
            r["jax"][name] = {"compile_s": compile_s, "run_s": run, "first_run_s": first,
                              "peak_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes
                                                + m.temp_size_in_bytes)}
            if name == "per_sample NTK":
                g = np.asarray(out, np.float64)
                r["values"]["jax_per_sample_M"] = math.sqrt(np.trace(g) / g.shape[0])
                r["values"]["jax_per_sample_kappa"] = jntk.condition_number(g)
            print(arch[:40], name, {k: round(v, 2) for k, v in r["jax"][name].items()
                                    if k != "peak_bytes"}, flush=True)
        g, r["torch_s"]["torch.func per-sample NTK"] = _timed(func_gram, tnet, xt, yt)
        lam = _eig(g)
        r["values"]["torch_func_M"] = math.sqrt(lam.sum().item() / xt.shape[0])
        r["values"]["torch_func_kappa"] = (lam[-1] / lam[0]).item()
        for name in ("grad_norm", "grasp"):
            _, r["torch_s"][name] = _timed(TORCH_FNS[name], tnet, xt, yt)
        _, r["torch_s"]["ntk_both"] = _timed(ntk_both, tnet, xt, yt)
        r["rel_per_sample"] = {"M": rel(r["values"]["torch_func_M"], r["values"]["jax_per_sample_M"]),
                               "kappa": rel(r["values"]["torch_func_kappa"],
                                            r["values"]["jax_per_sample_kappa"])}
        rows.append(r)
    return rows


def bench_nt(arch, batch, cells=1) -> dict | None:
    """The exact batched-Jacobian NTK of the true-label logit (train-mode BatchNorm couples the
    samples) on the network-mode net: neural-tangents' two Jacobian algorithms beside jhnas's
    default decomposition, each jit-compiled whole: compile and run seconds, XLA peak memory, M
    and kappa. (jhnas's ``implementation="jacobian"``, the same rows in ``lax.map`` chunks, is
    left out: more than 10 minutes per call here, convolution gradients inside XLA:CPU loops.)"""
    try:
        from jhnas import _nt_compat
        _nt_compat.load()
    except ImportError as e:
        return {"skipped": str(e)}
    import jax
    import jax.numpy as jnp
    from jhnas import ntk as jntk
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y, jnp.int32)
    net, params = jhnas_setup(arch, batch, compile="network", N=cells)
    out = {"arch": arch, "cells": cells}
    variants = {
        "jhnas decomposition (default)": dict(implementation="decomposition"),
        "neural-tangents jacobian_contraction": dict(
            implementation="jacobian", backend="neural_tangents",
            nt_implementation="jacobian_contraction"),
        "neural-tangents structured_derivatives": dict(
            implementation="jacobian", backend="neural_tangents",
            nt_implementation="structured_derivatives"),
    }
    for name, kw in variants.items():
        f = jntk.empirical_ntk_fn(net, **kw)
        t = time.perf_counter()
        c = f.lower(params, x, y).compile()
        compile_s = time.perf_counter() - t
        g, first = _timed(lambda: jax.block_until_ready(c(params, x, y)))
        _, run = _timed(lambda: jax.block_until_ready(c(params, x, y)))
        m = c.memory_analysis()
        out[name] = {"compile_s": compile_s, "run_s": run, "first_run_s": first,
                     "peak_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes
                                       + m.temp_size_in_bytes),
                     "M": jntk.trace_norm(g), "kappa": jntk.condition_number(g)}
        print(name, out[name], flush=True)
    return out


def bench_float64(archs, batch, cells=5) -> list[dict]:
    """Value agreement in float64 (torch double, jhnas with jax_enable_x64, compiled blocks)."""
    import jax
    from jhnas.metrics import metrics_fn
    rows = []
    with jax.enable_x64(True):
        import jax.numpy as jnp
        b64 = type(batch)(np.asarray(batch.x, np.float64), batch.y)
        xt, yt = torch_batch(batch, torch.float64)
        for arch in archs:
            net, params = jhnas_setup(arch, batch, dtype=jnp.float64, N=cells)
            tnet = torch_net(arch, params, dtype=torch.float64, N=cells)
            t = torch_metrics(tnet, xt, yt)
            j = metrics_fn(net, list(TORCH_METRICS))(params, b64)
            rows.append({"arch": arch, "torch": t, "jax": j,
                         "rel": {n: rel(t[n], j[n]) for n in TORCH_METRICS}})
            print("float64", arch[:40], {n: f"{v:.1e}" for n, v in rows[-1]["rel"].items()},
                  flush=True)
    return rows


# ----------------------------------------------------------------------------- memory (children)

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> None:
    """Resets the process's peak RSS (VmHWM) to its current RSS (Linux ``clear_refs`` 5), so
    that the peak read afterwards belongs to what runs next, not to the setup before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_memory(framework: str, what: str) -> dict:
    """Run in a fresh process: RSS before ``what`` and the peak RSS while it runs (the peak is
    reset after the setup and a warm-up call)."""
    from jhnas import data
    batch = data.default_batch(64)
    if framework == "torch":
        torch.set_num_threads(1)
        net, params = jhnas_setup(STATIC, batch, compile="network")
        tnet = torch_net(STATIC, params)
        xt, yt = torch_batch(batch)
        fn = {"torch.func": lambda: func_gram(tnet, xt, yt),
              "ntk_both": lambda: ntk_both(tnet, xt, yt),
              **{k: (lambda f=f: f(tnet, xt, yt)) for k, f in TORCH_FNS.items()}}[what]
    else:
        from jhnas.metrics import metrics_fn
        net, params = jhnas_setup(STATIC, batch, compile="blocks")
        names = ["ntk_trace", "ntk_cond"] if what == "ntk_both" else [what]
        fn = lambda: metrics_fn(net, names)(params, batch)  # noqa: E731
    fn()  # warm-up: compilation, allocator pools, lazy initialisation
    _reset_peak()
    before = _rss_bytes()
    fn()
    peak = _peak_bytes()
    return {"rss_before": before, "peak_rss": peak, "extra_bytes": peak - before}


def memory_table() -> dict:
    out = {}
    for framework, items in (("torch", ["grad_norm", "snip", "grasp", "ntk_both", "torch.func"]),
                             ("jax-blocks", ["grad_norm", "grasp", "ntk_both"])):
        for what in items:
            res = subprocess.run([sys.executable, __file__, "_memory", framework, what],
                                 capture_output=True, text=True, env=os.environ.copy())
            try:
                out[f"{framework}:{what}"] = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                out[f"{framework}:{what}"] = {"error": res.stderr[-500:]}
            print("memory", framework, what, out[f"{framework}:{what}"].get("extra_bytes"),
                  flush=True)
    return out


NTK_POOL = ("ntk_trace", "ntk_cond")


def pool_key(metrics) -> str:
    """Where a pool study of ``metrics`` is stored: "pool" (M + kappa) or "pool:<metrics>"."""
    return "pool" if tuple(metrics) == NTK_POOL else "pool:" + ",".join(metrics)


def pool_study(n_archs: int, cells: int = 5, metrics=NTK_POOL) -> dict:
    """:func:`child_pool` in two fresh processes sharing a new compilation cache: the first
    run compiles (and fills the cache), the second loads what the first compiled."""
    import tempfile
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for run in ("first", "second"):
            res = subprocess.run([sys.executable, __file__, "_pool", str(n_archs), str(cells),
                                  cache, ",".join(metrics)], capture_output=True, text=True,
                                 env=os.environ.copy())
            try:
                out[run] = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                out[run] = {"error": res.stderr[-800:]}
            print("pool", ",".join(metrics), run, "done", flush=True)
    return out


def child_pool(n_archs: int, cells: int = 5, cache: str | None = None,
               metrics=NTK_POOL) -> dict:
    """A pool's workload in a fresh process: ``metrics`` of ``n_archs`` architectures,
    official-style torch (for each metric the network built, the weights copied, the metric
    computed; M + kappa: the NTK once for M and again for kappa) against jhnas (``make_net`` +
    init + one ``metrics_fn(net, metrics)``), every compilation counted where it happens;
    jhnas's compilations go to (or come from) the persistent cache ``cache``
    (:func:`jhnas.experiments.score.enable_compile_cache`)."""
    from jhnas import data
    from jhnas.experiments import score
    from jhnas.metrics import metrics_fn
    from jhnas.spaces import nb201
    if cache:
        score.enable_compile_cache(cache)
    events = _compile_events()
    batch = data.default_batch(64)
    xt, yt = torch_batch(batch)
    archs = [STATIC] + nb201.sample(score.keys(0)[0], n_archs - 1)
    rows = []
    for i, arch in enumerate(archs):
        before = len(events)
        t = time.perf_counter()
        net, params = jhnas_setup(arch, batch, N=cells)
        j = metrics_fn(net, list(metrics))(params, batch)
        jax_s = time.perf_counter() - t
        compiles, compile_s = len(events) - before, sum(events[before:])
        t = time.perf_counter()
        tv = {m: TORCH_FNS[m](torch_net(arch, params, N=cells), xt, yt) for m in metrics}
        torch_s = time.perf_counter() - t
        rows.append({"arch": arch, "jax_s": jax_s, "torch_s": torch_s, "compiles": compiles,
                     "compile_s": compile_s, "rel": {m: rel(tv[m], j[m]) for m in metrics}})
        print(f"pool {i + 1:3d} torch {torch_s:5.2f} s  jax {jax_s:5.2f} s  compiles {compiles}",
              file=sys.stderr, flush=True)
    return {"versions": versions(), "cells": cells, "metrics": list(metrics), "rows": rows}


def _steady(rows: list[dict]) -> list[dict]:
    """The pool rows of architectures that compiled nothing (all rows if every one compiled)."""
    return [r for r in rows if r["compiles"] == 0] or rows


def pool_table(pool: dict) -> list[str]:
    runs = {k: v for k, v in pool.items() if isinstance(v, dict) and "rows" in v}
    if not runs:
        return ["", f"## Pool study failed ({pool})"]
    first = next(iter(runs.values()))
    metrics = tuple(first["metrics"])
    ntk = metrics == NTK_POOL
    what = "M + kappa" if ntk else " + ".join(metrics)
    n = len(first["rows"])
    ks = sorted({min(k, n) for k in (5, 15, 30, 60, 100, n)})
    torch_how = ("the NTK once for M and again for kappa" if ntk else
                 "the metric" if len(metrics) == 1 else "each metric on its own copy")
    title = f"{what} for a pool of {n} architectures" + (" (HNAS's workload)" if ntk else "")
    L = ["", f"## {title}; {first.get('cells', 5)} cells per stage", "",
         f"Per architecture, alternating in one process pinned to one core: torch official "
         f"style (build, copy the weights, {torch_how}) and jhnas (`make_net` + init + one "
         f"`metrics_fn(net, {list(metrics)})` on compiled blocks). first run: a fresh process "
         "compiles every block (and stores it in a new persistent cache, "
         "`jhnas.experiments.score.enable_compile_cache`, as `jhnas score` does); second run: another fresh "
         "process loads them from that cache. Amortised = total seconds, compilation included, "
         "over the first k architectures; ratio = torch / jhnas (above 1: jhnas faster).", "",
         "| run | " + " | ".join(f"first {k}: torch / jhnas s, ratio" for k in ks) +
         " | steady state: torch / jhnas s, ratio | jhnas compilations (s) |",
         "|---|" + "---|" * (len(ks) + 2)]
    for name, run in runs.items():
        rows = run["rows"]
        cells = []
        for k in ks:
            t = sum(r["torch_s"] for r in rows[:k]) / k
            j = sum(r["jax_s"] for r in rows[:k]) / k
            cells.append(f"{t:.2f} / {j:.2f}, {t / j:.2f}x")
        steady = _steady(rows)
        t = statistics.mean(r["torch_s"] for r in steady)
        j = statistics.mean(r["jax_s"] for r in steady)
        cells.append(f"{t:.2f} / {j:.2f}, {t / j:.2f}x")
        cells.append(f"{sum(r['compiles'] for r in rows)} ({sum(r['compile_s'] for r in rows):.0f})")
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = first["rows"]
    v = first.get("versions", {})
    if v:
        L += ["", f"{v.get('cpu')}, process pinned to cores {v.get('affinity')}, jax "
              f"{v.get('jax')}, torch {v.get('torch')}."]
    L += ["", "Steady state: the architectures that compiled nothing. Relative difference "
          "torch vs jhnas, median: " + ", ".join(
              f"{m} {statistics.median(r['rel'][m] for r in rows):.1e}" for m in metrics) + "."]
    return L


def pool_summary(res: dict) -> list[str]:
    """One row per pool study: torch / jhnas, steady state and amortised over the whole pool."""
    keys = sorted(k for k in res if k.startswith("pool") and "first" in res[k]
                  and "rows" in res[k]["first"])
    if len(keys) < 2:
        return []

    def ratio(rows):
        return sum(r["torch_s"] for r in rows) / sum(r["jax_s"] for r in rows)

    L = ["", "## Pools, summary (torch / jhnas seconds: above 1, jhnas faster)", "",
         "| metrics | archs | steady state | amortised over 15, cold | amortised over all, "
         "cold | amortised over all, cache loaded | cold: jhnas ahead from |",
         "|---|---|---|---|---|---|---|"]
    for k in keys:
        first, second = res[k]["first"]["rows"], res[k].get("second", {}).get("rows")
        ahead = break_even(first)
        L.append(f"| {' + '.join(res[k]['first']['metrics'])} | {len(first)} | "
                 f"{ratio(_steady(first)):.2f}x | {ratio(first[:15]):.2f}x | {ratio(first):.2f}x | "
                 f"{f'{ratio(second):.2f}x' if second else '–'} | "
                 f"{f'{ahead} archs' if ahead else 'not within the pool'} |")
    L += ["", "jhnas ahead from k: from the k-th architecture of the cold run on, jhnas's total "
          "seconds (compilation included) stay below torch's."]
    return L


def break_even(rows: list[dict]) -> int | None:
    """The first k from which jhnas's cumulative seconds stay at or below torch's (None if they
    end above)."""
    t = j = 0.0
    ahead = None
    for k, r in enumerate(rows, 1):
        t, j = t + r["torch_s"], j + r["jax_s"]
        ahead = (ahead or k) if j <= t else None
    return ahead


# ----------------------------------------------------------------------------- XLA:CPU settings

XLA_VARIANTS = {
    "default (one thread)": ONE_THREAD_XLA,
    "default, repeated (noise)": ONE_THREAD_XLA,
    "multi_thread_eigen on": "--xla_cpu_multi_thread_eigen=true",
    "thunk runtime off": ONE_THREAD_XLA + " --xla_cpu_use_thunk_runtime=false",
    "fast math on": ONE_THREAD_XLA + " --xla_cpu_enable_fast_math=true",
    "xnnpack on": ONE_THREAD_XLA + " --xla_cpu_use_xnnpack=true",
    "onednn on": ONE_THREAD_XLA + " --xla_cpu_use_onednn=true",
    "opt preset fast runtime": ONE_THREAD_XLA + " --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
    "prefer vector width 512": ONE_THREAD_XLA + " --xla_cpu_prefer_vector_width=512",
}
REPS = 5


def child_grad_step(variant: str) -> dict:
    """One child per XLA setting: compile + median run of jit(grad) of the loss in four
    formulations (Flax NHWC, pure-JAX NHWC, pure-JAX NCHW, and the same with
    jax_default_matmul_precision='highest'), and torch's gradient step in the same process."""
    import jax
    import jax.numpy as jnp
    from jhnas import data
    from jhnas.metrics import cross_entropy
    torch.set_num_threads(1)
    batch = data.default_batch(64)
    net, params = jhnas_setup(STATIC, batch, compile="network")
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y, jnp.int32)
    xt, yt = torch_batch(batch)
    tnet = torch_net(STATIC, params)
    out = {"variant": variant, "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def torch_step():
        tnet.zero_grad()
        F.cross_entropy(tnet(xt), yt).backward()

    forms = {"flax NHWC": (lambda p, x: net.apply(p, x), x),
             "pure NHWC": (pure_forward("NHWC"), x),
             "pure NCHW": (pure_forward("NCHW"), jnp.transpose(x, (0, 3, 1, 2)))}
    ref = None
    for form, (apply, xx) in forms.items():
        if not variant.startswith("default (one") and form != "flax NHWC":
            continue
        g = jax.jit(jax.grad(lambda p, xx: cross_entropy(apply(p, xx), y)))
        t = time.perf_counter()
        c = g.lower(params, xx).compile()
        compile_s = time.perf_counter() - t
        val = jax.block_until_ready(c(params, xx))
        torch_step()
        runs, truns = [], []
        for _ in range(REPS):  # alternate, so that load changes hit both
            runs.append(_timed(lambda: jax.block_until_ready(c(params, xx)))[1])
            truns.append(_timed(torch_step)[1])
        leaves = [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(val)]
        flat = np.concatenate(leaves)
        if ref is None:
            ref = flat
        out[form] = {"compile_s": compile_s, "run_s": statistics.median(runs),
                     "torch_s": statistics.median(truns),
                     "ratio": statistics.median(runs) / statistics.median(truns),
                     "grad_max_rel_diff_vs_first_form": float(np.abs(flat - ref).max()
                                                              / np.abs(ref).max())}
        print(variant, form, {k: round(v, 3) for k, v in out[form].items()}, flush=True)
    if variant == "default (one thread)":
        for prec in ("highest",):
            with jax.default_matmul_precision(prec):
                g = jax.jit(jax.grad(lambda p: cross_entropy(net.apply(p, x), y)))
                c = g.lower(params).compile()
                val = jax.block_until_ready(c(params))
                runs, truns = [], []
                for _ in range(REPS):
                    runs.append(_timed(lambda: jax.block_until_ready(c(params)))[1])
                    truns.append(_timed(torch_step)[1])
            flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(val)])
            out[f"flax NHWC, matmul precision {prec}"] = {
                "run_s": statistics.median(runs), "torch_s": statistics.median(truns),
                "ratio": statistics.median(runs) / statistics.median(truns),
                "grad_max_rel_diff_vs_first_form": float(np.abs(flat - ref).max() / np.abs(ref).max())}
            print(variant, prec, out[f"flax NHWC, matmul precision {prec}"], flush=True)
    return out


def pure_forward(layout: str, N: int = 5):
    """The NB201 STATIC network as plain lax calls on the jhnas parameter tree, NHWC or NCHW
    (kernels transposed to OIHW inside for NCHW): isolates Flax overhead and layout."""
    import jax.numpy as jnp
    from jax import lax
    from jhnas.spaces.nb201 import parse
    ops = parse(STATIC)
    nchw = layout == "NCHW"
    dn = ("NCHW", "OIHW", "NCHW") if nchw else ("NHWC", "HWIO", "NHWC")
    red = (0, 2, 3) if nchw else (0, 1, 2)
    cshape = (lambda c: (1, c, 1, 1)) if nchw else (lambda c: (1, 1, 1, c))
    sp = (2, 3) if nchw else (1, 2)

    def conv(p, x, stride=1):
        k = p["kernel"]
        if nchw:
            k = jnp.transpose(k, (3, 2, 0, 1))
        pad = (k.shape[-1] if nchw else k.shape[0]) // 2
        y = lax.conv_general_dilated(x, k, (stride, stride), [(pad, pad)] * 2,
                                     dimension_numbers=dn)
        if "bias" in p:
            y = y + p["bias"].reshape(cshape(y.shape[1 if nchw else -1]))
        return y

    def bn(p, x):
        mean = x.mean(red, keepdims=True)
        var = ((x - mean) ** 2).mean(red, keepdims=True)
        y = (x - mean) * lax.rsqrt(var + 1e-5)
        if p:
            c = x.shape[1 if nchw else -1]
            y = y * p["scale"].reshape(cshape(c)) + p["bias"].reshape(cshape(c))
        return y

    def rcb(p, x, stride=1):
        return bn(p.get("bn", {}), conv(p["conv"], jnp.maximum(x, 0), stride))

    def pool(x, k, s, pad):
        win = (1, 1, k, k) if nchw else (1, k, k, 1)
        st = (1, 1, s, s) if nchw else (1, s, s, 1)
        pads = [(0, 0), (0, 0), (pad, pad), (pad, pad)] if nchw else \
            [(0, 0), (pad, pad), (pad, pad), (0, 0)]
        tot = lax.reduce_window(x, 0.0, lax.add, win, st, pads)
        ones = jnp.ones((1, 1) + x.shape[2:] if nchw else (1,) + x.shape[1:3] + (1,), x.dtype)
        return tot / lax.reduce_window(ones, 0.0, lax.add, win, st, pads)  # count w/o padding

    def cell(p, x):
        nodes = [x]
        for node in (1, 2, 3):
            acc = None
            for (i, j), op in zip(EDGES, ops):
                if i != node:
                    continue
                h = nodes[j]
                if op == "none":
                    h = h * 0.0
                elif op == "avg_pool_3x3":
                    h = pool(h, 3, 1, 1)
                elif op != "skip_connect":
                    h = rcb(p[f"edge_{i}_{j}"], h)
                acc = h if acc is None else acc + h
            nodes.append(acc)
        return nodes[3]

    def apply(params, x):
        x = bn(params["stem_bn"], conv(params["stem_conv"], x))
        for stage in (1, 2, 3):
            if stage > 1:
                p = params[f"reduce{stage - 1}"]
                x = conv(p["shortcut"], pool(x, 2, 2, 0)) + rcb(p["conv_b"], rcb(p["conv_a"], x, 2))
            for k in range(N):
                x = cell(params.get(f"cell{stage}_{k}", {}), x)
        x = jnp.maximum(bn(params["head_bn"], x), 0).mean(sp)
        return x @ params["classifier"]["kernel"] + params["classifier"]["bias"]

    return apply


def xla_flags_study() -> dict:
    out = {}
    for variant, flags in XLA_VARIANTS.items():
        env = {**os.environ, "XLA_FLAGS": flags}
        res = subprocess.run([sys.executable, __file__, "_grad_step", variant], capture_output=True,
                             text=True, env=env)
        try:
            out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            out[variant] = {"variant": variant, "xla_flags": flags, "error": res.stderr[-800:]}
        print(variant, "done", "error" if "error" in out[variant] else "", flush=True)
    return out


# ----------------------------------------------------------------------------- driver

def versions() -> dict:
    import flax
    import jax
    import jaxlib
    from jhnas.experiments.results import cpu_name
    v = {"python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__,
         "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
         "machine": platform.machine(), "cpu": cpu_name(), "cores": os.cpu_count(),
         "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
    try:
        from jhnas import _nt_compat
        v["neural_tangents"] = _nt_compat.version()
    except Exception:  # noqa: BLE001
        v["neural_tangents"] = None
    return v


def _pin_threads():
    os.environ.setdefault("XLA_FLAGS", ONE_THREAD_XLA)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="bench",
                   choices=["bench", "pool", "nt", "xla-flags", "memory", "report", "_memory",
                            "_grad_step", "_pool"])
    p.add_argument("extra", nargs="*")
    p.add_argument("--archs", type=int, default=15, help="random architectures (seed-0 sample)")
    p.add_argument("--network-archs", type=int, default=2,
                   help="of which the first k also run with compile='network'")
    p.add_argument("--float64-archs", type=int, default=4)
    p.add_argument("--pool-archs", type=int, default=200,
                   help="architectures of the pool command (about 30 min for 200, M + kappa)")
    p.add_argument("--metrics", default=",".join(NTK_POOL),
                   help="comma-separated metrics of the pool command (default: M + kappa)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--cells", type=int, default=5, help="cells per stage (smoke runs: 1)")
    p.add_argument("--nt-cells", type=int, default=1,
                   help="cells per stage of the neural-tangents comparison (its compilation "
                        "takes minutes already at 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.command == "_memory":
        _pin_threads()
        print(json.dumps(child_memory(*args.extra)))
        return
    if args.command == "_pool":
        _pin_threads()
        n, cells, cache, metrics = args.extra
        print(json.dumps(child_pool(int(n), int(cells), cache, tuple(metrics.split(",")))))
        return
    if args.command == "_grad_step":
        torch.set_num_threads(1)
        print(json.dumps(child_grad_step(args.extra[0])))
        return
    from jhnas.experiments.results import write_atomic  # not at the top: torch-only children skip jax

    path = Path(args.out + ".json")
    res = json.loads(path.read_text()) if path.exists() else {}
    if args.command == "report":
        write_atomic(Path(args.out + ".md"), report(res))
        return
    _pin_threads()
    if args.command == "memory":
        res["memory"] = memory_table()
    elif args.command == "nt":
        from jhnas import data
        res["neural_tangents"] = bench_nt(STATIC, data.default_batch(args.batch), args.nt_cells)
        res.setdefault("versions", {})["neural_tangents"] = versions()["neural_tangents"]
    elif args.command == "pool":
        metrics = tuple(args.metrics.split(","))
        unknown = set(metrics) - set(TORCH_METRICS)
        if unknown:
            p.error(f"--metrics: unknown {', '.join(sorted(unknown))}; known: "
                    f"{', '.join(TORCH_METRICS)}")
        res[pool_key(metrics)] = pool_study(args.pool_archs, args.cells, metrics)
    elif args.command == "xla-flags":
        res["xla_flags"] = {"versions": versions(), "load_before": _load(),
                            "variants": xla_flags_study(), "load_after": _load()}
    else:
        from jhnas import data
        from jhnas.experiments import score
        from jhnas.spaces import nb201
        batch = data.default_batch(args.batch)
        archs = [STATIC] + nb201.sample(score.keys(0)[0], args.archs - 1)
        t0 = time.perf_counter()
        new = {"versions": versions(), "load_before": _load(), "archs": archs,
               "batch": args.batch, "cells": args.cells, "C": 16}
        new["blocks"] = bench_blocks(archs, batch, args.cells)
        new["network"] = bench_network(archs[:args.network_archs], batch, args.cells)
        new["neural_tangents"] = (bench_nt(STATIC, batch, args.nt_cells) if args.network_archs
                                  else None)
        new["float64"] = bench_float64(archs[:args.float64_archs], batch, args.cells)
        new["memory"] = None if args.no_memory or args.cells != 5 else memory_table()
        new["load_after"] = _load()
        new["wall_s"] = time.perf_counter() - t0
        res = {**new, **{k: v for k, v in res.items() if k == "xla_flags" or k.startswith("pool")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(res, indent=1, default=float))
    write_atomic(Path(args.out + ".md"), report(res))
    print(report(res))


# ----------------------------------------------------------------------------- report

def _fmt_mb(b):
    return f"{b / 2**20:.0f}" if b is not None else "–"


def report(res: dict) -> str:
    L = [f"# PyTorch reference vs jhnas on NB201 (batch {res.get('batch', 64)}, "
         f"{res.get('cells', 5)} cells per stage, C = 16)", ""]
    if "versions" in res:
        v = res["versions"]
        L += [f"torch {v['torch']}, jax/jaxlib {v['jax']}/{v['jaxlib']}, flax {v['flax']}, "
              f"neural-tangents {v.get('neural_tangents')}, Python {v['python']}; {v['cpu']} "
              f"({v['cores']} cores), process pinned to cores {v['affinity']}, torch threads "
              f"{v['torch_threads']}, XLA_FLAGS `{v['xla_flags']}`.", "",
              f"Machine load (1/5/15-min load average) before: "
              f"{', '.join(f'{x:.1f}' for x in res['load_before']['loadavg'])}; after: "
              f"{', '.join(f'{x:.1f}' for x in res['load_after']['loadavg'])}; busiest "
              f"processes at the start: {'; '.join(res['load_before']['top_processes'][:2])}. "
              "Each metric ran in torch and then in jhnas in one process, so load affects them "
              "alike.",
              f"Wall time of the run: {res['wall_s'] / 60:.1f} min.", ""]
    if res.get("blocks"):
        rows = res["blocks"]
        n = len(rows)
        L += [f"## Value agreement, float32 ({n} architectures)", "",
              "Relative difference |torch - jhnas| / max(|torch|, |jhnas|); same weights, same "
              f"{res.get('batch', 64)} images; jhnas = `metrics_fn` on compiled blocks.", "",
              "| metric | median | max | archs > 1e-4 |", "|---|---|---|---|"]
        for name in TORCH_METRICS:
            vals = [r["rel"][name] for r in rows if not (name == "ntk_cond" and r["kappa_guarded"])]
            L.append(f"| {name} | {statistics.median(vals):.1e} | {max(vals):.1e} | "
                     f"{sum(v > 1e-4 for v in vals)} / {len(vals)} |")
        guarded = sum(r["kappa_guarded"] for r in rows)
        if guarded:
            L += ["", f"{guarded} architecture(s) with a singular Gram (jhnas caps kappa at "
                  "1/floor, the official code does not) are left out of the kappa row."]
        if res.get("float64"):
            f64 = res["float64"]
            L += ["", f"## Value agreement, float64 ({len(f64)} architectures)", "",
                  "| metric | median | max |", "|---|---|---|"]
            for name in TORCH_METRICS:
                vals = [r["rel"][name] for r in f64]
                L.append(f"| {name} | {statistics.median(vals):.1e} | {max(vals):.1e} |")
        L += ["", f"## Seconds per architecture, one core ({n} architectures, amortised)", "",
              "torch: official style (each metric on its own copy of the network; the official "
              "code computes the NTK once for M and again for kappa). jhnas: compiled blocks, "
              "each metric by its own `metrics_fn` call; compilations included (they happen in "
              "the first architectures).", "",
              "| metric | torch s | jhnas s | jhnas / torch |", "|---|---|---|---|"]
        for name, label in [(m, m) for m in TORCH_METRICS] + [
                ("ntk_official", "M + kappa, official (two Grams)"),
                ("ntk_both", "M + kappa, one Gram")]:
            t = statistics.mean(r["torch_s"][name] for r in rows)
            jname = "ntk_both" if name == "ntk_official" else name
            j = statistics.mean(r["jax_s"][jname] for r in rows)
            L.append(f"| {label} | {t:.2f} | {j:.2f} | {j / t:.2f}x |")
        t_off = statistics.mean(r["torch_s"]["ntk_official"] for r in rows)
        j_both = statistics.mean(r["jax_s"]["ntk_both"] for r in rows)
        jt = statistics.mean(r["jax_s"]["all"] for r in rows)
        tt = statistics.mean(sum(r["torch_s"][m] for m in TORCH_METRICS) for r in rows)
        jb = statistics.mean(r["jax_s"]["build"] for r in rows)
        tb = statistics.mean(r["torch_s"]["build"] for r in rows)
        steady = [r for r in rows if r["jax_compiles"] == 0]
        L += [f"| all {len(TORCH_METRICS)} metrics (torch: one call each; jhnas: one `metrics_fn`, "
              "shared passes) | "
              f"{tt:.2f} | {jt:.2f} | {jt / tt:.2f}x |",
              f"| build (torch: module + weight copy; jhnas: make_net + init) | {tb:.2f} | "
              f"{jb:.2f} | {jb / tb:.2f}x |", "",
              f"HNAS needs M and kappa: official two-Gram torch {t_off:.2f} s vs jhnas one Gram "
              f"{j_both:.2f} s per architecture ({j_both / t_off:.2f}x). jhnas compiled "
              f"{sum(r['jax_compiles'] for r in rows)} functions "
              f"({sum(r['jax_compile_s'] for r in rows):.0f} s) in architectures "
              f"{[i for i, r in enumerate(rows) if r['jax_compiles']]}; "
              f"{len(steady)} architectures compiled nothing."]
        if steady:
            L += ["", f"Steady state ({len(steady)} architectures without compilation):", "",
                  "| metric | torch s | jhnas s | jhnas / torch |", "|---|---|---|---|"]
            for m in list(TORCH_METRICS) + ["ntk_both"]:
                t = statistics.mean(r["torch_s"][m] for r in steady)
                j = statistics.mean(r["jax_s"][m] for r in steady)
                L.append(f"| {m} | {t:.2f} | {j:.2f} | {j / t:.2f}x |")
    if res.get("network"):
        L += ["", "## jhnas compile=\"network\" (one compilation per architecture) and the "
              "per-sample variants", "",
              "| arch | function | compile s | run s | compile + run s | torch s | XLA peak MB |",
              "|---|---|---|---|---|---|---|"]
        tmap = {"loss (grad_norm/snip)": "grad_norm", "grasp": "grasp",
                "ntk (M+kappa)": "ntk_both", "per_sample NTK": "torch.func per-sample NTK"}
        for i, r in enumerate(res["network"]):
            for name, j in r["jax"].items():
                L.append(f"| #{i} | {name} | {j['compile_s']:.1f} | {j['run_s']:.2f} | "
                         f"{j['compile_s'] + j['run_s']:.1f} | {r['torch_s'][tmap[name]]:.2f} | "
                         f"{_fmt_mb(j['peak_bytes'])} |")
        L += ["", "torch s: the torch counterpart on the same architecture (grad_norm; grasp; "
              "M + kappa from one hook Gram; torch.func vmap(grad))."]
        L += ["", "Per-sample NTK (each sample alone through train-mode BatchNorm), torch.func "
              "vs jhnas `implementation=\"per_sample\"`, relative difference: " + "; ".join(
                  f"#{i} M {r['rel_per_sample']['M']:.1e}, kappa {r['rel_per_sample']['kappa']:.1e}"
                  for i, r in enumerate(res["network"])) + "."]
    L += pool_summary(res)
    for key in sorted(k for k in res if k.startswith("pool")):  # "pool" (M + kappa) first
        L += pool_table(res[key])
    nt = res.get("neural_tangents")
    if nt:
        L += ["", "## neural-tangents backend", ""]
        if "skipped" in nt:
            L.append(f"Not measured: {nt['skipped']}")
        else:
            L += [f"Architecture #0 with {nt.get('cells', 5)} cell(s) per stage, batch "
                  f"{res.get('batch', 64)}, `compile=\"network\"`, each function jit-compiled "
                  "whole. The Jacobian rows are the exact coupled NTK (train-mode BatchNorm "
                  "couples the samples); the decomposition is the official per-layer one, so its "
                  "M and kappa differ.", "",
                  "| implementation | compile s | run s | XLA peak MB | M | kappa |",
                  "|---|---|---|---|---|---|"]
            for impl, r in nt.items():
                if isinstance(r, dict):
                    L.append(f"| {impl} | {r['compile_s']:.1f} | {r['run_s']:.2f} | "
                             f"{_fmt_mb(r['peak_bytes'])} | {r['M']:.4g} | {r['kappa']:.4g} |")
    if res.get("memory"):
        L += ["", "## Peak memory (architecture #0)", "",
              "Extra RSS of a fresh process during the second call of the metric "
              "(peak RSS, reset after the setup and the first call, minus RSS before; allocator "
              "caches from the first call make this a lower bound of the working set).", "", "| what | extra RSS MB |", "|---|---|"]
        for k, v in res["memory"].items():
            L.append(f"| {k} | {_fmt_mb(v.get('extra_bytes'))} |")
    if res.get("xla_flags"):
        xf = res["xla_flags"]
        L += ["", "## XLA:CPU settings vs the gradient step (architecture #0, one core)", "",
              f"Load average before {', '.join(f'{x:.1f}' for x in xf['load_before']['loadavg'])}"
              f", after {', '.join(f'{x:.1f}' for x in xf['load_after']['loadavg'])}. One child "
              "process per setting; jit(grad) of the mean cross-entropy over all parameters, "
              f"median of {REPS} runs, and torch's gradient step (zero_grad, forward, backward, one "
              "thread) timed alternately in the same process.", "",
              "| setting | formulation | compile s | XLA run s | torch s | XLA / torch | max rel "
              "grad diff |", "|---|---|---|---|---|---|---|"]
        for variant, r in xf["variants"].items():
            if "error" in r:
                L.append(f"| {variant} | – | – | – | – | error: "
                         f"{r['error'].strip().splitlines()[-1][:80] if r['error'].strip() else '?'} | – |")
                continue
            for form, s in r.items():
                if not isinstance(s, dict):
                    continue
                L.append(f"| {variant} | {form} | {s.get('compile_s', float('nan')):.1f} | "
                         f"{s['run_s']:.2f} | {s['torch_s']:.2f} | {s['ratio']:.2f}x | "
                         f"{s['grad_max_rel_diff_vs_first_form']:.1e} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
