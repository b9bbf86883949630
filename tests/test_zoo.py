"""The NTK and the metrics on models jhnas did not write (issue 27), against float64 oracles.

Every model of :mod:`jhnas.testing.zoo` is checked with every implementation; the outputs and
parameter choices rotate over the models so that each combination occurs (the whole product is
``bench/ntk_zoo.py``'s table). A result either equals the oracle or is a refusal whose message
names what is not covered; refusals are allowed only where listed below. ``per_sample`` runs only
for coupled models: without coupling ``jacobian`` computes exactly that.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import metrics
from jhnas.data import Batch
from jhnas.testing import zoo

PLAIN = {"stax_fc", "stax_cnn", "stax_wide_resnet"}
# (model, implementation) pairs that must be refused, with a fragment of the message
REFUSED = {**{(m, "decomposition"): "needs a tappable net" for m in PLAIN},
           **{(m, "decomposition"): "also selects" for m in ("einsum", "conv_transpose",
                                                            "conv_local")},
           **{(m, "decomposition"): "cannot take per-sample gradients of layer"
              for m in ("scan", "remat", "shared_layer")}}
# with params="all" the decomposition also refuses normalisation and embedding parameters
REFUSED_ALL = {"flax_resnet_bn_train", "flax_resnet_bn_eval", "group_and_layer_norm", "embed"}


def _cases():
    for k, name in enumerate(zoo.ZOO):
        which = "all" if name in PLAIN else zoo.PARAMS[k % 3]
        yield pytest.param(name, zoo.OUTPUTS[k % 3], which, id=f"{name}-{zoo.OUTPUTS[k % 3]}-"
                                                              f"{which}")


@pytest.mark.parametrize("name, output, which", list(_cases()))
def test_ntk_equals_the_float64_oracle_or_refuses(name, output, which, monkeypatch):
    """...and the exact Jacobian takes one reverse pass per output row only when the samples
    are coupled; otherwise it is the per-sample Jacobian, computed sample by sample (issue 27:
    row by row took 82 s on a small CNN at batch 64)."""
    from jhnas import ntk
    rows, by_rows = ntk._jacobian_gram, []
    monkeypatch.setattr(ntk, "_jacobian_gram", lambda *a, **k: by_rows.append(1) or rows(*a, **k))
    model, oracles = zoo.ZOO[name](), {}
    net, params, x, _, coupled = model
    assert net.coupled(params, x) == coupled
    for impl in zoo.IMPLEMENTATIONS:
        if impl == "per_sample" and not coupled:
            continue
        by_rows.clear()
        status, value = zoo.check(name, impl, output, which, model, oracles)
        assert bool(by_rows) == (impl == "jacobian" and coupled), impl
        refusal = REFUSED.get((name, impl)) or (
            "also selects" if impl == "decomposition" and which == "all"
            and name in REFUSED_ALL else None)
        if refusal:
            assert status == "error" and refusal in value, (impl, status, value)
            assert "implementation='jacobian'" in value or "from_flax" in value
        else:
            assert status == "ok", (impl, value)
            assert value < 1e-5, (impl, value)


def test_plain_parameters_without_names_need_an_explicit_choice():
    """A stax-style tree has no 'kernel' names: params='layers' used to select nothing (a zero
    Gram from 'jacobian', a pytree error from 'per_sample'); now it is an error that says what
    to pass, and a predicate selects what it says."""
    from jhnas import ntk
    net, params, x, y, _ = zoo.stax_fc()
    for impl in ("jacobian", "per_sample"):
        with pytest.raises(ValueError, match="selects no parameter.*params='all', a predicate"):
            ntk.empirical_ntk_fn(net, implementation=impl)(params, x, y)
    weights = lambda path, leaf: leaf.ndim == 2  # noqa: E731  the matrices, not the biases
    assert ntk.selected(params, weights) == ["0/0", "1/0", "2/0"]
    got = ntk.empirical_ntk_fn(net, implementation="jacobian", params=weights)(params, x, y)
    want = zoo.oracle(net, params, x, y, "label", weights, per_sample=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    mask = jax.tree.map(lambda a: a.ndim == 2, params)
    np.testing.assert_array_equal(
        ntk.empirical_ntk_fn(net, implementation="jacobian", params=mask)(params, x, y), got)
    with pytest.raises(ValueError, match="False everywhere"):
        ntk.empirical_ntk_fn(net, params=lambda p, leaf: False,
                             implementation="jacobian")(params, x, y)


def _loss(apply, params, x, y):
    logits = apply(params, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def _metric_oracles(net, params, x, y) -> dict[str, float]:
    """grad_norm, snip, grasp, jacob_cov, zico (2 splits) and synflow by their definitions, in
    float64, over the kernels (one jitted computation, finished on the host)."""
    from jhnas import ntk
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        w, merge = ntk.split_params(p, ntk.param_mask(p, "kernels"))
        abs_w, merge_abs = ntk.split_params(jax.tree.map(jnp.abs, p),
                                            ntk.param_mask(p, "kernels"))
        x64, half = jnp.asarray(x, jnp.float64), x.shape[0] // 2
        loss = lambda w, xx, yy: _loss(net.apply, merge(w), xx, yy)  # noqa: E731

        @jax.jit
        def parts(w, abs_w, x64):
            g = jax.grad(loss)(w, x64, y)
            hg = jax.jvp(lambda w: jax.grad(loss)(w, x64, y), (w,), (g,))[1]
            jac = jax.grad(lambda xx: net.apply(merge(w), xx).sum())(x64)
            splits = [jax.grad(loss)(w, x64[s], y[s]) for s in (slice(0, half),
                                                                  slice(half, 2 * half))]
            ones = jnp.ones((1, *x.shape[1:]), jnp.float64)
            gs = jax.grad(lambda v: net.apply_nobn(merge_abs(v), ones).sum())(abs_w)
            return g, hg, jac, splits, gs

        g, hg, jac, splits, gs = jax.tree.map(np.asarray, parts(w, abs_w, x64))
        w, abs_w = [np.asarray(a) for a in w], [np.asarray(a) for a in abs_w]
    lam = np.clip(np.linalg.eigvalsh(np.corrcoef(jac.reshape(x.shape[0], -1))), 0, None)
    zico = 0.0
    for a, b in zip(*splits):
        both = np.stack([a, b])
        std = both.std(0)
        ratio = float(np.where(std > 0, np.abs(both).mean(0) / np.where(std > 0, std, 1), 0).sum())
        zico += math.log(ratio) if ratio else 0.0
    return {"grad_norm": sum(float(np.sqrt((a ** 2).sum())) for a in g),
            "snip": sum(float(np.abs(a * b).sum()) for a, b in zip(w, g)),
            "grasp": -sum(float((a * b).sum()) for a, b in zip(w, hg)),
            "jacob_cov": float(-np.sum(np.log(lam + 1e-5) + 1 / (lam + 1e-5))),
            "zico": zico,
            "synflow": sum(float(np.abs(a * b).sum()) for a, b in zip(abs_w, gs))}


# float32 against float64; ZiCo divides by |g_1 - g_2| / 2 and amplifies rounding (with
# train-mode BatchNorm on halves of 3 samples, 5.5e-4; jhnas in float64 equals it to 1e-12)
TOL = {"grad_norm": 1e-5, "snip": 1e-5, "grasp": 1e-4, "jacob_cov": 1e-4, "zico": 2e-3,
       "synflow": 1e-9}


@pytest.mark.parametrize("name", ["flax_resnet_bn_train", "attention", "plain_flax_cnn"])
def test_metrics_equal_float64_oracles_or_refuse(name):
    """grad_norm, snip, grasp, jacob_cov, zico and synflow against their definitions in float64;
    naswot refuses ReLUs it cannot see (nn.relu instead of jhnas.nn.relu), fisher a plain
    function (no taps)."""
    from jhnas.net import from_apply
    plain = name.startswith("plain_")
    net, params, x, y, _ = zoo.ZOO[name.removeprefix("plain_")]()
    if plain:
        net = from_apply(net.apply, batch_coupled=False)
    x, y = jnp.concatenate([x, x[::-1] * 0.5]), jnp.concatenate([y, y[::-1]])  # 2 halves for zico
    got = metrics.metrics_fn(net, list(TOL))(params, Batch(x, y))
    want = _metric_oracles(net, params, x, y)
    for m in TOL:
        assert got[m] == pytest.approx(want[m], rel=TOL[m]), (m, got[m], want[m])
    with pytest.raises(ValueError, match="jhnas.nn.relu" if not plain else "from_flax"):
        metrics.metrics_fn(net, ["naswot"])(params, Batch(x, y))
    if plain:
        with pytest.raises(ValueError, match="fisher.*from_flax"):
            metrics.metrics_fn(net, ["fisher"])
    else:
        assert np.isfinite(metrics.metrics_fn(net, ["fisher"])(params, Batch(x, y))["fisher"])


@pytest.mark.parametrize("name", ["stax_wide_resnet", "dense_general", "attention"])
def test_neural_tangents_agrees_on_the_zoo(name):
    """Where neural-tangents is installed (``pip install --no-deps neural-tangents==0.6.5
    frozendict``), its Jacobian contraction gives the oracle's Gram too."""
    from jhnas import _nt_compat, ntk
    if not _nt_compat.available():
        pytest.skip("neural-tangents is not installed")
    net, params, x, y, _ = zoo.ZOO[name]()
    which = "all" if name in PLAIN else "layers"
    got = ntk.empirical_ntk_fn(net, implementation="per_sample", output="all", params=which,
                               backend="neural_tangents",
                               nt_implementation="jacobian_contraction")(params, x, y)
    want = zoo.oracle(net, params, x, y, "all", which, per_sample=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
