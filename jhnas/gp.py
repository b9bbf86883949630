r"""Exact Gaussian-process regression and Bayesian-optimisation acquisitions in pure JAX.

Built for small problems: the Bayesian optimisation of HNAS over a low-dimensional box (the two
hyper-parameters :math:`(t, c)`, at most a few dozen observations).

**Model.** Inputs are mapped to the unit box, :math:`u = (x - l) / (h - l)` with ``bounds[:, 0] =
l`` and ``bounds[:, 1] = h``; targets are standardised, :math:`\tilde y = (y - \bar y) / s_y`
(:math:`s_y` the population standard deviation, replaced by 1 when it is zero: one point or
constant targets). On :math:`(u, \tilde y)` the GP has zero mean (so a constant mean
:math:`\bar y` in the original units) and the kernel

.. math:: k(u, u') = a \, \kappa(r), \qquad r = \Big\| \frac{u - u'}{\ell} \Big\|_2,

with amplitude (signal variance) :math:`a`, ARD lengthscales :math:`\ell` (d,) on the unit box and
:math:`\kappa` one of (:data:`KERNELS`)

* ``"matern52"`` (default): :math:`(1 + \sqrt5 r + \tfrac53 r^2) e^{-\sqrt5 r}`,
* ``"matern32"``: :math:`(1 + \sqrt3 r) e^{-\sqrt3 r}`,
* ``"rbf"``: :math:`e^{-r^2/2}`.

Observation noise is the fixed ``alpha`` added to the diagonal (as scikit-learn's
``GaussianProcessRegressor(alpha=...)``); if the Cholesky factorisation of :math:`K + \alpha I`
fails (NaN), the smallest jitter of :math:`10^{-10} \bar a, 10^{-9} \bar a, \dots, 10^{-1} \bar a`
(:math:`\bar a` the mean prior variance) that lets it succeed is added to the diagonal.
With ``K = L L^T`` and :math:`\boldsymbol\alpha = K^{-1} \tilde y`, the predictive distribution of
the latent function at :math:`u_*` is, back in the units of y,

.. math:: \mu_* = \bar y + s_y\, k_*^\top \boldsymbol\alpha, \qquad
          \sigma_*^2 = s_y^2 \,\big(a - \|L^{-1} k_*\|^2\big)

(no observation noise in :math:`\sigma_*^2`, as in scikit-learn). With fixed hyper-parameters this
is exactly scikit-learn's ``GaussianProcessRegressor(ConstantKernel(a) * Matern(l * (h - l)),
alpha=alpha, normalize_y=True, optimizer=None)`` on the raw inputs.

**Hyper-parameters** :math:`\theta = (\log a, \log \ell)` (:class:`GPParams`) maximise the log
marginal likelihood of the standardised targets,

.. math:: \log p(\tilde y) = -\tfrac12 \tilde y^\top \boldsymbol\alpha - \sum_i \log L_{ii}
          - \tfrac n2 \log 2\pi,

by L-BFGS (optax) from ``restarts`` starts run in parallel (``vmap``): the first at
:math:`a = 1, \ell = 1`, the others uniform in log space inside the bounds. The bounds (default
:math:`[10^{-3}, 10^3]` for both) are enforced by the reparametrisation
:math:`\log\theta = m + w \tanh v` of an unconstrained :math:`v`.

**Acquisitions** are for *maximisation* of y: :func:`expected_improvement`,
:func:`log_expected_improvement` and :func:`upper_confidence_bound` (:math:`\mu + \beta\sigma`:
``bayes_opt``'s ``kappa``, 2.576 in the official HNAS code, is ``beta``).
:func:`maximize_acquisition` maximises one over the box.

Everything runs in float64: the public functions work inside ``jax.enable_x64(True)`` whatever the
caller's setting, and return float64 arrays (arithmetic on them outside that context is done in
float32 with a warning; convert with ``np.asarray`` or work inside ``jax.enable_x64(True)``).
Randomness comes only from the ``key`` arguments. The numerics are jitted, and :func:`fit` and
:func:`maximize_acquisition` pad the data to 8, 16, 32, ... points: each compiles once per padded
size, dimension, kernel and static option, so a Bayesian-optimisation loop that adds one
observation at a time recompiles only at powers of two.

Example::

  >>> import jax, jax.numpy as jnp
  >>> from jhnas import gp
  >>> bounds = jnp.array([[0.0, 10.0], [-1.0, 1.0]])
  >>> x = jax.random.uniform(jax.random.key(0), (12, 2), minval=bounds[:, 0], maxval=bounds[:, 1])
  >>> y = jnp.sin(x[:, 0] / 3) - x[:, 1] ** 2
  >>> state = gp.fit(jax.random.key(1), x, y, bounds)
  >>> mean, var = gp.predict(state, jnp.array([[5.0, 0.0], [9.0, 0.5]]))
  >>> mean.shape, var.shape, mean.dtype
  ((2,), (2,), dtype('float64'))

The next point of a Bayesian optimisation is then
``gp.maximize_acquisition(key, state, functools.partial(gp.upper_confidence_bound, beta=2.576))``,
a float64 (d,) array inside the box.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.scipy.special import erfcx, ndtr
from numpy.typing import ArrayLike

KERNELS = ("matern52", "matern32", "rbf")

_LOG_2PI = math.log(2.0 * math.pi)
_JITTER_LADDER = (0.0,) + tuple(10.0 ** e for e in range(-10, 0))  # x mean prior variance
_GRAD_TOL = 1e-9  # fit stops a start once every gradient component is below this
_LML_TOL = 1e-9  # starts whose likelihoods differ by less (relative) count as tied


class GPParams(NamedTuple):
    """Kernel hyper-parameters, in log space: ``log_amplitude`` () and ``log_lengthscale`` (d,).

    The lengthscales are on the unit box (divide a lengthscale in original units by the box width).
    """
    log_amplitude: jax.Array
    log_lengthscale: jax.Array

    @classmethod
    def create(cls, amplitude: ArrayLike, lengthscale: ArrayLike, dim: int | None = None
               ) -> "GPParams":
        """From an amplitude (signal variance) and lengthscale(s); a scalar lengthscale is
        broadcast to ``dim`` dimensions."""
        with jax.enable_x64(True):
            ls = jnp.asarray(lengthscale, jnp.float64)
            if dim is not None:
                ls = jnp.broadcast_to(ls, (dim,))
            return cls(jnp.log(jnp.asarray(amplitude, jnp.float64)), jnp.log(ls))

    @property
    def amplitude(self) -> jax.Array:
        with jax.enable_x64(True):
            return jnp.exp(self.log_amplitude)

    @property
    def lengthscale(self) -> jax.Array:
        with jax.enable_x64(True):
            return jnp.exp(self.log_lengthscale)


class GPState(NamedTuple):
    """Everything :func:`predict` needs (n observations in d dimensions).

    x: (n, d) training inputs on the unit box. y: (n,) training targets, standardised.
    y_mean, y_scale: () standardisation constants (y = y_mean + y_scale * y_standardised).
    y_best: () the largest observed target, original units (the incumbent for the acquisitions).
    params: :class:`GPParams`. chol: (n, n) lower Cholesky factor of K + (alpha + jitter) I.
    weights: (n,) :math:`(K + (\\alpha + \\text{jitter}) I)^{-1} \\tilde y`.
    log_marginal_likelihood: () of the standardised targets (scikit-learn's
    ``log_marginal_likelihood_value_`` with ``normalize_y=True``).
    bounds: (d, 2) the box, original units. alpha: () or (n,) observation noise; jitter: () the
    extra diagonal the factorisation needed. kernel: the kernel's name.

    The arrays are float64. ``kernel`` is a str, not an array: inside your own ``jax.jit``, close
    over a state rather than passing it as an argument.
    """
    x: jax.Array
    y: jax.Array
    y_mean: jax.Array
    y_scale: jax.Array
    y_best: jax.Array
    params: GPParams
    chol: jax.Array
    weights: jax.Array
    log_marginal_likelihood: jax.Array
    bounds: jax.Array
    alpha: jax.Array
    jitter: jax.Array
    kernel: str | None = "matern52"


# ----------------------------------------------------------------------------- kernels

def _kernel_id(kernel: str | None) -> int:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    return KERNELS.index(kernel)


def _matern52(r2):
    s = math.sqrt(5.0) * _safe_sqrt(r2)
    return (1.0 + s + s * s / 3.0) * jnp.exp(-s)


def _matern32(r2):
    s = math.sqrt(3.0) * _safe_sqrt(r2)
    return (1.0 + s) * jnp.exp(-s)


def _rbf(r2):
    return jnp.exp(-0.5 * r2)


def _safe_sqrt(r2):
    """sqrt with a zero (not NaN) gradient at 0."""
    positive = r2 > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, r2, 1.0)), 0.0)


def _gram(params, x1, x2, kernel_id):
    """Gram matrix (n1, n2) for the kernel KERNELS[kernel_id]. A Python int selects the kernel
    while tracing; a traced int selects it at run time (all kernels share one program)."""
    diff = (x1[:, None, :] - x2[None, :, :]) / jnp.exp(params.log_lengthscale)
    r2 = jnp.sum(diff * diff, axis=-1)
    kernels = (_matern52, _matern32, _rbf)
    if isinstance(kernel_id, int):
        return jnp.exp(params.log_amplitude) * kernels[kernel_id](r2)
    return jnp.exp(params.log_amplitude) * lax.switch(kernel_id, kernels, r2)


def kernel_matrix(params: GPParams, x1: ArrayLike, x2: ArrayLike, kernel: str = "matern52"
                  ) -> jax.Array:
    r"""Gram matrix :math:`k(x_1^{(i)}, x_2^{(j)})`, (n1, d) x (n2, d) -> (n1, n2), inputs as
    given (the model uses unit-box inputs). Differentiable everywhere, including at r = 0.
    Float64; raises ``ValueError`` for inputs of other shapes or an unknown ``kernel``.

    Examples:
      >>> params = GPParams.create(amplitude=2.0, lengthscale=0.5, dim=1)
      >>> k = kernel_matrix(params, [[0.0], [1.0]], [[0.0], [1.0]], kernel="rbf")
      >>> k.dtype, np.asarray(k).round(6)   # 2 exp(-r^2 / 2), r = 1 / 0.5 off the diagonal
      (dtype('float64'), array([[2.      , 0.270671],
             [0.270671, 2.      ]]))
    """
    kernel_id = _kernel_id(kernel)
    with jax.enable_x64(True):
        x1, x2 = jnp.asarray(x1, jnp.float64), jnp.asarray(x2, jnp.float64)
        if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
            raise ValueError(f"x1 and x2 must be (n1, d) and (n2, d), got {x1.shape}, {x2.shape}")
        return _gram(_as_params(params, x1.shape[1]), x1, x2, kernel_id)


# ----------------------------------------------------------------------------- likelihood

def _noisy_gram(params, x, alpha, kernel_id, mask=None):
    """K + diag(alpha) (n, n); with a boolean ``mask`` (n,) the rows and columns of the padding
    points (mask False) are those of the identity, which leaves the likelihood unchanged."""
    n = x.shape[0]
    k = _gram(params, x, x, kernel_id)
    k = k + jnp.diag(jnp.broadcast_to(alpha, (n,)))
    if mask is None:
        return k
    return jnp.where(mask[:, None] & mask[None, :], k, jnp.eye(n, dtype=k.dtype))


def _solve_lower(chol, b):
    """chol^-1 b for a lower-triangular chol (n, n) and b (n, m), by forward substitution in plain
    XLA ops. (On CPU, jax calls LAPACK's trsm for matrix right-hand sides, which for n >= 32 starts
    BLAS threads that stall for up to seconds a call on a busy machine; n is small here.)"""
    def row(i, x):
        return x.at[i].set((b[i] - chol[i] @ x) / chol[i, i])  # rows >= i of x are still 0

    return lax.fori_loop(0, chol.shape[0], row, jnp.zeros_like(b))


def _factor(k, on):
    """(chol, jitter): the Cholesky factor of k + jitter diag(on) for the smallest jitter of 0,
    1e-10 s, 1e-9 s, ..., 0.1 s (s the mean prior variance of the points where on = 1) that makes
    it finite (no NaN); 0.1 s if none does. Usually a single factorisation."""
    scale = jnp.maximum(jnp.sum(jnp.diag(k) * on) / jnp.sum(on), 1e-300)
    ladder = jnp.asarray(_JITTER_LADDER, k.dtype)

    def failed(carry):
        chol, _, i = carry
        return ~jnp.all(jnp.isfinite(chol)) & (i < len(_JITTER_LADDER) - 1)

    def escalate(carry):
        _, _, i = carry
        jitter = scale * ladder[i + 1]
        return jnp.linalg.cholesky(k + jnp.diag(jitter * on)), jitter, i + 1

    chol, jitter, _ = lax.while_loop(failed, escalate,
                                     (jnp.linalg.cholesky(k), jnp.zeros((), k.dtype), 0))
    return chol, jitter


def _solve(k, y, on):
    """(chol, jitter, weights, -y^T k^-1 y / 2 - log|k| / 2) with k jittered by :func:`_factor`."""
    chol, jitter = _factor(k, on)
    weights = jax.scipy.linalg.cho_solve((chol, True), y)
    return chol, jitter, weights, -0.5 * jnp.dot(y, weights) - jnp.sum(jnp.log(jnp.diag(chol)))


@jax.custom_vjp
def _fit_term(k, y, on):
    r""":math:`-\frac12 y^\top k^{-1} y - \frac12 \log|k|` (k jittered where it must be), with
    the closed-form gradient :math:`\frac12(w w^\top - k^{-1})` in k, :math:`w = k^{-1} y` (much
    cheaper to compile than differentiating through the Cholesky factorisation; the jitter is held
    constant)."""
    return _solve(k, y, on)[3]


def _fit_term_fwd(k, y, on):
    chol, _, weights, value = _solve(k, y, on)
    return value, (chol, weights, on)


def _fit_term_bwd(residuals, g):
    chol, weights, on = residuals
    chol_inv = _solve_lower(chol, jnp.eye(chol.shape[0], dtype=chol.dtype))
    k_inv = chol_inv.T @ chol_inv
    return g * 0.5 * (jnp.outer(weights, weights) - k_inv), -g * weights, jnp.zeros_like(on)


_fit_term.defvjp(_fit_term_fwd, _fit_term_bwd)


def _on(x, mask):
    """The mask as 0/1 weights (all ones without a mask)."""
    return jnp.ones(x.shape[0], x.dtype) if mask is None else mask.astype(x.dtype)


def _lml(params, x, y, alpha, kernel_id, mask=None):
    """Log marginal likelihood (), reverse-mode differentiable in params; padding points
    (``mask`` False, with y = 0) do not count."""
    on = _on(x, mask)
    k = _noisy_gram(params, x, alpha, kernel_id, mask)
    return _fit_term(k, y, on) - 0.5 * jnp.sum(on) * _LOG_2PI


_lml_jit = jax.jit(_lml)


def log_marginal_likelihood(params: GPParams, x: ArrayLike, y: ArrayLike,
                            kernel: str = "matern52", alpha: ArrayLike = 1e-6) -> jax.Array:
    r"""Log marginal likelihood (), :math:`-\frac12 y^\top (K+\alpha I)^{-1} y - \frac12
    \log|K + \alpha I| - \frac n2 \log 2\pi`, of targets y (n,) at inputs x (n, d).

    This is the raw GP formula: x and y are used as given (:func:`fit` maximises it on unit-box
    inputs and standardised targets, ``GPState.x`` and ``GPState.y``). Reverse-mode
    differentiable in ``params`` (the gradient is a closed-form custom VJP, so not forward-mode);
    take the gradient inside ``jax.enable_x64(True)``, since the backward pass runs after this
    function has left its own float64 context.
    """
    kernel_id = _kernel_id(kernel)
    with jax.enable_x64(True):
        x, y = _check_xy(x, y)
        params = _as_params(params, x.shape[1])
        return _lml_jit(params, x, y, _check_alpha(alpha, x.shape[0]), kernel_id)


# ----------------------------------------------------------------------------- validation

def _check_xy(x, y):
    x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be (n,) = ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("need at least one observation")
    return x, y


def _check_bounds(bounds, d):
    bounds = np.asarray(bounds, np.float64)
    if bounds.shape != (d, 2):
        raise ValueError(f"bounds must be (d, 2) = ({d}, 2) (lower, upper), got {bounds.shape}")
    if not np.all(bounds[:, 1] > bounds[:, 0]):
        raise ValueError(f"bounds need lower < upper in every dimension, got {bounds.tolist()}")
    return jnp.asarray(bounds)


def _check_alpha(alpha, n):
    alpha = jnp.asarray(alpha, jnp.float64)
    if alpha.shape not in ((), (n,)):
        raise ValueError(f"alpha must be a scalar or ({n},), got shape {alpha.shape}")
    return alpha


def _as_params(params, d):
    params = GPParams(jnp.asarray(params.log_amplitude, jnp.float64),
                      jnp.asarray(params.log_lengthscale, jnp.float64))
    if params.log_amplitude.shape != ():
        raise ValueError(f"log_amplitude must be a scalar, got shape {params.log_amplitude.shape}")
    if params.log_lengthscale.shape != (d,):
        raise ValueError(f"log_lengthscale must be ({d},) for {d}-dimensional inputs, "
                         f"got shape {params.log_lengthscale.shape}")
    return params


# ----------------------------------------------------------------------------- model

def _to_unit(x, bounds):
    return (x - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])


def _standardise(y, mask=None):
    """(y_standardised, mean, scale), scale = std(y) or 1 where std(y) == 0; with a boolean
    ``mask`` the statistics are over y[mask] and the other entries become 0."""
    w = jnp.ones_like(y) if mask is None else mask.astype(y.dtype)
    mean = jnp.sum(w * y) / jnp.sum(w)
    std = jnp.sqrt(jnp.sum(w * (y - mean) ** 2) / jnp.sum(w))
    scale = jnp.where(std > 0.0, std, 1.0)
    return w * (y - mean) / scale, mean, scale


def _condition(params, x, y, bounds, alpha, kernel_id, mask=None):
    """GPState (kernel None) for given hyper-parameters, x in the original box. With a ``mask``
    the padding points (mask False) are inert: identity block in the Cholesky factor, zero
    weight, not counted in the likelihood or the incumbent."""
    u = _to_unit(x, bounds)
    ys, mean, scale = _standardise(y, mask)
    on = _on(x, mask)
    chol, jitter, weights, value = _solve(_noisy_gram(params, u, alpha, kernel_id, mask), ys, on)
    y_best = jnp.max(jnp.where(on > 0, y, -jnp.inf))
    return GPState(u, ys, mean, scale, y_best, params, chol, weights,
                   value - 0.5 * jnp.sum(on) * _LOG_2PI, bounds, alpha, jitter, None)


_condition_jit = jax.jit(_condition)


def condition(params: GPParams, x: ArrayLike, y: ArrayLike, bounds: ArrayLike, *,
              kernel: str = "matern52", alpha: ArrayLike = 1e-6) -> GPState:
    """The GP posterior for GIVEN hyper-parameters (lengthscales on the unit box).

    x: (n, d) inputs in the original box, y: (n,) targets, bounds: (d, 2) lower/upper,
    alpha: () or (n,) observation noise on the standardised targets. Returns a float64
    :class:`GPState`; raises ``ValueError`` for inputs of other shapes, non-finite values or
    bounds with lower >= upper.

    Examples:
      >>> import numpy as np
      >>> x = np.array([[0.0], [0.5], [1.0]])
      >>> state = condition(GPParams.create(1.0, 0.3, dim=1), x, [1.0, 3.0, 2.0], [[0.0, 1.0]])
      >>> mean, var = predict(state, x)        # interpolates its data (alpha = 1e-6)
      >>> np.asarray(mean).round(4), bool((np.asarray(var) < 1e-4).all())
      (array([1., 3., 2.]), True)
    """
    kernel_id = _kernel_id(kernel)
    with jax.enable_x64(True):
        x, y = _check_xy(x, y)
        bounds = _check_bounds(bounds, x.shape[1])
        params = _as_params(params, x.shape[1])
        state = _condition_jit(params, x, y, bounds, _check_alpha(alpha, x.shape[0]), kernel_id)
        return state._replace(kernel=kernel)


@jax.jit(static_argnames=("kernel_id", "restarts", "steps"))
def _fit(key, x, y, mask, bounds, alpha, log_lower, log_upper, *, kernel_id, restarts, steps):
    """The padded GPState with the best hyper-parameters; x (N, d), y (N,), alpha (N,) padded
    (mask False) to a fixed N."""
    d = x.shape[1]
    centre, half_width = (log_upper + log_lower) / 2, (log_upper - log_lower) / 2

    def from_free(v):  # unconstrained (1 + d,) -> params inside the bounds
        theta = centre + half_width * jnp.tanh(v)
        return GPParams(theta[0], theta[1:])

    # Starts: a = 1 and l = 1 (clipped into the bounds), then log-uniform inside the bounds.
    limit = 1.0 - 1e-6  # keeps arctanh finite at the bounds
    s_default = jnp.clip(-centre / half_width, -limit, limit)
    s_random = jax.random.uniform(key, (restarts - 1, 1 + d), jnp.float64, -limit, limit)
    v0 = jnp.arctanh(jnp.concatenate([s_default[None], s_random]))

    u = _to_unit(x, bounds)
    ys = _standardise(y, mask)[0]

    def loss(v):
        return -_lml(from_free(v), u, ys, alpha, kernel_id, mask)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def run(v):
        def going(carry):
            _, state, i = carry
            grad = optax.tree_utils.tree_get(state, "grad")  # at v (zeros before the first step)
            return (i < steps) & ((i == 0) | (jnp.max(jnp.abs(grad)) > _GRAD_TOL))

        def step(carry):
            v, state, i = carry
            value, grad = value_and_grad(v, state=state)
            updates, new_state = opt.update(grad, state, v, value=value, grad=grad,
                                            value_fn=loss)
            # an array: optax types apply_updates' result as any pytree
            new_v = cast(jax.Array, optax.apply_updates(v, updates))
            new_value = optax.tree_utils.tree_get(new_state, "value")  # the loss at new_v
            ok = jnp.all(jnp.isfinite(new_v)) & jnp.isfinite(new_value)
            # A step to a non-finite loss (failed factorisation) freezes this start where it is.
            v, state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), (new_v, new_state),
                                    (v, state))
            return v, state, i + 1

        v, _, _ = lax.while_loop(going, step, (v, opt.init(v), 0))
        return v, -loss(v)

    v, lml = jax.vmap(run)(v0)
    return _condition(from_free(v[_first_best(lml)]), x, y, bounds, alpha, kernel_id, mask)


def _first_best(lml):
    """Index of the first start whose likelihood is within a relative ``_LML_TOL`` of the best
    (NaN counts as -inf). On a flat likelihood (a lengthscale the data hardly constrain) several
    starts tie up to rounding, and a plain argmax would let XLA's reduction order pick one."""
    lml = jnp.where(jnp.isnan(lml), -jnp.inf, lml)
    top = jnp.max(lml)
    return jnp.argmax(lml >= top - _LML_TOL * (1.0 + jnp.abs(top)))


def _padded_size(n: int) -> int:
    """Observations are padded to 8, 16, 32, ... inside :func:`fit` and
    :func:`maximize_acquisition`, so a Bayesian-optimisation loop that adds one point at a time
    compiles them once per power of two, not once per n."""
    return max(8, 1 << (n - 1).bit_length())


def fit(key: jax.Array, x: ArrayLike, y: ArrayLike, bounds: ArrayLike, *,
        kernel: str = "matern52", alpha: ArrayLike = 1e-6, restarts: int = 5, steps: int = 100,
        amplitude_bounds: tuple[float, float] = (1e-3, 1e3),
        lengthscale_bounds: tuple[float, float] = (1e-3, 1e3)) -> GPState:
    """Fit the hyper-parameters by maximum log marginal likelihood and condition on the data.

    x: (n, d) inputs in the original box, y: (n,) targets, bounds: (d, 2) lower/upper.
    ``restarts`` L-BFGS runs (optax), in parallel (vmap), each of at most ``steps`` iterations
    (fewer once every gradient component is below 1e-9): the first from amplitude 1 and
    lengthscales 1 (clipped into the bounds), the others from points drawn with ``key``
    log-uniformly inside ``amplitude_bounds`` (signal variance of the standardised targets) and
    ``lengthscale_bounds`` (on the unit box). The start with the largest likelihood is kept (the
    first of those within a relative 1e-9 of it, so that rounding does not choose between starts
    on a flat likelihood). The likelihood can be multimodal with few points: more restarts find
    the best mode more often.
    (The data are padded to 8, 16, 32, ... points with inert points, which changes nothing, so
    that a growing data set recompiles only at powers of two.)
    """
    kernel_id = _kernel_id(kernel)
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got {restarts}, {steps}")
    for name, (lo, hi) in (("amplitude_bounds", amplitude_bounds),
                           ("lengthscale_bounds", lengthscale_bounds)):
        if not 0.0 < lo < hi:
            raise ValueError(f"{name} must satisfy 0 < lower < upper, got {(lo, hi)}")
    with jax.enable_x64(True):
        x, y = _check_xy(x, y)
        n, d = x.shape
        bounds = _check_bounds(bounds, d)
        alpha = _check_alpha(alpha, n)
        pad = _padded_size(n) - n
        # Padding on the host: the jitted function sees the same shapes for every n up to N.
        x_padded = np.pad(np.asarray(x), ((0, pad), (0, 0)))
        x_padded[n:] = np.asarray(bounds)[:, 0]
        alpha_padded = np.pad(np.broadcast_to(np.asarray(alpha), (n,)), (0, pad))
        log_lower = np.log([amplitude_bounds[0]] + [lengthscale_bounds[0]] * d)
        log_upper = np.log([amplitude_bounds[1]] + [lengthscale_bounds[1]] * d)
        state = _fit(key, x_padded, np.pad(np.asarray(y), (0, pad)), np.arange(n + pad) < n,
                     bounds, alpha_padded, log_lower, log_upper, kernel_id=kernel_id,
                     restarts=restarts, steps=steps)
        return _unpad(state, n)._replace(alpha=alpha, kernel=kernel)


def _unpad(state: GPState, n: int) -> GPState:
    """The first n observations of a padded state (exact: the padding is block-diagonal)."""
    def head(a, *index):
        return jnp.asarray(np.asarray(a)[index])

    return state._replace(x=head(state.x, slice(n)), y=head(state.y, slice(n)),
                          chol=head(state.chol, slice(n), slice(n)),
                          weights=head(state.weights, slice(n)))


def _predict_unit(state, u, kernel_id, mask=None, chol_inv=None):
    """(mean, var) at unit-box points u (m, d), original units of y; observations where the
    boolean ``mask`` (n,) is False are padding (see :func:`_pad_state`) and ignored. With
    ``chol_inv`` (the inverse of ``state.chol``) the solve is a matrix product."""
    k_star = _gram(state.params, u, state.x, kernel_id)
    if mask is not None:
        k_star = jnp.where(mask, k_star, 0.0)
    mean = state.y_mean + state.y_scale * (k_star @ state.weights)
    v = _solve_lower(state.chol, k_star.T) if chol_inv is None else chol_inv @ k_star.T
    var = jnp.maximum(jnp.exp(state.params.log_amplitude) - jnp.sum(v * v, axis=0), 0.0)
    return mean, var * state.y_scale ** 2


@jax.jit
def _predict(state, xq, kernel_id):
    return _predict_unit(state, _to_unit(xq, state.bounds), kernel_id)


def predict(state: GPState, xq: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Posterior mean (m,) and variance (m,) of the latent function at xq (m, d), original units
    (for inputs and targets). The variance excludes the observation noise. Float64; raises
    ``ValueError`` if ``xq`` is not (m, d) with the state's d.

    Examples:
      >>> import numpy as np
      >>> x = np.array([[0.0], [0.5], [1.0]])
      >>> state = condition(GPParams.create(1.0, 0.3, dim=1), x, [0.0, 3.0, 0.0], [[0.0, 1.0]])
      >>> mean, var = predict(state, np.array([[0.0], [0.25], [50.0]]))
      >>> np.asarray(mean).round(4)   # at a data point, between two, far away (the mean of y)
      array([0.    , 1.6029, 1.    ])
      >>> np.asarray(var).round(4)    # far away: the prior variance, the variance of y
      array([0.    , 0.7222, 2.    ])
    """
    kernel_id = _kernel_id(state.kernel)
    with jax.enable_x64(True):
        xq = jnp.asarray(xq, jnp.float64)
        d = state.x.shape[1]
        if xq.ndim != 2 or xq.shape[1] != d:
            raise ValueError(f"xq must be (m, {d}) to match the training inputs, got {xq.shape}")
        return _predict(state._replace(kernel=None), xq, kernel_id)


# ----------------------------------------------------------------------------- acquisitions

def _float64(*arrays):
    return tuple(jnp.asarray(a, jnp.float64) for a in arrays)


def _improvement_z(mean, std, best, xi):
    improvement = mean - best - xi
    positive = std > 0.0
    z = improvement / jnp.where(positive, std, 1.0)
    return improvement, z, positive


def expected_improvement(mean: ArrayLike, std: ArrayLike, best: ArrayLike, xi: ArrayLike = 0.0
                         ) -> jax.Array:
    r"""Expected improvement for maximisation, :math:`E[\max(f - \text{best} - \xi, 0)]` for
    :math:`f \sim N(\text{mean}, \text{std}^2)`:

    .. math:: \sigma\,(z\,\Phi(z) + \varphi(z)), \qquad z = (\mu - \text{best} - \xi)/\sigma,

    and :math:`\max(\mu - \text{best} - \xi, 0)` where std = 0. Broadcasts; float64.

    Examples:
      >>> import numpy as np
      >>> np.asarray(expected_improvement([0.0, 1.0, 1.0], [1.0, 1.0, 0.0], best=0.0)).round(6)
      array([0.398942, 1.083315, 1.      ])
    """
    with jax.enable_x64(True):
        return _expected_improvement(*_float64(mean, std, best, xi))


@jax.jit
def _expected_improvement(mean, std, best, xi):
    improvement, z, positive = _improvement_z(mean, std, best, xi)
    h = z * ndtr(z) + jnp.exp(-0.5 * z * z - 0.5 * _LOG_2PI)
    return jnp.where(positive, std * h, jnp.maximum(improvement, 0.0))


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _log_h(z):
    r""":math:`\log(z\Phi(z) + \varphi(z))`, stable for all z (Ament et al. 2023, "Unexpected
    improvements to expected improvement for Bayesian optimization"): direct for z > -1; for
    z <= -1, :math:`\log\varphi(z) + \log(1 - |z| \sqrt{\pi/2}\, \mathrm{erfcx}(-z/\sqrt2))`;
    below :math:`-1/\sqrt{\epsilon}` the asymptote :math:`\log\varphi(z) - 2\log|z|`."""
    c1 = 0.5 * _LOG_2PI
    c2 = 0.5 * math.log(math.pi / 2.0)
    far = -1.0 / math.sqrt(float(jnp.finfo(z.dtype).eps))
    z_hi = jnp.maximum(z, -1.0)
    direct = jnp.log(z_hi * ndtr(z_hi) + jnp.exp(-0.5 * z_hi * z_hi - c1))
    z_mid = jnp.clip(z, far, -1.0)
    mid = (-0.5 * z_mid * z_mid - c1
           + _log1mexp(jnp.log(erfcx(-z_mid / math.sqrt(2.0)) * -z_mid) + c2))
    z_lo = jnp.minimum(z, far)
    asymptote = -0.5 * z_lo * z_lo - c1 - 2.0 * jnp.log(-z_lo)
    return jnp.where(z > -1.0, direct, jnp.where(z >= far, mid, asymptote))


def log_expected_improvement(mean: ArrayLike, std: ArrayLike, best: ArrayLike,
                             xi: ArrayLike = 0.0) -> jax.Array:
    r"""log of :func:`expected_improvement`, :math:`\log\sigma + \log(z\Phi(z) + \varphi(z))`,
    accurate and finite however negative z is (where std > 0; where std = 0 it is
    log max(improvement, 0), possibly -inf). Broadcasts; float64."""
    with jax.enable_x64(True):
        return _log_expected_improvement(*_float64(mean, std, best, xi))


@jax.jit
def _log_expected_improvement(mean, std, best, xi):
    improvement, z, positive = _improvement_z(mean, std, best, xi)
    return jnp.where(positive, jnp.log(jnp.where(positive, std, 1.0)) + _log_h(z),
                     jnp.log(jnp.maximum(improvement, 0.0)))


def upper_confidence_bound(mean: ArrayLike, std: ArrayLike, beta: ArrayLike, *,
                           best: ArrayLike | None = None) -> jax.Array:
    r"""Upper confidence bound :math:`\mu + \beta\sigma`. Broadcasts; float64.

    Convention: ``beta`` multiplies the standard deviation, like ``kappa`` in ``bayes_opt``
    (``kappa=2.576`` in the official HNAS code); GP-UCB papers often write
    :math:`\mu + \sqrt{\beta}\sigma` instead. ``best`` is ignored: it is accepted so that
    ``functools.partial(upper_confidence_bound, beta=...)`` fits :func:`maximize_acquisition`.

    Examples:
      >>> upper_confidence_bound([0.0, 1.0], [1.0, 0.5], beta=2.0)
      Array([2., 2.], dtype=float64)
    """
    del best
    with jax.enable_x64(True):
        mean, std, beta = _float64(mean, std, beta)
        return mean + beta * std


# ----------------------------------------------------------------------------- maximisation

def _pad_state(state: GPState) -> tuple[GPState, np.ndarray]:
    """(state, mask): the n observations padded to :func:`_padded_size` (n) with inert points
    (zero weight, identity block of the Cholesky factor, masked out of k_*), on the host, so that
    the maximiser compiles once per power of two as the data grow."""
    n = state.x.shape[0]
    pad = _padded_size(n) - n

    def padded(a, *widths):
        return np.pad(np.asarray(a), widths)

    chol = padded(state.chol, (0, pad), (0, pad))
    chol[np.arange(n, n + pad), np.arange(n, n + pad)] = 1.0
    state = state._replace(x=padded(state.x, (0, pad), (0, 0)), y=padded(state.y, (0, pad)),
                           chol=chol, weights=padded(state.weights, (0, pad)),
                           alpha=np.zeros(()), kernel=None)
    return state, np.arange(n + pad) < n


class _Hashable:
    """Wraps an acquisition so that equal ``functools.partial`` objects (same function, same
    hashable arguments) compare equal: a fresh partial then reuses the compiled maximiser."""

    def __init__(self, fn):
        self.fn = fn
        self.key = self._key(fn)
        try:
            hash(self.key)
        except TypeError:  # unhashable bound arguments: fall back to identity
            self.key = fn

    @classmethod
    def _key(cls, fn):
        if isinstance(fn, functools.partial):
            return (cls._key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
        return fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


def _acquisition_at(state, mask, chol_inv, u, acquisition, kernel_id):
    mean, var = _predict_unit(state, u, kernel_id, mask, chol_inv)
    std = _safe_sqrt(var)
    value = acquisition(mean, std, best=state.y_best)
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


@jax.jit(static_argnames=("kernel_id", "acquisition", "n_random", "n_refine", "steps"))
def _maximize(key, state, mask, learning_rate, *, kernel_id, acquisition, n_random, n_refine,
              steps):
    n, d = state.x.shape
    chol_inv = _solve_lower(state.chol, jnp.eye(n, dtype=state.chol.dtype))
    u_random = jax.random.uniform(key, (n_random, d), jnp.float64)
    values = _acquisition_at(state, mask, chol_inv, u_random, acquisition, kernel_id)
    i_random = jnp.argmax(values)
    u_best = u_random[i_random]
    if n_refine > 0 and steps > 0:
        opt = optax.adam(learning_rate)

        def objective(u):  # the points are independent: the gradient of the sum is per point
            return -jnp.sum(_acquisition_at(state, mask, chol_inv, u, acquisition, kernel_id))

        def step(carry, _):
            u, opt_state = carry
            grad = jax.grad(objective)(u)
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            updates, opt_state = opt.update(grad, opt_state, u)
            # an array: optax types apply_updates' result as any pytree
            u = cast(jax.Array, optax.apply_updates(u, updates))
            return (jnp.clip(u, 0.0, 1.0), opt_state), None

        u0 = u_random[lax.top_k(values, n_refine)[1]]
        (u_refined, _), _ = lax.scan(step, (u0, opt.init(u0)), None, length=steps)
        refined = _acquisition_at(state, mask, chol_inv, u_refined, acquisition, kernel_id)
        i = jnp.argmax(refined)
        u_best = jnp.where(refined[i] > values[i_random], u_refined[i], u_best)
    lower, upper = state.bounds[:, 0], state.bounds[:, 1]
    return jnp.clip(lower + u_best * (upper - lower), lower, upper)


def maximize_acquisition(key: jax.Array, state: GPState,
                         acquisition: Callable[..., jax.Array], *,
                         n_random: int = 10000, n_refine: int = 10, steps: int = 100,
                         learning_rate: float = 1e-2) -> jax.Array:
    """The point x (d,) of the box ``state.bounds`` with the largest acquisition value.

    ``acquisition(mean, std, best=y_best)`` maps the posterior mean (m,) and standard deviation
    (m,), both in the units of y, and the incumbent ``state.y_best`` (keyword ``best``) to values
    (m,) to maximise, e.g. ``functools.partial(upper_confidence_bound, beta=2.576)``,
    :func:`expected_improvement` or :func:`log_expected_improvement` (better conditioned far from
    the incumbent, where EI underflows to 0), or ``functools.partial(expected_improvement,
    xi=0.01)``. It must be traceable by JAX. It is a static argument of a jitted function:
    a module-level function or a ``functools.partial`` of one with hashable arguments (a fresh
    but equal partial is fine) reuses the compiled code; a new lambda recompiles.

    The acquisition is evaluated at ``n_random`` points drawn uniformly with ``key``; the
    ``n_refine`` best are refined by ``steps`` of projected Adam ascent on the unit box
    (``learning_rate`` in unit-box units, clipped to the box after each step) and the best point
    seen (random or refined) is returned, in original units. The observations are padded to 8, 16,
    32, ... (inert points), so a growing data set recompiles only at powers of two.
    """
    kernel_id = _kernel_id(state.kernel)
    if n_random < 1 or not 0 <= n_refine <= n_random or steps < 0:
        raise ValueError(f"need n_random >= 1, 0 <= n_refine <= n_random and steps >= 0, got "
                         f"{n_random}, {n_refine}, {steps}")
    with jax.enable_x64(True):
        padded, mask = _pad_state(state)
        return _maximize(key, padded, mask, jnp.asarray(learning_rate, jnp.float64),
                         kernel_id=kernel_id, acquisition=_Hashable(acquisition),
                         n_random=n_random, n_refine=n_refine, steps=steps)
