"""Baselines for HNAS in the same harness (:class:`jhnas.hnas.Problem`, :class:`jhnas.hnas.State`).

Each is ``method(key, problem, config) -> State`` with ``config.budget`` evaluations at most and
the same pool growth as HNAS (``config.pool_step`` random draws per evaluation):

* :func:`random_search`: ``budget`` distinct uniformly drawn architectures.
* :func:`regularized_evolution` (REA, Real et al. 2019): population 10, tournament of 3, the
  child mutates one edge of the tournament winner, the oldest member dies.
* :func:`argmax_metric` (NASI-style) and :func:`argmin_kappa` (TE-NAS-style): training-free, pick
  one architecture from the pool HNAS would have after ``budget`` evaluations; nothing is
  trained, so the search cost is 0 (the signal is looked up only to report it).
* :func:`metric_order` ("zero-cost"): evaluate the pool's architectures in decreasing metric
  order.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jhnas.hnas import Config, Problem, Record, State, evaluate, grow_pool, init

Mutate = Callable[[jax.Array, int], int]


def _final_pool(key: jax.Array, problem: Problem, config: Config) -> State:
    state = init(problem)
    for i in range(config.budget):
        state = grow_pool(jax.random.fold_in(key, i), state, problem, config.pool_step)
    return state


def random_search(key: jax.Array, problem: Problem, config: Config = Config()) -> State:
    order = np.asarray(jax.random.permutation(key, problem.size))
    state = State(np.zeros(problem.size, bool))
    for i, index in enumerate(order[:config.budget]):
        state = evaluate(jax.random.fold_in(key, i), state, problem, int(index))
    return state


def regularized_evolution(key: jax.Array, problem: Problem, config: Config = Config(), *,
                          mutate: Mutate, population: int = 10, tournament: int = 3) -> State:
    """REA; ``mutate(key, index) -> index`` changes one edge (for NB201:
    :func:`jhnas.spaces.nb201.mutate`)."""
    init_key, evo_key = jax.random.split(key)
    state = random_search(init_key, problem, config._replace(budget=min(population, config.budget)))
    alive = list(state.evaluated)
    seen = set(alive)
    i = 0
    while len(state.history) < config.budget:
        k = jax.random.fold_in(evo_key, i)
        i += 1
        k_sample, k_mut, k_eval = jax.random.split(k, 3)
        contenders = np.asarray(jax.random.choice(k_sample, len(alive), (tournament,)))
        signal = {r.index: r.signal for r in state.history}
        parent = max((alive[j] for j in contenders), key=lambda a: signal[a])
        child = mutate(k_mut, parent)
        if child in seen:  # a repeat costs nothing and teaches nothing: draw again
            if i > 100 * config.budget:
                break
            continue
        seen.add(child)
        state = evaluate(k_eval, state, problem, child)
        alive = alive[1:] + [child]
    return state


def _pick(key, problem, config, index_fn) -> State:
    pool = _final_pool(key, problem, config).pool
    idx = np.flatnonzero(pool)
    index = int(idx[index_fn(idx)])
    value, _ = problem.signal(key, index)
    return State(pool, (Record(np.nan, np.nan, index, float(value), 0.0),))


def argmax_metric(key: jax.Array, problem: Problem, config: Config = Config()) -> State:
    return _pick(key, problem, config, lambda idx: np.argmax(problem.metric[idx]))


def argmin_kappa(key: jax.Array, problem: Problem, config: Config = Config()) -> State:
    return _pick(key, problem, config, lambda idx: np.argmin(problem.kappa[idx]))


def metric_order(key: jax.Array, problem: Problem, config: Config = Config()) -> State:
    state = _final_pool(key, problem, config)
    idx = np.flatnonzero(state.pool)
    order = idx[np.argsort(-problem.metric[idx], kind="stable")]
    for i, index in enumerate(order[:config.budget]):
        state = evaluate(jax.random.fold_in(key, i), state, problem, int(index))
    return state
