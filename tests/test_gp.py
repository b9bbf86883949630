"""jhnas.gp against scikit-learn's GaussianProcessRegressor, acquisitions against Monte Carlo and
asymptotics, and the acquisition maximiser on problems with a known answer.

Compilation dominates the runtime, so the tests share shapes where they can: every fit uses 12
points in 2-d (padded to 16) and every maximisation the same 25-point state (padded to 32). The
module docstring's example is not run here (it would compile its own maximiser); check it with
``python -m doctest jhnas/gp.py``.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern

from jhnas import gp

ALPHA = 1e-6


def _data(d, n=12, seed=0):
    """Inputs in a skewed box (not the unit box), targets with a large offset."""
    rng = np.random.default_rng(seed)
    lower = rng.uniform(-5.0, 0.0, d)
    upper = lower + rng.uniform(1.0, 10.0, d)
    x = lower + (upper - lower) * rng.uniform(size=(n, d))
    u = (x - lower) / (upper - lower)
    y = 7.0 + np.sin(3.0 * u).sum(1) - (u ** 2).sum(1) + 0.05 * rng.normal(size=n)
    return x, y, np.stack([lower, upper], axis=1)


def _sklearn(kernel, amplitude, lengthscale, x, y, **kwargs):
    """scikit-learn's GP with hyper-parameters held fixed unless ``kwargs`` ask otherwise."""
    if kernel == "rbf":
        base = RBF(lengthscale)
    else:
        base = Matern(lengthscale, nu={"matern52": 2.5, "matern32": 1.5}[kernel])
    kwargs = {"optimizer": None, **kwargs}
    return GaussianProcessRegressor(ConstantKernel(amplitude) * base, alpha=ALPHA,
                                    normalize_y=True, **kwargs).fit(x, y)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("kernel", gp.KERNELS)
@pytest.mark.parametrize("d", [2, 3])
def test_posterior_and_likelihood_match_sklearn(kernel, d):
    x, y, bounds = _data(d)
    width = bounds[:, 1] - bounds[:, 0]
    amplitude, lengthscale = 1.7, np.linspace(0.15, 0.6, d)  # lengthscale on the unit box
    params = gp.GPParams.create(amplitude, lengthscale)
    state = gp.condition(params, x, y, bounds, kernel=kernel, alpha=ALPHA)
    # sklearn on the raw inputs, with the lengthscales in original units.
    sk = _sklearn(kernel, amplitude, lengthscale * width, x, y)

    rng = np.random.default_rng(1)
    xq = np.concatenate([x[:3], bounds[:, 0] + width * rng.uniform(size=(30, d))])
    mean, var = gp.predict(state, xq)
    sk_mean, sk_std = sk.predict(xq, return_std=True)
    assert mean.dtype == var.dtype == jnp.float64
    np.testing.assert_allclose(mean, sk_mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(var, sk_std ** 2, rtol=1e-6, atol=1e-8 * np.var(y))
    assert np.all(np.asarray(var)[3:] > 1e-3 * np.var(y))  # the comparison is not only zeros

    # The likelihood is that of the standardised targets, as sklearn's with normalize_y.
    np.testing.assert_allclose(state.log_marginal_likelihood, sk.log_marginal_likelihood_value_,
                               rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("kernel", gp.KERNELS)
def test_likelihood_and_gradient_match_sklearn(kernel):
    """log_marginal_likelihood on the model's own (unit-box, standardised) data, and its
    gradient (a closed-form custom VJP), against sklearn's, both in log hyper-parameters."""
    x, y, bounds = _data(3)
    amplitude, lengthscale = 0.6, np.array([0.3, 0.5, 0.8])
    params = gp.GPParams.create(amplitude, lengthscale)
    state = gp.condition(params, x, y, bounds, kernel=kernel)
    sk = _sklearn(kernel, amplitude, lengthscale * (bounds[:, 1] - bounds[:, 0]), x, y)
    sk_lml, sk_grad = sk.log_marginal_likelihood(sk.kernel_.theta, eval_gradient=True)
    with jax.enable_x64(True):
        lml, grad = jax.value_and_grad(gp.log_marginal_likelihood)(params, state.x, state.y,
                                                                   kernel, ALPHA)
    np.testing.assert_allclose(lml, sk_lml, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(np.concatenate([[grad.log_amplitude], grad.log_lengthscale]),
                               sk_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("y", [[2.5], [3.0, 3.0, 3.0, 3.0]], ids=["one point", "constant"])
def test_degenerate_targets_match_sklearn(y):
    """std(y) = 0: standardisation divides by 1 instead (as sklearn does)."""
    y = np.asarray(y)
    x = np.linspace(0.2, 0.8, y.size)[:, None] * np.array([[1.0, 2.0]])
    bounds = np.array([[0.0, 1.0], [0.0, 2.0]])
    state = gp.condition(gp.GPParams.create(0.5, [0.3, 0.3]), x, y, bounds)
    sk = _sklearn("matern52", 0.5, [0.3, 0.6], x, y)
    xq = np.array([[0.2, 0.4], [0.9, 0.1], [0.5, 1.9], [0.0, 0.0]])
    mean, var = gp.predict(state, xq)
    sk_mean, sk_std = sk.predict(xq, return_std=True)
    np.testing.assert_allclose(mean, sk_mean, rtol=1e-9)
    np.testing.assert_allclose(var, sk_std ** 2, rtol=1e-6, atol=1e-12)
    assert np.all(np.asarray(var)[1:] > 0.01)


def test_jitter_rescues_a_singular_gram_matrix():
    """Repeated inputs without noise: K is singular, the factorisation needs a jitter."""
    x = np.array([[0.1, 0.2], [0.1, 0.2], [0.7, 0.9], [0.4, 0.5]])
    y = np.array([1.0, 1.0, 3.0, 2.0])
    state = gp.condition(gp.GPParams.create(1.0, [0.5, 0.5]), x, y,
                         np.array([[0.0, 1.0], [0.0, 1.0]]), kernel="rbf", alpha=0.0)
    assert float(state.jitter) > 0.0
    assert np.all(np.isfinite(np.asarray(state.chol)))
    mean, var = gp.predict(state, x)
    np.testing.assert_allclose(mean, y, atol=1e-3)


def test_fit_reaches_sklearn_optimum():
    x, y, bounds = _data(2, seed=3)
    state = gp.fit(jax.random.key(0), x, y, bounds, restarts=5)
    unit_x = (x - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])
    sk = GaussianProcessRegressor(
        ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.ones(2), (1e-3, 1e3), nu=2.5),
        alpha=ALPHA, normalize_y=True, n_restarts_optimizer=5, random_state=0).fit(unit_x, y)
    assert float(state.log_marginal_likelihood) >= sk.log_marginal_likelihood_value_ - 1e-4
    # The reported value is the likelihood of the returned hyper-parameters, by sklearn's count
    # (fit works on data padded to 16 points: the padding must not change the likelihood).
    theta = np.concatenate([[state.params.log_amplitude], state.params.log_lengthscale])
    np.testing.assert_allclose(sk.log_marginal_likelihood(theta), state.log_marginal_likelihood,
                               rtol=1e-9)
    assert np.all(np.abs(theta) <= math.log(1e3) + 1e-9)
    # Same key, same fit; the state predicts in float64.
    again = gp.fit(jax.random.key(0), x, y, bounds, restarts=5)
    np.testing.assert_array_equal(again.params.log_lengthscale, state.params.log_lengthscale)
    assert gp.predict(state, x[:2])[0].dtype == jnp.float64

    # Fewer points, same padded size (16): no recompilation, and still the exact likelihood.
    compiled = gp._fit._cache_size()
    fewer = gp.fit(jax.random.key(0), x[:9], y[:9], bounds, restarts=5)
    assert gp._fit._cache_size() == compiled
    assert fewer.x.shape == (9, 2) and fewer.chol.shape == (9, 9)
    sk.fit(unit_x[:9], y[:9])
    theta = np.concatenate([[fewer.params.log_amplitude], fewer.params.log_lengthscale])
    np.testing.assert_allclose(sk.log_marginal_likelihood(theta), fewer.log_marginal_likelihood,
                               rtol=1e-9)


def test_fit_breaks_likelihood_ties_by_start_order():
    """Starts whose likelihoods differ only by rounding (a flat likelihood) are tied: fit keeps
    the first (amplitude 1, lengthscales 1), so the reduction order cannot pick the fit."""
    with jax.enable_x64(True):
        tied = np.array([-7.2153397827323, -7.2153397827322, -9.0, np.nan])
        assert int(jnp.argmax(tied[:3])) == 1 and int(gp._first_best(tied)) == 0
        assert int(gp._first_best(np.array([-7.2, -7.1, np.nan, -7.1]))) == 1
        assert int(gp._first_best(np.array([np.nan, -3.0]))) == 1


# ----------------------------------------------------------------------------- acquisitions

def test_ei_and_ucb_against_monte_carlo():
    mean = np.array([0.3, -1.0, 2.0, 0.45])
    std = np.array([0.5, 2.0, 0.1, 0.05])
    best, xi, beta, draws = 0.4, 0.05, 1.5, 200_000
    f = mean + std * np.random.default_rng(0).standard_normal((draws, 1))

    gain = np.maximum(f - best - xi, 0.0)
    ei = gp.expected_improvement(mean, std, best, xi)
    assert ei.dtype == jnp.float64
    ei = np.asarray(ei)
    assert np.all(np.abs(ei - gain.mean(0)) < 5 * gain.std(0) / math.sqrt(draws) + 1e-12)

    # UCB = mean + beta std is the Phi(beta) quantile of the posterior.
    ucb = gp.upper_confidence_bound(mean, std, beta)
    np.testing.assert_allclose(ucb, mean + beta * std, rtol=1e-15)
    below = (f <= np.asarray(ucb)).mean(0)
    p = ndtr(beta)
    assert np.all(np.abs(below - p) < 5 * math.sqrt(p * (1 - p) / draws))

    # No uncertainty: the improvement itself.
    np.testing.assert_allclose(gp.expected_improvement(np.array([1.0, 0.0]), 0.0, 0.5),
                               [0.5, 0.0])


def _log_h_asymptotic(z):
    """log(z Phi(z) + phi(z)) for z << 0: log(phi(z) / z^2 (1 - 3/z^2 + 15/z^4 - ...))."""
    series = sum((-1) ** k * math.prod(range(1, 2 * k + 2, 2)) / z ** (2 * k) for k in range(6))
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi) - 2 * math.log(-z) + math.log(series)


def test_log_expected_improvement():
    std = 0.7
    z = np.linspace(-12.0, 6.0, 181)
    log_ei = gp.log_expected_improvement(z * std, std, 0.0)
    np.testing.assert_allclose(log_ei, np.log(gp.expected_improvement(z * std, std, 0.0)),
                               rtol=1e-10)
    # Far below the incumbent, where EI is tiny or underflows: the asymptotic series.
    z = np.array([-40.0, -300.0, -1e9])
    log_ei = np.asarray(gp.log_expected_improvement(z * std, std, 0.0))
    assert np.all(np.isfinite(log_ei))
    assert np.all(np.asarray(gp.expected_improvement(z[1:] * std, std, 0.0)) == 0.0)
    np.testing.assert_allclose(log_ei, math.log(std) + np.array([_log_h_asymptotic(v) for v in z]),
                               rtol=1e-12)
    # Increasing in z across the branch points (-1 and -1/sqrt(eps)).
    z = np.concatenate([-np.logspace(9, 0.5, 300), np.linspace(-3.0, 3.0, 300)])
    assert np.all(np.diff(np.asarray(gp.log_expected_improvement(z, 1.0, 0.0))) > 0)


# ----------------------------------------------------------------------------- maximisation

def _mean(mean, std, *, best, shift=0.0):
    return mean + shift


@pytest.fixture(scope="module")
def bowl():
    """A GP through a 5 x 5 grid, symmetric about the centre c of the box, of y = -|u - c|^2:
    by symmetry its posterior mean peaks at c."""
    bounds = np.array([[-1.0, 3.0], [0.0, 10.0]])
    grid = np.stack(np.meshgrid(*[np.linspace(lo, hi, 5) for lo, hi in bounds]), -1)
    x = grid.reshape(-1, 2)
    y = -((((x - bounds.mean(1)) / (bounds[:, 1] - bounds[:, 0])) ** 2).sum(1))
    return gp.condition(gp.GPParams.create(1.0, [0.4, 0.4]), x, y, bounds), bounds.mean(1)


def test_maximize_acquisition_finds_the_peak(bowl):
    state, centre = bowl
    lower, upper = np.asarray(state.bounds).T
    key = jax.random.key(0)
    acquisition = functools.partial(_mean, shift=1.0)
    x = gp.maximize_acquisition(key, state, acquisition, n_random=1000, n_refine=5)
    assert x.shape == (2,) and x.dtype == jnp.float64
    assert np.all((np.asarray(x) >= lower) & (np.asarray(x) <= upper))
    error = np.abs((np.asarray(x) - centre) / (upper - lower)).max()
    assert error < 1e-3
    # Random search alone, with as many points, stays far coarser.
    points = lower + (upper - lower) * np.random.default_rng(0).uniform(size=(1000, 2))
    mean, _ = gp.predict(state, points)
    best = points[np.argmax(np.asarray(mean))]
    assert error < np.abs((best - centre) / (upper - lower)).max() / 5
    assert float(gp.predict(state, np.asarray(x)[None])[0][0]) >= np.asarray(mean).max()
    # Same key, same point.
    again = gp.maximize_acquisition(key, state, acquisition, n_random=1000, n_refine=5)
    np.testing.assert_array_equal(again, x)


def test_maximize_acquisition_stays_in_the_box(bowl):
    """The posterior mean of -y peaks at the corners: the ascent must stop at the bounds."""
    state, _ = bowl
    with jax.enable_x64(True):
        flipped = state._replace(weights=-state.weights, y_mean=-state.y_mean)
    compiled = gp._maximize._cache_size()
    x = np.asarray(gp.maximize_acquisition(jax.random.key(1), flipped,
                                           functools.partial(_mean, shift=1.0),
                                           n_random=1000, n_refine=5))
    assert gp._maximize._cache_size() == compiled  # an equal partial reuses the compiled code
    lower, upper = np.asarray(state.bounds).T
    assert np.all((x >= lower) & (x <= upper))
    tol = 1e-6 * (upper - lower)
    assert np.all((np.abs(x - lower) < tol) | (np.abs(x - upper) < tol))


def test_padded_state_predicts_the_same(bowl):
    """maximize_acquisition pads the observations (25 -> 32) with inert points."""
    state, _ = bowl
    padded, mask = gp._pad_state(state)
    assert padded.x.shape == (32, 2) and mask.sum() == 25
    points = np.random.default_rng(2).uniform(size=(1000, 2))  # the shape predicted above
    with jax.enable_x64(True):
        mean, var = jax.jit(gp._predict_unit, static_argnums=2)(padded, points, 0, mask)
    lower, upper = np.asarray(state.bounds).T
    expected_mean, expected_var = gp.predict(state, lower + (upper - lower) * points)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(var, expected_var, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------- errors

def test_errors():
    x, y, bounds = _data(2, n=4)
    params = gp.GPParams.create(1.0, [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown kernel 'matern12'"):
        gp.condition(params, x, y, bounds, kernel="matern12")
    with pytest.raises(ValueError, match="unknown kernel"):
        gp.fit(jax.random.key(0), x, y, bounds, kernel="Matern")
    with pytest.raises(ValueError, match=r"y must be \(n,\)"):
        gp.condition(params, x, y[:3], bounds)
    with pytest.raises(ValueError, match=r"x must be \(n, d\)"):
        gp.condition(params, x[:, 0], y, bounds)
    with pytest.raises(ValueError, match=r"bounds must be \(d, 2\)"):
        gp.fit(jax.random.key(0), x, y, bounds[:1])
    with pytest.raises(ValueError, match="lower < upper"):
        gp.condition(params, x, y, bounds[:, ::-1])
    with pytest.raises(ValueError, match=r"log_lengthscale must be \(2,\)"):
        gp.condition(gp.GPParams.create(1.0, [0.5, 0.5, 0.5]), x, y, bounds)
    with pytest.raises(ValueError, match="alpha must be"):
        gp.condition(params, x, y, bounds, alpha=np.ones(3))
    state = gp.condition(params, x, y, bounds)
    with pytest.raises(ValueError, match=r"xq must be \(m, 2\)"):
        gp.predict(state, np.ones((3, 3)))
    with pytest.raises(ValueError, match="n_refine"):
        gp.maximize_acquisition(jax.random.key(0), state, _mean, n_random=5, n_refine=10)
