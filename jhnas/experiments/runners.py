"""Search runs over seeds: HNAS and its baselines on a problem, summarised with their protocol.

:data:`METHODS` names every method; :func:`run_nb201` runs one on the tabular NB201 problem (or
with a training signal), :func:`run_darts` on a pool of DARTS genotypes with a training signal.
Seed ``s`` searches with ``jax.random.key(s)``; the result is :func:`summarize`'s dictionary plus
``"protocol"`` (everything needed to rerun it) and each run's history.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import numpy as np

from jhnas import baselines
from jhnas.hnas import Config, Problem, State, check_config, search
from jhnas.progress import bar, counted
from jhnas.spaces import nb201
from jhnas.experiments.problems import (PRESETS, Signal, darts_problem, default_scale,
                                        nb201_problem, signal_data)

Method = Callable[[jax.Array, Problem, Config], State]

#: Every search method, ``name -> method(key, problem, config) -> State``.
METHODS: dict[str, Method] = {
    "hnas": search,
    "random": baselines.random_search,
    "rea": lambda k, problem, config: baselines.regularized_evolution(
        k, problem, config, mutate=nb201.mutate),
    "argmax_metric": baselines.argmax_metric,
    "argmin_kappa": baselines.argmin_kappa,
    "metric_order": baselines.metric_order,
}

#: The methods that need no edit distance (REA mutates NB201 edges), for other spaces.
SPACE_FREE = ("hnas", "random", "argmax_metric", "argmin_kappa", "metric_order")


def summarize(states: Sequence[State], problem: Problem) -> dict:
    """Per seed: the final architecture's report, its signal and the search cost; plus the mean
    and standard deviation over seeds of every numeric field."""
    runs = [{**problem.report(s.best().index), "signal": s.best().signal, "cost": s.cost,
             "evaluations": len(s.history)} for s in states]
    keys = [k for k, v in runs[0].items() if isinstance(v, float | int) and k != "index"]
    return {"runs": runs,
            "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
            "std": {k: float(np.std([r[k] for r in runs])) for k in keys}}


def _method(name: str, allowed: Sequence[str] = tuple(METHODS)) -> Method:
    if name not in allowed:
        raise ValueError(f"method must be one of {', '.join(allowed)}, got {name!r}")
    return METHODS[name]


def _runs(method: str, problem: Problem, config: Config, seeds: Sequence[int], *,
          progress: bool, counted_signal: bool) -> tuple[dict, list[State]]:
    """``method`` once per seed; with ``counted_signal``, a progress step per evaluation (a slow
    signal), else one per seed."""
    fn = METHODS[method]
    if counted_signal:
        evals = bar(enabled=progress, total=config.budget * len(seeds),
                    desc=f"{method} evaluations", unit="eval")
        problem = problem._replace(signal=counted(
            problem.signal, evals, lambda r: f"signal {r[0]:.2f} after {r[1]:.0f} s"))
    states = [fn(jax.random.key(s), problem, config)
              for s in bar(seeds, enabled=progress and not counted_signal, desc=method,
                           unit="seed")]
    out = summarize(states, problem)
    for run, s, st in zip(out["runs"], seeds, states):
        run["seed"] = s
        run["history"] = [r._asdict() for r in st.history]
    return out, states


def run_nb201(method: str = "hnas", metric: str = "ntk_trace", dataset: str = "cifar10", *,
              budget: int = 20, seeds: Sequence[int] = range(10), config: Config | None = None,
              progress: bool = False, signal: Signal | None = None,
              signal_name: str | None = None) -> dict:
    """Runs ``method`` on the tabular NB201 problem once per seed (key ``jax.random.key(seed)``)
    and returns :func:`summarize` plus the protocol. ``signal`` replaces the table's 12-epoch
    accuracy (e.g. :func:`jhnas.experiments.problems.nb201_signal`, a short training)."""
    _method(method)
    problem = nb201_problem(metric, dataset)
    seeds = list(seeds)
    if signal is not None:
        problem = problem._replace(signal=signal)
    config = (config or Config())._replace(budget=budget)
    if metric != "ntk_trace" and config.s == Config().s:
        config = config._replace(s=default_scale(problem, metric))
    check_config(config)
    out, _ = _runs(method, problem, config, seeds, progress=progress,
                   counted_signal=signal is not None)
    table = nb201.metric_table()
    out["protocol"] = {"method": method, "metric": metric, "dataset": dataset, "budget": budget,
                       "seeds": seeds, "config": config._asdict(), "jax": jax.__version__,
                       # the float64 GP's argmax can flip with the reduction order
                       "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "signal": signal_name or f"12-epoch validation accuracy on {dataset} "
                                                "(NB201 table)",
                       "cost": ("training seconds" if signal is not None else
                                "12 x cifar10-valid seconds per epoch of each evaluated arch"),
                       "metric_table": table.protocol,
                       "metric_coverage": table.coverage(metric)}
    return out


def run_darts(method: str = "hnas", *, pool: int = 12, budget: int = 5,
              seeds: Sequence[int] = range(1), config: Config | None = None,
              preset: str = "cpu", data_dir=None, dataset: str = "cifar10",
              first_key: int = 0, progress: bool = False) -> dict:
    """``method`` over a pool of ``pool`` random DARTS genotypes drawn with
    ``jax.random.key(first_key)`` (M and kappa scored once, shared by the seeds), each evaluation
    a short training of preset ``preset`` (:data:`jhnas.experiments.problems.PRESETS`) on
    ``dataset`` (CIFAR-10 or CIFAR-100; the embedded images without ``data_dir``). At most
    ``pool`` evaluations; ``s`` is the pool's largest M. Raises ``ValueError`` for a method that
    needs an edit distance (REA), a pool under 2 or an unknown preset or dataset."""
    _method(method, SPACE_FREE)
    if pool < 2:
        raise ValueError(f"pool must be >= 2, got {pool}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"the DARTS signal trains on cifar10 or cifar100, got {dataset!r}")
    p = PRESETS[preset]
    tr, va = signal_data(p, data_dir, dataset)
    problem = darts_problem(jax.random.key(first_key), pool, p, tr, va,
                            100 if dataset == "cifar100" else 10, progress=progress)
    config = (config or Config())._replace(budget=min(budget, pool), pool_step=pool,
                                           s=float(np.nanmax(problem.metric)))
    check_config(config)
    seeds = list(seeds)
    out, _ = _runs(method, problem, config, seeds, progress=progress, counted_signal=True)
    out["protocol"] = {"space": "darts", "method": method, "pool": pool, "preset": preset,
                       "signal": signal_description(preset, tr, va), "cost": "training seconds",
                       "config": config._asdict(), "jax": jax.__version__}
    return out


def signal_description(preset: str, train_data, val_data) -> str:
    """How a training signal is described in results files and summaries."""
    return (f"validation accuracy after {PRESETS[preset].config.epochs} epochs on "
            f"{len(train_data[1])} images, {len(val_data[1])} held out (preset {preset!r})")
