r"""Exact relations between the gradient metrics, the empirical NTK, training and HNAS.

The HNAS paper's theorems and constants were not available to us: every statement here is
derived from first principles (Cauchy-Schwarz, the spectral theorem, the chain rule), stated
with all its assumptions and constants, and comes with a *checker* that evaluates both sides on a
given network, parameters and batch and returns a :class:`Bound` per inequality (``lhs``,
``rhs``, ``slack = rhs - lhs``, ``rel_slack``). Run the checkers in float64 (inside
``jax.enable_x64(True)``, with :func:`as_float64` parameters and inputs); the relations then hold
to rounding (1e-9 relative is ample), and ``jhnas theory`` prints them as a table.

Notation (shapes in brackets)
-----------------------------
A batch of ``n`` samples, logits :math:`f_i \in \mathbb R^K`; :math:`F = (f_{ik})` flattened
sample-major (``i * K + k``) [n K]. :math:`\theta` the parameters of a *parameter set*
(``param_set``: ``"kernels"`` = Conv/Dense kernels, the official GradNorm/SNIP/GraSP set;
``"layers"`` = kernels and biases, the official NTK set; ``"all"``) [P]; the other parameters are
held fixed. :math:`J = \partial F / \partial \theta` [nK x P] is the Jacobian of **all logits of
all samples** of the *batched* function (exact also with train-mode BatchNorm, which couples the
samples) and :math:`\Theta = J J^\top` [nK x nK] the full empirical NTK, eigenvalues
:math:`\lambda_{\min} = \lambda_1 \le \dots \le \lambda_m = \lambda_{\max}`, :math:`m` its size.
Per-output variants: the NTK of outputs :math:`F' = C F` (``output="label"``: the true-label logit
:math:`f_{i y_i}`, the NASI/HNAS choice; ``"sum"``: :math:`\sum_k f_{ik}`, TE-NAS; ``"all"``:
:math:`C = I`) is :math:`C \Theta C^\top` [n x n]. Throughout

.. math:: \bar M = \sqrt{\operatorname{tr}\Theta / m}, \qquad \kappa = \lambda_{\max}/\lambda_{\min}

(``spectrum``): for ``output="label"``, :math:`\bar M` is exactly jhnas's ``ntk_trace`` metric
(computed with the exact Jacobian instead of the official decomposition; the two agree on
networks without batch coupling) and :math:`\kappa` the *unguarded* ``ntk_cond``. Since
:math:`\bar M^2` is the mean eigenvalue, :math:`\bar M^2 \le \lambda_{\max} \le m \bar M^2` and
:math:`\lambda_{\min} \le \bar M^2`.

(i) GradNorm, SNIP, GraSP and the NTK (:func:`check_grad_norm`, :func:`check_snip`,
:func:`check_grasp`)
------------------------------------------------------------------------------------------------
Loss :math:`L(\theta) = \mathcal L(F(\theta))` (default: mean cross-entropy
:math:`\frac1n\sum_i \ell(f_i, y_i)`), :math:`u = n\,\partial\mathcal L/\partial F` [nK] (for CE
:math:`u_i = p_i - e_{y_i}`, :math:`p_i = \mathrm{softmax}(f_i)`), :math:`g = \nabla_\theta L`.
The chain rule gives the identity :math:`g = J^\top u / n`, hence

.. math:: \|g\|_2^2 = u^\top \Theta u / n^2, \qquad
          \sqrt{\lambda_{\min}}\,\frac{\|u\|}{n} \;\le\; \|g\|_2 \;\le\;
          \sqrt{\lambda_{\max}}\,\frac{\|u\|}{n} \;\le\; \sqrt{\operatorname{tr}\Theta}\,
          \frac{\|u\|}{n} = \bar M_{\rm s}\,\frac{\|u\|}{\sqrt n},

with :math:`\bar M_{\rm s} = \sqrt{\operatorname{tr}\Theta / n}` (trace per *sample*,
:math:`= \sqrt K \bar M` for ``output="all"``). The upper (lower) bound is attained iff
:math:`u` is a top (bottom) eigenvector of :math:`\Theta`. For cross-entropy
:math:`\|u_i\|^2 = (1-p_{iy_i})^2 + \sum_{k\ne y_i} p_{ik}^2 \le 2(1-p_{iy_i})^2 \le 2`, so

.. math:: \|g\|_2 \le \sqrt 2\, \bar M_{\rm s},

and, since :math:`\sum_k u_{ik} = 0`, :math:`u = Pu` with :math:`P = I_n \otimes (I_K -
\mathbf 1\mathbf 1^\top / K)`: :math:`\|g\| \le \sqrt{\lambda_{\max}(P\Theta P)}\,\|u\|/n`
(tighter). The official GradNorm is the *sum of per-array norms*
:math:`\sum_l \|g_l\|_2`, and :math:`\|g\|_2 \le \sum_l \|g_l\|_2 \le \sqrt{L}\,\|g\|_2` for
:math:`L` arrays (Cauchy-Schwarz), so it obeys the same bounds times :math:`\sqrt L`.

SNIP :math:`= \sum_p |\theta_p g_p|`: :math:`|\langle\theta, g\rangle| \le \mathrm{SNIP} \le
\|\theta\|_2 \|g\|_2 \le \|\theta\|_2 \sqrt{\lambda_{\max}}\,\|u\|/n` (CE: :math:`\le \sqrt2
\|\theta\| \bar M_{\rm s}`), with :math:`\langle\theta, g\rangle = (J\theta)^\top u / n`.

GraSP :math:`= -\theta^\top H g`, :math:`H = \nabla^2_\theta L`: :math:`|\mathrm{GraSP}| \le
\|\theta\|\,\|Hg\| \le \|\theta\|\,\|H\|_2\,\|g\| \le \|\theta\|\,\|H\|_2
\sqrt{\lambda_{\max}}\,\|u\|/n`. The NTK controls the Gauss-Newton part only: with
:math:`S = \nabla_F^2 \mathcal L` [nK x nK], :math:`H = J^\top S J + \sum_a (\partial\mathcal L /
\partial F_a) \nabla^2_\theta F_a`, and the first term's share of GraSP,
:math:`\mathrm{GraSP}_{\rm GN} = -(J\theta)^\top S\, (Jg)` with :math:`Jg = \Theta u / n`, obeys

.. math:: |\mathrm{GraSP}_{\rm GN}| \le \|S\|_2\,\|J\theta\|\,\|Jg\| \le \|S\|_2\,
          \sqrt{\lambda_{\max}}\,\|\theta\|\,\lambda_{\max}\,\|u\| / n ;

for mean CE :math:`S = \mathrm{blockdiag}(\mathrm{diag}(p_i) - p_i p_i^\top)/n` and
:math:`v^\top(\mathrm{diag}(p) - pp^\top)v = \mathrm{Var}_p(v) \le (\max v - \min v)^2/4 \le
\|v\|^2/2`, so :math:`\|S\|_2 \le 1/(2n)` and :math:`|\mathrm{GraSP}_{\rm GN}| \le
\lambda_{\max}^{3/2}\|\theta\| / (\sqrt2\, n^{3/2})`. The remainder (second derivatives of the
network) is not controlled by the NTK; it vanishes for the linearised network.

(ii) Linearised training (:func:`check_linear_training`, :func:`gd_trajectory`)
-------------------------------------------------------------------------------
Outputs :math:`F` (any ``output``) [m], targets :math:`Y` (default: the one-hot labels seen
through the same outputs), MSE :math:`L = \|F - Y\|^2 / (2n)`, gradient descent
:math:`\theta_{t+1} = \theta_t - \eta\nabla L` on the linearised model :math:`F_{\rm lin}(\theta)
= F(\theta_0) + J(\theta - \theta_0)`. Then :math:`\nabla L = J^\top r_t / n` and the residual
:math:`r_t = F_{\rm lin}(\theta_t) - Y` obeys exactly

.. math:: r_t = (I - \eta\Theta/n)^t\, r_0, \qquad L_t = \frac{1}{2n}\sum_j
          (1-\eta\lambda_j/n)^{2t} (v_j^\top r_0)^2 .

:math:`L_t / L_0` is a convex combination of :math:`\rho_j^{2t}`, :math:`\rho_j = 1 -
\eta\lambda_j/n`, so for **any** :math:`\eta`: :math:`\min_j \rho_j^{2t} L_0 \le L_t \le
\max_j \rho_j^{2t} L_0`, with equality iff :math:`r_0` is an eigenvector (of the extreme
:math:`\rho`). The loss goes to 0 for every :math:`r_0` iff :math:`0 < \eta < 2n/\lambda_{\max}`
and :math:`\lambda_{\min} > 0`.
For :math:`0 < \eta \le n/\lambda_{\max}` every :math:`\rho_j \in [0, 1)` and

.. math:: (1 - \eta m\bar M^2/n)_+^{2t} L_0 \le (1-\eta\lambda_{\max}/n)^{2t} L_0 \le L_t \le
          (1-\eta\lambda_{\max}/(n\kappa))^{2t} L_0 \le (1-\eta\bar M^2/(n\kappa))^{2t} L_0
          \le e^{-2t\eta\bar M^2/(n\kappa)} L_0 :

at a fixed step the guaranteed rate improves with :math:`\bar M^2/\kappa`, while stability needs
:math:`\bar M^2 \le \lambda_{\max} < 2n/\eta` (the TE-NAS trainability argument, made exact).
At :math:`\eta = n/\lambda_{\max}` the rate is :math:`(1 - 1/\kappa)^{2t}`.

(iii) A kernel-regression generalization term (:func:`check_generalization`)
---------------------------------------------------------------------------
Linearised GD from :math:`\theta_0` on the MSE converges (for :math:`\Theta \succ 0` and a stable
step) to the minimum-norm interpolant :math:`\theta_\infty = \theta_0 - J^\top\Theta^{-1} r_0`,
at distance :math:`B = \|\theta_\infty - \theta_0\| = \sqrt{r_0^\top \Theta^{-1} r_0}`. With
one output per sample (``output="label"`` or ``"sum"``, :math:`m = n`) the function class
:math:`\{x \mapsto \nabla_\theta F(x)^\top w : \|w\| \le B\}` has empirical Rademacher
complexity at most :math:`B\sqrt{\operatorname{tr}\Theta}/n` (Cauchy-Schwarz and Jensen;
Bartlett & Mendelson 2002, Arora et al. 2019; for all K logits the same expression is used as
the term, vector contraction changes it by a constant), the term

.. math:: G = \sqrt{r^\top \Theta^{-1} r \cdot \operatorname{tr}\Theta}\,/\,n

(:math:`r = r_0`; with zero initial outputs :math:`r = -Y`, Arora et al.'s :math:`y^\top
H^{-1} y`). By the spectral theorem :math:`\|r\|^2/\lambda_{\max} \le r^\top\Theta^{-1} r \le
\|r\|^2/\lambda_{\min}` (equality at eigenvectors), hence

.. math:: \frac{\|r\|}{n}\sqrt{1 + \tfrac{m-1}{\kappa}} \le
          \frac{\|r\|}{n}\sqrt{\tfrac{\operatorname{tr}\Theta}{\lambda_{\max}}} \le G \le
          \frac{\|r\|}{n}\sqrt{\tfrac{\operatorname{tr}\Theta}{\lambda_{\min}}} \le
          \frac{\|r\|}{n}\sqrt{m\kappa}

(using :math:`\lambda_{\max} + (m-1)\lambda_{\min} \le \operatorname{tr}\Theta \le
m\lambda_{\max}`): :math:`G` is scale-free and grows with :math:`\kappa`. The distance itself is
not scale-free:

.. math:: \frac{\|r\|}{\sqrt m\,\bar M} \le \frac{\|r\|}{\sqrt{\lambda_{\max}}} \le B \le
          \frac{\|r\|}{\sqrt{\lambda_{\min}}} = \|r\|\sqrt{\frac{\kappa}{\lambda_{\max}}} \le
          \|r\|\,\frac{\sqrt\kappa}{\bar M} \le \|r\|\,\frac{\kappa}{\bar M} :

a larger trace norm and a smaller condition number keep the trained network closer to its
initialisation, where the NTK complexity bound with a data-independent gradient scale is small.

(iv) The HNAS objective (:func:`objective_terms`, :func:`check_objective`)
-------------------------------------------------------------------------
HNAS minimises :math:`\mu|M^2 - \nu| + \kappa/(M + 10^{-6})` (:func:`jhnas.hnas.objective`).
Reading (ii) and (iii) with :math:`M = \bar M` of the label NTK:

* *trainability*: GD with one step size :math:`\eta` for all architectures is stable only if
  :math:`\bar M^2 \le \lambda_{\max} < 2n/\eta`, and it is fast only if :math:`\bar M^2/\kappa`
  is large; :math:`\lambda_{\max} \in [\bar M^2, m\bar M^2]` ties both to :math:`M^2`, so good
  architectures have :math:`M^2` near an architecture-independent but unknown value
  :math:`\nu \in [n/(\eta m), 2n/\eta)` set by the step size and the data: the penalty
  :math:`\mu |M^2 - \nu|`, with :math:`(\mu, \nu)` left to Bayesian optimisation;
* *generalization*: for residuals of similar size across architectures, the complexity of the
  reachable class scales with :math:`B/\|r\| \le \sqrt\kappa/\bar M \le \kappa/\bar M` (iii): the
  term :math:`\kappa/M`. The square root is what the bound gives; :math:`\kappa/M` (the official
  term, which dominates it since :math:`\kappa \ge 1`) is kept for parity with the paper.

Neither step fixes the constants (the power of :math:`\kappa`, the relative weight): that is
what the two hyper-parameters and the few real evaluations of HNAS are for.

Every checker returns a NamedTuple of :class:`Bound` s (plus a few plain values); :func:`bounds`
lists them and :func:`holds` tests them. Nothing here draws random numbers.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from numpy.typing import ArrayLike

from jhnas import hnas
from jhnas import ntk as ntk_lib
from jhnas.net import Apply, Net, Params, from_apply

Loss = Callable[[jax.Array, jax.Array], jax.Array]
#: A batch ``(x, y)``: inputs (n, ...) and integer labels (n,), e.g. a :class:`jhnas.data.Batch`.
XY = tuple[ArrayLike, ArrayLike]

#: XLA options of the compiled functions (Jacobian, loss pass, Hessian, gradient descent): each
#: is compiled once per network and run a few times, so a low backend optimisation level (about
#: half the compile time on CPU) pays off for the small networks the checks are meant for. It
#: slows convolutions down several-fold: set it to ``None`` (XLA's defaults) before the first
#: check of a larger convolutional network or a long :func:`gd_trajectory`.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

__all__ = [
    "Bound", "GeneralizationCheck", "GradNormCheck", "GraspCheck", "LinearTrainingCheck",
    "ObjectiveCheck", "ObjectiveTerms", "SnipCheck", "Spectrum", "Trajectory", "as_float64",
    "bound", "bounds", "check_all", "check_generalization", "check_grad_norm", "check_grasp",
    "check_linear_training", "check_objective", "check_snip", "format_table", "gd_trajectory",
    "holds", "jacobian", "linearized_residuals", "mean_cross_entropy", "ntk_matrix",
    "objective_terms", "spectrum", "table", "worst",
]


# ----------------------------------------------------------------------------- bounds

class Bound(NamedTuple):
    """One relation ``lhs <= rhs`` (``relation="<="``) or ``lhs == rhs`` (``"=="``, an identity).

    ``slack = rhs - lhs``, ``rel_slack = slack / max(|lhs|, |rhs|, scale)`` (see :func:`bound`;
    0 when all are 0; 1 when ``rhs`` is +inf and ``lhs`` finite). Fields are floats, or arrays
    over training steps (:class:`LinearTrainingCheck`). A row that does not apply (e.g. a
    cross-entropy constant with another loss) has NaN sides, says why in ``note``, and is skipped
    by :func:`holds`.
    """

    name: str
    relation: str
    lhs: Any
    rhs: Any
    slack: Any
    rel_slack: Any
    note: str = ""


def bound(name: str, lhs: ArrayLike, rhs: ArrayLike, relation: str = "<=",
          scale: ArrayLike = 0.0) -> Bound:
    """A :class:`Bound` with its slacks computed (float64). ``scale`` floors the denominator of
    ``rel_slack``: identities pass the natural size of their terms, so that two rounding-level
    values (e.g. a gradient that vanishes) are not compared relative to each other. Raises
    ``ValueError`` for another ``relation``.

    Examples:
      >>> b = bound("upper", 1.0, 4.0)
      >>> b.slack, b.rel_slack, holds(b)
      (3.0, 0.75, True)
      >>> holds(bound("identity", 1.0, 1.0 + 1e-12, "=="))
      True
    """
    if relation not in ("<=", "=="):
        raise ValueError(f"relation must be '<=' or '==', got {relation!r}")
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        slack = rhs - lhs
        scale = np.maximum(np.maximum(np.abs(lhs), np.abs(rhs)), np.abs(scale))
        rel = np.where(scale == 0, 0.0, slack / np.where(scale == 0, 1.0, scale))
        rel = np.where(np.isposinf(rhs) & np.isfinite(lhs), 1.0, rel)
    out = lambda a: float(a) if a.ndim == 0 else a
    return Bound(name, relation, out(lhs), out(rhs), out(slack), out(rel))


def _skipped(name: str, why: str, relation: str = "<=") -> Bound:
    return bound(name, np.nan, np.nan, relation)._replace(note=why)


_NOT_CE = "the loss is not the cross-entropy"
_SINGULAR = "singular NTK (lambda_min <= 0)"


def bounds(check: Bound | tuple[Any, ...]) -> list[Bound]:
    """The :class:`Bound` fields of a checker's result, in order."""
    if isinstance(check, Bound):
        return [check]
    return [v for v in check if isinstance(v, Bound)]


def holds(check: Bound | tuple[Any, ...], tol: float = 1e-9) -> bool:
    """True if every applicable bound of ``check`` (a :class:`Bound` or a checker's result) holds:
    ``rel_slack >= -tol`` for ``<=``, ``|rel_slack| <= tol`` for ``==`` (NaN rows are skipped)."""
    for b in bounds(check):
        rel = np.asarray(b.rel_slack, np.float64)
        lhs, rhs = np.asarray(b.lhs, np.float64), np.asarray(b.rhs, np.float64)
        applicable = ~(np.isnan(lhs) & np.isnan(rhs))
        if np.isnan(rel[applicable]).any():
            return False
        ok = rel >= -tol if b.relation == "<=" else np.abs(rel) <= tol
        if not np.all(ok[applicable]):
            return False
    return True


def worst(b: Bound) -> Bound:
    """A scalar :class:`Bound`: the entry of an array-valued bound with the least relative
    slack (the largest ``|rel_slack|`` for an identity)."""
    rel = np.asarray(b.rel_slack, np.float64)
    if rel.ndim == 0:
        return b
    key = np.abs(rel) if b.relation == "==" else -rel
    key = np.where(np.isnan(key), -np.inf, key)
    i = int(np.argmax(key))
    lhs, rhs, slack, rel_slack = (float(np.asarray(v)[i]) for v in b[2:6])
    return Bound(b.name, b.relation, lhs, rhs, slack, rel_slack, b.note)


# ----------------------------------------------------------------------------- helpers

def as_float64(tree: Any) -> Any:
    """Every floating leaf of a pytree cast to float64 (call inside ``jax.enable_x64(True)``)."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree.map(cast, tree)


def _net(f: Net | Apply) -> Net:
    return f if isinstance(f, Net) else from_apply(f)


def _xy(batch: XY) -> tuple[jax.Array, jax.Array]:
    x, y = batch
    return jnp.asarray(x), jnp.asarray(y, jnp.int32)


def _jit(net: Net, fn: Callable) -> Callable:
    """jit with :data:`COMPILER_OPTIONS`, except for a net of compiled blocks (run eagerly)."""
    return fn if net.compiled else jax.jit(fn, compiler_options=COMPILER_OPTIONS)


def _host(a: Any) -> np.ndarray:
    return np.asarray(jax.device_get(a), np.float64)


def _norm(leaves: Any) -> float:
    return math.sqrt(sum(float(np.sum(_host(a) ** 2)) for a in jax.tree.leaves(leaves)))


def _dot(a: Any, b: Any) -> float:
    return sum(float(np.sum(_host(x) * _host(z))) for x, z in zip(jax.tree.leaves(a),
                                                                 jax.tree.leaves(b)))


def mean_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """The default loss: mean cross-entropy with integer labels (as :mod:`jhnas.metrics`)."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


# ----------------------------------------------------------------------------- the NTK, exactly

class Spectrum(NamedTuple):
    """Spectrum of a Gram [m x m] in float64: ``eigenvalues`` ascending (m,), ``eigenvectors``
    (m, m) in columns, ``trace``, ``lam_min``, ``lam_max``, ``M`` = sqrt(trace / m), ``kappa`` =
    lam_max / lam_min (unguarded: +inf if lam_min <= 0)."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    trace: float
    lam_min: float
    lam_max: float
    M: float
    kappa: float

    @property
    def size(self) -> int:
        return int(self.eigenvalues.shape[0])


def spectrum(gram: ArrayLike) -> Spectrum:
    """Eigen-decomposition of a symmetric Gram (symmetrised ``(G + G^T) / 2``) in float64.

    Raises ``ValueError`` for a Gram that is not square and ``FloatingPointError`` for one with
    non-finite entries.

    Examples:
      >>> sp = spectrum([[4.0, 0.0], [0.0, 1.0]])
      >>> sp.eigenvalues, sp.trace, sp.M, sp.kappa
      (array([1., 4.]), 5.0, 1.5811388300841898, 4.0)
    """
    g = np.asarray(gram, np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"a Gram must be square, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise FloatingPointError("the Gram has non-finite entries")
    lam, vec = np.linalg.eigh((g + g.T) / 2)
    tr = float(np.trace(g))
    kappa = float(lam[-1] / lam[0]) if lam[0] > 0 else math.inf
    return Spectrum(lam, vec, tr, float(lam[0]), float(lam[-1]),
                    math.sqrt(max(tr, 0.0) / g.shape[0]), kappa)


@functools.lru_cache(maxsize=16)
def _jacobian_fn(net: Net):
    """Compiled ``(params, x) -> (logits, J)``: the Jacobian of all logits of the batched function
    (``jax.jacrev``), one array (nK, *shape) per parameter leaf (all leaves, in tree order)."""

    def run(params, x):
        return net.apply(params, x), jax.jacrev(lambda p: net.apply(p, x).reshape(-1))(params)

    def rows(params, x):  # a net of compiled blocks: one reverse pass per row, nothing batched
        logits, vjp = jax.vjp(lambda p: net.apply(p, x), params)
        basis = np.eye(logits.size).reshape((-1,) + logits.shape)
        jac = [vjp(jnp.asarray(e, logits.dtype))[0] for e in basis]
        return logits, jax.tree.map(lambda *r: jnp.stack(r), *jac)

    return rows if net.compiled else _jit(net, run)


@functools.lru_cache(maxsize=16)
def _grads_fn(net: Net, param_set: str, loss: Loss | None, hvp: bool):
    """Compiled loss quantities: u = n dL/dF, L, g = dL/dtheta, S = d^2 L / dF^2 and, with
    ``hvp``, H g (H the Hessian w.r.t. ``param_set``).

    Everything is differentiated w.r.t. all parameters and then restricted to the set (for
    H g: the tangent is g on the set and 0 elsewhere, so (H_all t)_set = H_set g), so that a
    net of compiled blocks reuses the blocks' reverse passes of :func:`jacobian`."""
    lossf = loss or mean_cross_entropy

    def run(params, x, y):
        leaves, treedef = jax.tree.flatten(params)
        keep = treedef.flatten_up_to(ntk_lib.param_mask(params, param_set))
        sel = lambda tree: [a for a, k in zip(jax.tree.leaves(tree), keep) if k]
        lf = lambda lg: lossf(lg, y)
        L = lambda p: lf(net.apply(p, x))
        logits = net.apply(params, x)
        out = {"u": logits.shape[0] * jax.grad(lf)(logits).reshape(-1), "theta": sel(params)}
        out["loss"], g_all = jax.value_and_grad(L)(params)
        out["g"] = sel(g_all)
        if hvp:  # forward-over-reverse H g
            tangent = treedef.unflatten([g if k else jnp.zeros_like(g)
                                         for g, k in zip(jax.tree.leaves(g_all), keep)])
            out["hg"] = sel(jax.jvp(jax.grad(L), (params,), (tangent,))[1])
        out["s"] = jax.hessian(lf)(logits).reshape(logits.size, logits.size)
        return out

    return _jit(net, run)


@functools.lru_cache(maxsize=8)
def _hessian_fn(net: Net, param_set: str, loss: Loss | None):
    lossf = loss or mean_cross_entropy

    def run(params, x, y):
        sel, merge = ntk_lib.split_params(params, ntk_lib.param_mask(params, param_set))
        vec, unravel = ravel_pytree(sel)
        return jax.hessian(lambda v: lossf(net.apply(merge(unravel(v)), x), y))(vec)

    return _jit(net, run)


_LAST: dict[str, tuple] = {}  # kind -> (key, value) of the last computation


def _memo(kind: str, key: tuple, compute):
    """The last result of ``kind`` if it was computed for the same objects (compared with
    ``is``: parameters and inputs are immutable arrays), so that the checkers of one network
    share one Jacobian and one loss pass."""
    hit = _LAST.get(kind)
    same = lambda a, b: a is b or (isinstance(a, str) and a == b)
    if hit is not None and len(hit[0]) == len(key) and all(map(same, hit[0], key)):
        return hit[1]
    out = compute()
    _LAST[kind] = (key, out)
    return out


def jacobian(f: Net | Apply, params: Params, batch: XY, *, param_set: str = "layers"
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (n, K), J (nK, P))`` on the host in float64: the exact Jacobian of all logits
    of the batched function w.r.t. the ``param_set`` leaves (flattened in tree order)."""
    net, x = _net(f), batch[0]
    key = (net.apply, params, x)
    logits, jac = _memo("jacobian", key, lambda: jax.device_get(
        _jacobian_fn(net)(params, jnp.asarray(x))))

    def select():
        _, keep = _selected(params, param_set)
        rows = [_host(j).reshape(j.shape[0], -1) for j, k in zip(jax.tree.leaves(jac), keep)
                if k]
        m = int(np.size(logits))
        return _host(logits), (np.concatenate(rows, 1) if rows else np.zeros((m, 0)))

    return _memo("jacobian " + param_set, key, select)


def _selected(params: Params, param_set: str) -> tuple[list[Any], list[bool]]:
    """(selected leaves, keep flags over all leaves)."""
    leaves, treedef = jax.tree.flatten(params)
    keep = treedef.flatten_up_to(ntk_lib.param_mask(params, param_set))
    return [a for a, k in zip(leaves, keep) if k], keep


def _outputs(f: Net | Apply, params: Params, batch: XY, output: str, param_set: str,
             targets: ArrayLike | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(F (m,), J_out (m, P), Theta (m, m), Y (m,))`` of the NTK outputs ``output``, float64;
    ``Y`` is ``targets`` or the one-hot labels seen through the outputs."""
    if output not in ntk_lib.OUTPUTS:
        raise ValueError(f"output must be one of {ntk_lib.OUTPUTS}, got {output!r}")
    logits, jac = jacobian(f, params, batch, param_set=param_set)
    n, k = logits.shape
    y = np.asarray(batch[1])
    rows = {"all": lambda a: a, "sum": lambda a: a.reshape(n, k, *a.shape[1:]).sum(1),
            "label": lambda a: a.reshape(n, k, *a.shape[1:])[np.arange(n), y]}[output]
    if targets is None:
        targets = rows(np.eye(k)[y].reshape(-1))
    targets = np.asarray(targets, np.float64).reshape(-1)
    m = n * k if output == "all" else n
    if targets.shape != (m,):
        raise ValueError(f"targets must have {m} entries (one per output), got {targets.size}")
    j = rows(jac)
    gram = _memo("gram", (jac, output), lambda: j @ j.T)
    return rows(logits.reshape(-1)), j, gram, targets


def ntk_matrix(f: Net | Apply, params: Params, batch: XY, *, output: str = "all",
               param_set: str = "layers") -> np.ndarray:
    """The exact empirical NTK :math:`C J J^\\top C^\\top` (float64 numpy) of ``output`` over
    ``param_set``, from the Jacobian of the batched function (``jax.jacrev``)."""
    return _outputs(f, params, batch, output, param_set)[2]


# ----------------------------------------------------------------------------- (i) gradients

class GradNormCheck(NamedTuple):
    """:func:`check_grad_norm`: values and the bounds of statement (i) on the gradient norm."""

    grad_norm: float  # ||g||_2, global
    official: float  # sum_l ||g_l||_2, the official GradNorm
    identity: Bound  # ||g||^2 == u^T Theta u / n^2
    lower: Bound  # sqrt(lam_min) ||u|| / n <= ||g||
    upper: Bound  # ||g|| <= sqrt(lam_max) ||u|| / n
    trace: Bound  # ||g|| <= sqrt(tr Theta) ||u|| / n
    centred: Bound  # CE: ||g|| <= sqrt(lam_max(P Theta P)) ||u|| / n
    cross_entropy: Bound  # CE: ||g|| <= sqrt(2) M_s, M_s = sqrt(tr Theta / n)
    official_lower: Bound  # ||g|| <= sum_l ||g_l||
    official_upper: Bound  # sum_l ||g_l|| <= sqrt(L) ||g||
    official_ntk: Bound  # sum_l ||g_l|| <= sqrt(L lam_max) ||u|| / n


def _loss_pass(f: Net | Apply, params: Params, batch: XY, param_set: str, loss: Loss | None,
               hvp: bool = False) -> tuple[dict[str, Any], int, Spectrum]:
    """The loss quantities (autodiff) and the Jacobian-based ones: Theta, J theta, J g. A pass
    with ``hvp`` (GraSP) also serves the checkers that do not need H g."""
    net, x, y = _net(f), batch[0], batch[1]
    hvp = hvp or not net.compiled  # one compilation serves every checker of a jit-compiled net
    key = (net.apply, params, x, y, param_set, loss)
    compute = lambda h: lambda: jax.device_get(_grads_fn(net, param_set, loss, h)(
        params, *_xy(batch)))
    r = _memo("grads", key, compute(hvp))
    if hvp and "hg" not in r:
        _LAST.pop("grads")
        r = _memo("grads", key, compute(True))
    r = dict(r)
    r["logits"], jac = jacobian(f, params, batch, param_set=param_set)
    r["gram"] = _memo("gram", (jac, "all"), lambda: jac @ jac.T)
    r["jtheta"] = jac @ np.concatenate([_host(a).reshape(-1) for a in r["theta"]])
    r["jg"] = jac @ np.concatenate([_host(a).reshape(-1) for a in r["g"]])
    return r, int(np.shape(x)[0]), spectrum(r["gram"])


def check_grad_norm(f: Net | Apply, params: Params, batch: XY, *, loss: Loss | None = None,
                    param_set: str = "kernels") -> GradNormCheck:
    """Statement (i) for GradNorm (module doc). ``loss(logits, y) -> scalar`` defaults to mean
    cross-entropy; the cross-entropy rows are skipped (NaN) for another loss.

    ``f`` is a :class:`jhnas.net.Net` or a plain ``apply(params, x)``, ``batch`` a pair
    ``(x (n, ...), y (n,))`` of inputs and int labels; run it in float64 (inside
    ``jax.enable_x64(True)``, with :func:`as_float64` parameters and inputs).

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from jhnas.net import from_flax
      >>> with jax.enable_x64(True):
      ...     net = from_flax(nn.Sequential([nn.Dense(6), nn.tanh, nn.Dense(3)]))
      ...     x = jnp.linspace(-1.0, 1.0, 20, dtype=jnp.float64).reshape(4, 5)
      ...     params = as_float64(net.init(jax.random.key(0), x))
      ...     check = check_grad_norm(net, params, (x, jnp.array([0, 1, 2, 0])))
      >>> holds(check), [b.name for b in bounds(check)][:4]
      (True, ['identity', 'lower', 'upper', 'trace'])
    """
    r, n, sp = _loss_pass(f, params, batch, param_set, loss)
    u, g = _host(r["u"]), r["g"]
    gn, nu = _norm(g), float(np.linalg.norm(u))
    norms = [math.sqrt(float(np.sum(_host(a) ** 2))) for a in g]
    off, nl = float(sum(norms)), len(norms)
    lam_min, lam_max = max(sp.lam_min, 0.0), max(sp.lam_max, 0.0)
    gram = _host(r["gram"])
    if loss is None:
        k = r["logits"].shape[1]
        proj = np.kron(np.eye(n), np.eye(k) - np.ones((k, k)) / k)
        lam_c = max(float(np.linalg.eigvalsh(proj @ gram @ proj)[-1]), 0.0)
        centred = bound("centred", gn, math.sqrt(lam_c) * nu / n)
        ce = bound("cross_entropy", gn, math.sqrt(2.0 * max(sp.trace, 0.0) / n))
    else:
        centred, ce = _skipped("centred", _NOT_CE), _skipped("cross_entropy", _NOT_CE)
    return GradNormCheck(
        gn, off,
        bound("identity", gn ** 2, float(u @ gram @ u) / n ** 2, "==", lam_max * nu ** 2 / n ** 2),
        bound("lower", math.sqrt(lam_min) * nu / n, gn),
        bound("upper", gn, math.sqrt(lam_max) * nu / n),
        bound("trace", gn, math.sqrt(max(sp.trace, 0.0)) * nu / n),
        centred, ce,
        bound("official_lower", gn, off),
        bound("official_upper", off, math.sqrt(nl) * gn),
        bound("official_ntk", off, math.sqrt(nl * lam_max) * nu / n))


class SnipCheck(NamedTuple):
    """:func:`check_snip`: SNIP and its bounds (statement (i))."""

    snip: float  # sum |theta * g|
    inner: Bound  # |<theta, g>| <= SNIP
    inner_identity: Bound  # <theta, g> == (J theta)^T u / n
    cauchy_schwarz: Bound  # SNIP <= ||theta|| ||g||
    ntk: Bound  # SNIP <= ||theta|| sqrt(lam_max) ||u|| / n
    cross_entropy: Bound  # CE: SNIP <= sqrt(2) ||theta|| M_s


def check_snip(f: Net | Apply, params: Params, batch: XY, *, loss: Loss | None = None,
               param_set: str = "kernels") -> SnipCheck:
    """Statement (i) for SNIP (module doc)."""
    r, n, sp = _loss_pass(f, params, batch, param_set, loss)
    u, g, th = _host(r["u"]), r["g"], r["theta"]
    snip = sum(float(np.sum(np.abs(_host(a) * _host(b)))) for a, b in zip(th, g))
    inner, tn, gn, nu = _dot(th, g), _norm(th), _norm(g), float(np.linalg.norm(u))
    ce = (bound("cross_entropy", snip, math.sqrt(2.0) * tn * math.sqrt(max(sp.trace, 0.0) / n))
          if loss is None else _skipped("cross_entropy", _NOT_CE))
    return SnipCheck(snip, bound("inner", abs(inner), snip),
                     bound("inner_identity", inner, float(_host(r["jtheta"]) @ u) / n, "==",
                           tn * math.sqrt(max(sp.lam_max, 0.0)) * nu / n),
                     bound("cauchy_schwarz", snip, tn * gn),
                     bound("ntk", snip, tn * math.sqrt(max(sp.lam_max, 0.0)) * nu / n), ce)


class GraspCheck(NamedTuple):
    """:func:`check_grasp`: GraSP, its Gauss-Newton part and their bounds (statement (i))."""

    grasp: float  # -theta^T H g
    grasp_gn: float  # -(J theta)^T S (J g)
    hessian_norm: float  # ||H||_2 (NaN if not computed)
    jg_identity: Bound  # ||J g|| == ||Theta u|| / n
    hvp: Bound  # |GraSP| <= ||theta|| ||H g||
    hessian: Bound  # |GraSP| <= ||theta|| ||H||_2 ||g||
    hessian_ntk: Bound  # |GraSP| <= ||theta|| ||H||_2 sqrt(lam_max) ||u|| / n
    gauss_newton: Bound  # |GraSP_GN| <= ||S|| ||J theta|| ||J g||
    gauss_newton_ntk: Bound  # |GraSP_GN| <= ||S|| lam_max^1.5 ||theta|| ||u|| / n
    cross_entropy: Bound  # CE: |GraSP_GN| <= lam_max^1.5 ||theta|| / (sqrt(2) n^1.5)


def check_grasp(f: Net | Apply, params: Params, batch: XY, *, loss: Loss | None = None,
                param_set: str = "kernels", hessian_max: int = 1500) -> GraspCheck:
    """Statement (i) for GraSP (module doc). The dense Hessian :math:`\\|H\\|_2` (P Hessian-vector
    products, P x P memory) is computed only for P <= ``hessian_max`` parameters; otherwise its
    rows are skipped (NaN)."""
    r, n, sp = _loss_pass(f, params, batch, param_set, loss, hvp=True)
    u, g, th, hg = _host(r["u"]), r["g"], r["theta"], r["hg"]
    jth, jg, s = _host(r["jtheta"]), _host(r["jg"]), _host(r["s"])
    gram = _host(r["gram"])
    grasp = -_dot(th, hg)
    grasp_gn = -float(jth @ s @ jg)
    tn, gn, nu = _norm(th), _norm(g), float(np.linalg.norm(u))
    lam_max = max(sp.lam_max, 0.0)
    s_norm = float(np.max(np.abs(np.linalg.eigvalsh((s + s.T) / 2))))
    p = sum(int(np.size(a)) for a in th)
    if p <= hessian_max:
        x, y = _xy(batch)
        h = _host(_hessian_fn(_net(f), param_set, loss)(params, x, y))
        h_norm = float(np.max(np.abs(np.linalg.eigvalsh((h + h.T) / 2))))
        hess = bound("hessian", abs(grasp), tn * h_norm * gn)
        hess_ntk = bound("hessian_ntk", abs(grasp), tn * h_norm * math.sqrt(lam_max) * nu / n)
    else:
        why = f"{p} parameters, more than hessian_max={hessian_max}"
        h_norm, hess, hess_ntk = math.nan, _skipped("hessian", why), _skipped("hessian_ntk", why)
    ce = (bound("cross_entropy", abs(grasp_gn), lam_max ** 1.5 * tn / (math.sqrt(2.0) * n ** 1.5))
          if loss is None else _skipped("cross_entropy", _NOT_CE))
    return GraspCheck(
        grasp, grasp_gn, h_norm,
        bound("jg_identity", float(np.linalg.norm(jg)), float(np.linalg.norm(gram @ u)) / n, "==",
              lam_max * nu / n),
        bound("hvp", abs(grasp), tn * _norm(hg)), hess, hess_ntk,
        bound("gauss_newton", abs(grasp_gn), s_norm * float(np.linalg.norm(jth))
              * float(np.linalg.norm(jg))),
        bound("gauss_newton_ntk", abs(grasp_gn), s_norm * lam_max ** 1.5 * tn * nu / n), ce)


# ----------------------------------------------------------------------------- (ii) training

def linearized_residuals(gram: ArrayLike, r0: ArrayLike, eta: float, n: int, steps: int
                         ) -> np.ndarray:
    """:math:`r_t = (I - \\eta\\Theta/n)^t r_0` for t = 0..steps, (steps + 1, m) float64, by the
    eigen-decomposition of the Gram."""
    sp = spectrum(gram)
    c = sp.eigenvectors.T @ np.asarray(r0, np.float64)
    rho = 1.0 - eta * sp.eigenvalues / n
    t = np.arange(steps + 1)[:, None]
    return (rho[None, :] ** t * c[None, :]) @ sp.eigenvectors.T


class Trajectory(NamedTuple):
    """Gradient descent on the MSE, t = 0..steps: ``loss`` (steps+1,) ``= ||r_t||^2 / (2n)``,
    ``residual`` (steps+1, m) ``= F_t - Y``, ``distance`` (steps+1,) ``= ||theta_t - theta_0||``."""

    loss: np.ndarray
    residual: np.ndarray
    distance: np.ndarray


@functools.lru_cache(maxsize=16)
def _gd_fn(net: Net, param_set: str, output: str, steps: int, linearized: bool):
    def run(params, x, y, targets, eta):
        sel, merge = ntk_lib.split_params(params, ntk_lib.param_mask(params, param_set))
        model = lambda s: ntk_lib.select_outputs(net.apply(merge(s), x), y, output)
        if targets is None:  # the one-hot labels seen through the outputs
            k = jax.eval_shape(net.apply, params, x).shape[1]
            targets = ntk_lib.select_outputs(jax.nn.one_hot(y, k, dtype=eta.dtype), y, output)
        if linearized:
            f0, lin = jax.linearize(model, sel)
            model = lambda s: f0 + lin(jax.tree.map(jnp.subtract, s, sel))
        n = x.shape[0]

        def stats(s):
            r = model(s) - targets
            d = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(s, sel)))
            return jnp.sum(r ** 2) / (2 * n), r, d

        def step(s, _):
            out = stats(s)
            grad = jax.grad(lambda s: jnp.sum((model(s) - targets) ** 2) / (2 * n))(s)
            return [a - eta * b for a, b in zip(s, grad)], out

        last, outs = lax.scan(step, list(sel), None, length=steps)
        final = stats(last)
        return tuple(jnp.concatenate([o, f[None]]) for o, f in zip(outs, final))

    return _jit(net, run)


def gd_trajectory(f: Net | Apply, params: Params, batch: XY, *, eta: float, steps: int,
                  output: str = "all", param_set: str = "layers",
                  targets: ArrayLike | None = None, linearized: bool = False) -> Trajectory:
    """``steps`` of full-batch gradient descent with step ``eta`` on :math:`\\|F - Y\\|^2 / (2n)`
    over ``param_set`` (the rest fixed), for the network itself or (``linearized``) its
    linearisation at ``params`` (``jax.linearize``: no Jacobian is formed)."""
    x, y = _xy(batch)
    if targets is not None:
        targets = jnp.asarray(targets, jnp.result_type(float)).reshape(-1)
    loss, res, dist = _gd_fn(_net(f), param_set, output, int(steps), bool(linearized))(
        params, x, y, targets, jnp.asarray(eta, jnp.result_type(float)))
    return Trajectory(_host(loss), _host(res), _host(dist))


class LinearTrainingCheck(NamedTuple):
    """:func:`check_linear_training`: statement (ii). ``loss`` and ``formula`` run over
    t = 0..steps, the inequalities over t = 1..steps (at t = 0 they are equalities)."""

    eta: float
    loss: np.ndarray  # L_t from the formula, t = 0..steps
    formula: Bound  # L_t (GD on the linearised model) == L_t (formula)
    lower: Bound  # min_j rho_j^2t L_0 <= L_t
    upper: Bound  # L_t <= max_j rho_j^2t L_0
    lower_M: Bound  # (1 - eta m M^2 / n)_+^2t L_0 <= L_t     (eta <= n / lam_max)
    upper_M: Bound  # L_t <= (1 - eta M^2 / (n kappa))^2t L_0   (eta <= n / lam_max)
    upper_exp: Bound  # L_t <= exp(-2 t eta M^2 / (n kappa)) L_0 (eta <= n / lam_max)


def check_linear_training(f: Net | Apply, params: Params, batch: XY, *, eta: float | None = None,
                          steps: int = 20, output: str = "all", param_set: str = "layers",
                          targets: ArrayLike | None = None,
                          simulate: str | None = "jacobian") -> LinearTrainingCheck:
    """Statement (ii) (module doc). ``eta`` defaults to :math:`n / (2\\lambda_{\\max})`; the
    M rows need :math:`\\eta \\le n/\\lambda_{\\max}` and are skipped otherwise.

    ``simulate`` runs gradient descent on the linearised model for the ``formula`` row:
    ``"jacobian"`` (default) iterates :math:`\\delta \\leftarrow \\delta - \\eta J^\\top
    (F_0 + J\\delta - Y)/n` with the explicit Jacobian; ``"linearize"`` differentiates the
    network's ``jax.linearize`` (:func:`gd_trajectory`, compiles one more function); ``None``
    skips the row."""
    if simulate not in ("jacobian", "linearize", None):
        raise ValueError(f"simulate must be 'jacobian', 'linearize' or None, got {simulate!r}")
    f0, jac, gram, targets = _outputs(f, params, batch, output, param_set, targets)
    sp = spectrum(gram)
    n = int(np.shape(batch[1])[0])
    r0 = f0 - targets
    eta = float(n / (2 * sp.lam_max) if eta is None else eta)
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    loss = np.sum(linearized_residuals(gram, r0, eta, n, steps) ** 2, 1) / (2 * n)
    rho2 = (1.0 - eta * sp.eigenvalues / n) ** 2
    l0, lt, t = loss[0], loss[1:], np.arange(1, steps + 1)
    if simulate == "linearize":
        traj = gd_trajectory(f, params, batch, eta=eta, steps=steps, output=output,
                             param_set=param_set, targets=targets, linearized=True)
        formula = bound("formula", traj.loss, loss, "==", l0)
    elif simulate == "jacobian":
        delta, sim = np.zeros(jac.shape[1]), []
        for _ in range(steps + 1):
            r = r0 + jac @ delta
            sim.append(float(r @ r) / (2 * n))
            delta = delta - eta * (jac.T @ r) / n
        formula = bound("formula", np.array(sim), loss, "==", l0)
    else:
        formula = _skipped("formula", "simulate=None", "==")
    if eta <= n / sp.lam_max * (1 + 1e-12) and sp.lam_min > 0:
        m2, m, kap = sp.M ** 2, sp.size, sp.kappa
        lower_m = bound("lower_M", max(1.0 - eta * m * m2 / n, 0.0) ** (2 * t) * l0, lt)
        upper_m = bound("upper_M", lt, (1.0 - eta * m2 / (n * kap)) ** (2 * t) * l0)
        upper_e = bound("upper_exp", lt, np.exp(-2 * t * eta * m2 / (n * kap)) * l0)
    else:
        why = ("needs eta <= n / lambda_max" if sp.lam_min > 0 else _SINGULAR)
        lower_m, upper_m, upper_e = (_skipped(k, why) for k in ("lower_M", "upper_M", "upper_exp"))
    return LinearTrainingCheck(eta, loss, formula,
                               bound("lower", rho2.min() ** t * l0, lt),
                               bound("upper", lt, rho2.max() ** t * l0),
                               lower_m, upper_m, upper_e)


# ----------------------------------------------------------------------------- (iii) generalization

class GeneralizationCheck(NamedTuple):
    """:func:`check_generalization`: statement (iii)."""

    term: float  # G = sqrt(r^T Theta^-1 r tr Theta) / n
    distance: float  # B = sqrt(r^T Theta^-1 r)
    solve_identity: Bound  # r^T Theta^-1 r (eigen) == r . solve(Theta, r)
    quad_lower: Bound  # ||r||^2 / lam_max <= r^T Theta^-1 r
    quad_upper: Bound  # r^T Theta^-1 r <= ||r||^2 / lam_min
    term_lower: Bound  # ||r|| sqrt(tr / lam_max) / n <= G
    term_upper: Bound  # G <= ||r|| sqrt(tr / lam_min) / n
    term_lower_kappa: Bound  # ||r|| sqrt(1 + (m - 1) / kappa) / n <= G
    term_upper_kappa: Bound  # G <= ||r|| sqrt(m kappa) / n
    distance_lower_M: Bound  # ||r|| / (sqrt(m) M) <= B
    distance_upper_M: Bound  # B <= ||r|| sqrt(kappa) / M
    distance_kappa_over_M: Bound  # B <= ||r|| kappa / M


def _quadratic(sp: Spectrum, r: np.ndarray) -> float:
    c = sp.eigenvectors.T @ r
    return float(np.sum(c ** 2 / sp.eigenvalues))


def check_generalization(f: Net | Apply, params: Params, batch: XY, *, output: str = "label",
                         param_set: str = "layers", targets: ArrayLike | None = None
                         ) -> GeneralizationCheck:
    """Statement (iii) (module doc) with :math:`r = F(\\theta_0) - Y`. Needs :math:`\\Theta \\succ
    0`: with a singular NTK (``lam_min <= 0``) the term and the distance are +inf and every row is
    skipped."""
    f0, _, gram, targets = _outputs(f, params, batch, output, param_set, targets)
    sp = spectrum(gram)
    if not sp.lam_min > 0:
        return GeneralizationCheck(math.inf, math.inf, *(
            _skipped(k, _SINGULAR, "==" if k == "solve_identity" else "<=")
            for k in GeneralizationCheck._fields[2:]))
    r = f0 - targets
    n, m = int(np.shape(batch[1])[0]), sp.size
    q, rr, tr = _quadratic(sp, r), float(r @ r), sp.trace
    G, B, nr = math.sqrt(q * tr) / n, math.sqrt(q), math.sqrt(rr)
    return GeneralizationCheck(
        G, B,
        bound("solve_identity", float(r @ np.linalg.solve(gram, r)), q, "=="),
        bound("quad_lower", rr / sp.lam_max, q), bound("quad_upper", q, rr / sp.lam_min),
        bound("term_lower", nr * math.sqrt(tr / sp.lam_max) / n, G),
        bound("term_upper", G, nr * math.sqrt(tr / sp.lam_min) / n),
        bound("term_lower_kappa", nr * math.sqrt(1 + (m - 1) / sp.kappa) / n, G),
        bound("term_upper_kappa", G, nr * math.sqrt(m * sp.kappa) / n),
        bound("distance_lower_M", nr / (math.sqrt(m) * sp.M), B),
        bound("distance_upper_M", B, nr * math.sqrt(sp.kappa) / sp.M),
        bound("distance_kappa_over_M", B, nr * sp.kappa / sp.M))


# ----------------------------------------------------------------------------- (iv) HNAS

class ObjectiveTerms(NamedTuple):
    """The HNAS objective of one NTK: ``M`` = sqrt(tr / m) (``ntk_trace``), ``kappa`` the
    guarded condition number (``ntk_cond``, :func:`jhnas.ntk.condition_number`), ``mu = 10^c``,
    ``nu``, ``trainability = mu |M^2 - nu|``, ``generalization = kappa / (M + 1e-6)`` and
    ``objective`` their sum (equal to :func:`jhnas.hnas.objective`)."""

    M: float
    kappa: float
    mu: float
    nu: float
    trainability: float
    generalization: float
    objective: float


def objective_terms(gram: ArrayLike, t: float, c: float, s: float = 5e3,
                    nu_scale: str = "linear") -> ObjectiveTerms:
    """:class:`ObjectiveTerms` of a Gram (the label NTK for HNAS's M and kappa);
    :math:`\\sqrt\\nu = t s` (``"linear"``) or :math:`s^t` (``"log"``), see :mod:`jhnas.hnas`.
    M and kappa are :func:`jhnas.ntk.trace_norm` and the guarded
    :func:`jhnas.ntk.condition_number`; raises ``ValueError`` for another ``nu_scale``.

    Examples:
      >>> terms = objective_terms([[4.0, 0.0], [0.0, 4.0]], t=0.5, c=0.0, s=2.0)
      >>> terms.M, terms.kappa, terms.nu, round(terms.objective, 6)   # |2^2 - 1| + 1 / (2 + 1e-6)
      (2.0, 1.0, 1.0, 3.5)
    """
    if nu_scale not in hnas.NU_SCALES:
        raise ValueError(f"nu_scale must be one of {hnas.NU_SCALES}, got {nu_scale!r}")
    m_val, kappa = ntk_lib.trace_norm(gram), ntk_lib.condition_number(gram)
    mu = 10.0 ** c
    nu = (t * s if nu_scale == "linear" else float(s) ** t) ** 2
    train, gen = mu * abs(m_val ** 2 - nu), kappa / (m_val + 1e-6)
    return ObjectiveTerms(m_val, kappa, mu, nu, train, gen, train + gen)


class ObjectiveCheck(NamedTuple):
    """:func:`check_objective`: statement (iv)."""

    terms: ObjectiveTerms
    identity: Bound  # objective_terms(...).objective == jhnas.hnas.objective(M, kappa, t, c, s)
    mean_below_max: Bound  # M^2 <= lam_max
    max_below_trace: Bound  # lam_max <= m M^2
    distance_sqrt: Bound  # B / ||r|| <= sqrt(kappa) / M
    distance_kappa_over_M: Bound  # B / ||r|| <= kappa / M  (unguarded kappa)
    rate_M: Bound  # 1 - eta lam_min / n <= 1 - eta M^2 / (n kappa), eta = n / lam_max


def check_objective(f: Net | Apply, params: Params, batch: XY, *, t: float = 0.5, c: float = -2.0,
                    s: float = 5e3, nu_scale: str = "linear", output: str = "label",
                    param_set: str = "layers", targets: ArrayLike | None = None
                    ) -> ObjectiveCheck:
    """Statement (iv) (module doc): the objective's terms for this network and the inequalities
    of (ii) and (iii) that motivate them, on the NTK of ``output`` (HNAS: ``"label"``)."""
    f0, _, gram, targets = _outputs(f, params, batch, output, param_set, targets)
    sp = spectrum(gram)
    terms = objective_terms(gram, t, c, s, nu_scale)
    ref = float(hnas.objective(np.array([terms.M]), np.array([terms.kappa]), t, c, s, nu_scale)[0])
    r = f0 - targets
    n = int(np.shape(batch[1])[0])
    eta = n / sp.lam_max
    if sp.lam_min > 0:
        ratio = math.sqrt(_quadratic(sp, r)) / float(np.linalg.norm(r))
        rows = (bound("distance_sqrt", ratio, math.sqrt(sp.kappa) / sp.M),
                bound("distance_kappa_over_M", ratio, sp.kappa / sp.M),
                bound("rate_M", 1 - eta * sp.lam_min / n, 1 - eta * sp.M ** 2 / (n * sp.kappa)))
    else:  # singular NTK: no interpolant, kappa infinite
        rows = tuple(_skipped(k, _SINGULAR)
                     for k in ("distance_sqrt", "distance_kappa_over_M", "rate_M"))
    return ObjectiveCheck(
        terms, bound("identity", terms.objective, ref, "==", abs(ref)),
        bound("mean_below_max", sp.M ** 2, sp.lam_max),
        bound("max_below_trace", sp.lam_max, sp.size * sp.M ** 2), *rows)


# ----------------------------------------------------------------------------- all at once

def check_all(f: Net | Apply, params: Params, batch: XY, *, loss: Loss | None = None,
              hessian_max: int = 1500, steps: int = 20, t: float = 0.5, c: float = -2.0,
              s: float = 5e3) -> dict[str, NamedTuple]:
    """Every checker with its defaults: ``{"grad_norm", "snip", "grasp", "linear_training",
    "generalization", "objective"} -> result``."""
    grasp = check_grasp(f, params, batch, loss=loss, hessian_max=hessian_max)  # first: H g
    return {"grad_norm": check_grad_norm(f, params, batch, loss=loss),
            "snip": check_snip(f, params, batch, loss=loss),
            "grasp": grasp,
            "linear_training": check_linear_training(f, params, batch, steps=steps),
            "generalization": check_generalization(f, params, batch),
            "objective": check_objective(f, params, batch, t=t, c=c, s=s)}


def table(checks: Mapping[str, tuple[Any, ...]], tol: float = 1e-9) -> list[dict[str, Any]]:
    """Rows ``{statement, name, relation, lhs, rhs, slack, rel_slack, status}`` of
    :func:`check_all`'s result (array bounds at their worst step); status is ``ok``,
    ``VIOLATED`` or ``skipped: <why>``."""
    rows = []
    for stmt, check in checks.items():
        for b in bounds(check):
            w = worst(b)
            if math.isnan(w.lhs) and math.isnan(w.rhs):
                status = f"skipped: {b.note}" if b.note else "skipped"
            else:
                status = "ok" if holds(b, tol) else "VIOLATED"
            rows.append({"statement": stmt, "name": w.name, "relation": w.relation,
                         "lhs": w.lhs, "rhs": w.rhs, "slack": w.slack,
                         "rel_slack": w.rel_slack, "status": status})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`table` rows as fixed-width text."""
    head = (f"{'statement':16s} {'bound':22s} {'rel':3s} {'lhs':>12s} {'rhs':>12s} "
            f"{'slack':>12s} {'rel slack':>10s}  status")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['statement']:16s} {r['name']:22s} {r['relation']:3s} {r['lhs']:12.5g} "
                     f"{r['rhs']:12.5g} {r['slack']:12.4g} {r['rel_slack']:10.3g}  {r['status']}")
    return "\n".join(lines)
