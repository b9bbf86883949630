r"""HNAS: Bayesian optimisation of the training-free objective's two hyper-parameters.

For an architecture :math:`A` with training-free metric :math:`M(A)` (the NTK trace norm in the
paper) and NTK condition number :math:`\kappa(A)`, the objective (minimised over a pool) is

.. math:: F_{t,c}(A) = \mu\,|M(A)^2 - \nu| + \kappa(A) / (M(A) + 10^{-6}),
          \qquad \mu = 10^{c}, \quad \sqrt\nu = t\,s \;\; (\text{or } s^t) .

HNAS searches :math:`(t, c)` in the box ``config.t_bounds x config.c_bounds`` with a GP
(:mod:`jhnas.gp`): each evaluation grows the pool by ``pool_step`` random architectures (drawn
with replacement, deduplicated, cumulative, evaluated ones removed), picks
:math:`\arg\min_A F_{t,c}(A)` in the pool and evaluates it with a *signal* (validation accuracy
after a short training: a table lookup on NAS-Bench-201, a real training otherwise), which the GP
models as a function of :math:`(t, c)`. The first ``len(init_t)`` evaluations probe
:math:`t` on a grid at :math:`c` = ``init_c``, the rest maximise an acquisition (EI by default).
The answer is the evaluated architecture with the best signal.

Everything is a pure function of a PRNG key and a :class:`State`: :func:`step` is
``(key, state) -> state``, :func:`search` folds it ``budget`` times with keys
``fold_in(key, step)``. Same key, same search.

Deliberate choices (the official code has none of them):

* **Signed metrics** (GraSP can be negative): :math:`M^2` and :math:`\kappa/M` are meaningless
  for :math:`M < 0`, so a metric with negative values is shifted by :func:`positive_metric` (by
  its minimum over the table plus 1 % of its range) before the objective sees it; ``s`` then
  refers to the shifted scale. A metric that is only zero somewhere (synflow of a network whose
  input is cut off from its output) is left as it is: :math:`\kappa/(0 + 10^{-6})` keeps such
  architectures out of every argmin, which is what a zero metric means.
* **Degenerate values**: architectures whose M or kappa is missing or not finite never enter the
  pool (they cannot be scored); kappa itself is already capped (:func:`jhnas.ntk.condition_number`).
* **The scale** ``s`` defaults to 5e3 for the NTK trace norm on NB201 (the paper's setting); for
  another metric it defaults to the largest (shifted) value of the table, so that ``t`` in [0, 1]
  spans the metric's range.

Our improvement, ``Config(nu_scale="log")``: :math:`\sqrt\nu = s^t` instead of :math:`t s`. The
NTK trace norm of NB201 networks spans four orders of magnitude (median about 40, maximum about
8e4), so on the official linear scale every ``t`` above a few hundredths puts :math:`\sqrt\nu`
above almost every architecture's M and the GP's input space is mostly flat; on the log scale
``t`` sweeps M's range evenly (measured in bench/results/hnas_nb201.md).

Our second improvement, ``Config(trust_region=True)``: after the initial probes, the argmin of
:math:`F_{t,c}` runs over the unevaluated one-edit neighbours of the best architecture so far
(``Problem.neighbours``; the pool again when they are all evaluated) instead of the whole pool:
the GP still chooses the trade-off :math:`(t, c)`, the evaluations refine around what the signal
has confirmed. The metric ranks whole regions well but not the architectures inside one
(bench/results/hnas_nb201.md).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import numpy as np

from jhnas import gp
from jhnas.progress import bar

Signal = Callable[[jax.Array, int], tuple[float, float]]


class Problem(NamedTuple):
    """A search problem over a finite space of ``n`` architectures, indexed 0..n-1.

    Attributes:
      metric: (n,) the training-free metric M (NaN where unknown).
      kappa: (n,) the NTK condition number (NaN where unknown).
      signal: ``(key, index) -> (value, cost)``: evaluates one architecture (larger is better);
        ``cost`` in seconds.
      report: ``index -> dict`` of what to report for a final architecture (e.g. test accuracies).
      neighbours: ``index -> (k,) indices`` one edit away (needed by ``Config.trust_region``).
    """

    metric: np.ndarray
    kappa: np.ndarray
    signal: Signal
    report: Callable[[int], dict] = lambda i: {}
    neighbours: Callable[[int], np.ndarray] | None = None

    @property
    def size(self) -> int:
        return int(self.metric.shape[0])

    @property
    def scorable(self) -> np.ndarray:
        """(n,) bool: M and kappa are finite."""
        return np.isfinite(self.metric) & np.isfinite(self.kappa)


class Config(NamedTuple):
    """HNAS settings; the defaults are the official NB201 run (shuyao95/HNAS)."""

    budget: int = 20
    s: float = 5e3
    t_bounds: tuple[float, float] = (0.0, 1.0)
    c_bounds: tuple[float, float] = (-4.0, 0.0)
    init_t: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    init_c: float = -2.0
    pool_step: int = 2000
    acquisition: str = "ei"  # "ei", "log_ei" or "ucb"
    xi: float = 0.0
    beta: float = 2.576
    kernel: str = "matern52"
    n_random: int = 10000
    nu_scale: str = "linear"  # sqrt(nu) = t * s (official) or "log": s ** t (ours)
    trust_region: bool = False  # after the probes, argmin over the incumbent's neighbours (ours)


class Record(NamedTuple):
    """One evaluation: the hyper-parameters (NaN for baselines without), the architecture, its
    signal and the cost of evaluating it."""

    t: float
    c: float
    index: int
    signal: float
    cost: float


class State(NamedTuple):
    """Search state: ``pool`` (n,) bool, ``history`` of :class:`Record` s in evaluation order."""

    pool: np.ndarray
    history: tuple[Record, ...] = ()

    @property
    def evaluated(self) -> np.ndarray:
        return np.array([r.index for r in self.history], dtype=np.int64)

    def best(self) -> Record:
        """The evaluated architecture with the best signal (ties: the first evaluated)."""
        if not self.history:
            raise ValueError("nothing has been evaluated yet")
        return max(self.history, key=lambda r: r.signal)

    @property
    def cost(self) -> float:
        return float(sum(r.cost for r in self.history))


ACQUISITIONS = ("ei", "log_ei", "ucb")


NU_SCALES = ("linear", "log")


def objective(metric: np.ndarray, kappa: np.ndarray, t: float, c: float, s: float,
              nu_scale: str = "linear") -> np.ndarray:
    r""":math:`10^c |M^2 - \nu| + \kappa / (M + 10^{-6})`, elementwise (float64), with
    :math:`\sqrt\nu = t s` (``nu_scale="linear"``, the official one) or :math:`s^t` (``"log"``)."""
    if nu_scale not in NU_SCALES:
        raise ValueError(f"nu_scale must be one of {NU_SCALES}, got {nu_scale!r}")
    m = np.asarray(metric, np.float64)
    root_nu = t * s if nu_scale == "linear" else float(s) ** t
    return 10.0 ** c * np.abs(m ** 2 - root_nu ** 2) + np.asarray(kappa, np.float64) / (m + 1e-6)


def positive_metric(values: np.ndarray) -> np.ndarray:
    """``values`` unchanged if no finite one is negative, else shifted to be > 0: ``v - min + 0.01
    * (max - min)`` (see the module docstring)."""
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0 or finite.min() >= 0:
        return v
    span = finite.max() - finite.min()
    return v - finite.min() + 0.01 * (span if span > 0 else 1.0)


def init(problem: Problem) -> State:
    """The empty state: nothing in the pool, nothing evaluated."""
    if problem.kappa.shape != problem.metric.shape or problem.metric.ndim != 1:
        raise ValueError(f"metric and kappa must be (n,) arrays of the same length, got "
                         f"{problem.metric.shape} and {problem.kappa.shape}")
    if not problem.scorable.any():
        raise ValueError("no architecture has a finite metric and kappa")
    return State(np.zeros(problem.size, bool))


def grow_pool(key: jax.Array, state: State, problem: Problem, n: int) -> State:
    """Adds ``n`` uniform draws (with replacement) of scorable architectures, minus the evaluated."""
    draws = np.asarray(jax.random.randint(key, (n,), 0, problem.size))
    pool = state.pool.copy()
    pool[draws] = True
    pool &= problem.scorable
    pool[state.evaluated] = False
    return state._replace(pool=pool)


def propose(key: jax.Array, state: State, config: Config) -> tuple[float, float]:
    """The next ``(t, c)``: the initial grid first, then the acquisition's maximiser."""
    k = len(state.history)
    if k < len(config.init_t):
        return float(config.init_t[k]), float(config.init_c)
    if config.acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {config.acquisition!r}")
    x = np.array([[r.t, r.c] for r in state.history])
    y = np.array([r.signal for r in state.history])
    bounds = np.array([config.t_bounds, config.c_bounds], np.float64)
    fit_key, acq_key = jax.random.split(key)
    model = gp.fit(fit_key, x, y, bounds, kernel=config.kernel)
    acq = {"ei": functools.partial(gp.expected_improvement, xi=config.xi),
           "log_ei": functools.partial(gp.log_expected_improvement, xi=config.xi),
           "ucb": functools.partial(gp.upper_confidence_bound, beta=config.beta)
           }[config.acquisition]
    t, c = np.asarray(gp.maximize_acquisition(acq_key, model, acq, n_random=config.n_random))
    return float(t), float(c)


def candidates(state: State, problem: Problem, config: Config = Config()) -> np.ndarray:
    """The indices the next argmin runs over: the pool; with ``config.trust_region``, once the
    initial probes are done, the incumbent's scorable unevaluated neighbours (the pool again when
    none is left)."""
    pool = np.flatnonzero(state.pool)
    if not config.trust_region or len(state.history) < len(config.init_t):
        return pool
    neighbours = _check_neighbours(config, problem)
    near = np.asarray(neighbours(state.best().index), np.int64)
    near = np.setdiff1d(near[problem.scorable[near]], state.evaluated)
    return near if near.size else pool


def select(state: State, problem: Problem, t: float, c: float, s: float,
           nu_scale: str = "linear", idx: np.ndarray | None = None) -> int:
    """argmin of the objective over ``idx`` (default: the pool; ties: the first)."""
    idx = np.flatnonzero(state.pool) if idx is None else np.asarray(idx)
    if idx.size == 0:
        raise ValueError("the pool is empty: every scorable architecture has been evaluated")
    f = objective(problem.metric[idx], problem.kappa[idx], t, c, s, nu_scale)
    return int(idx[np.argmin(f)])


def evaluate(key: jax.Array, state: State, problem: Problem, index: int, t=np.nan, c=np.nan
             ) -> State:
    """Evaluates ``index`` with the problem's signal and records it; it leaves the pool."""
    value, cost = problem.signal(key, index)
    pool = state.pool.copy()
    pool[index] = False
    return State(pool, state.history + (Record(float(t), float(c), int(index), float(value),
                                               float(cost)),))


def step(key: jax.Array, state: State, problem: Problem, config: Config = Config()) -> State:
    """One HNAS evaluation: grow the pool, propose (t, c), pick argmin F over the
    :func:`candidates`, evaluate it."""
    pool_key, prop_key, eval_key = jax.random.split(key, 3)
    state = grow_pool(pool_key, state, problem, config.pool_step)
    t, c = propose(prop_key, state, config)
    index = select(state, problem, t, c, config.s, config.nu_scale,
                   candidates(state, problem, config))
    return evaluate(eval_key, state, problem, index, t, c)


def check_config(config: Config) -> None:
    """Raises ``ValueError`` naming the first invalid field of ``config``."""
    if config.budget < 1:
        raise ValueError(f"budget must be >= 1, got {config.budget}")
    if config.acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {config.acquisition!r}")
    if not config.s > 0:
        raise ValueError(f"s must be > 0, got {config.s}")
    if config.nu_scale not in NU_SCALES:
        raise ValueError(f"nu_scale must be one of {NU_SCALES}, got {config.nu_scale!r}")
    if config.nu_scale == "log" and not config.s > 1:
        raise ValueError(f"nu_scale='log' needs s > 1 (sqrt(nu) = s**t), got {config.s}")


def _check_neighbours(config: Config, problem: Problem) -> Callable[[int], np.ndarray]:
    """``problem.neighbours``; ``ValueError`` if the trust region needs it and it is None."""
    if problem.neighbours is None:
        if config.trust_region:
            raise ValueError("trust_region needs a problem with neighbours (an edit distance)")
        return lambda index: np.zeros(0, np.int64)
    return problem.neighbours


def search(key: jax.Array, problem: Problem, config: Config = Config(), *,
           progress: bool = False) -> State:
    """HNAS for ``config.budget`` evaluations; step ``i`` uses ``fold_in(key, i)``."""
    check_config(config)
    _check_neighbours(config, problem)  # before any (possibly costly) evaluation
    state = init(problem)
    for i in bar(range(config.budget), enabled=progress, desc="hnas", unit="eval", leave=False):
        state = step(jax.random.fold_in(key, i), state, problem, config)
    return state
