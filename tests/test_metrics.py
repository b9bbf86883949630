"""Every metric against an independent float64 oracle: the same network written as a plain JAX
function of explicit weights, each definition computed by brute force (REFERENCE §2)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import metrics
from jhnas import nn as jnn
from jhnas.data import Batch
from jhnas.net import from_apply, from_flax

N = 8


class Tiny(nn.Module):
    bn: bool = True

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 4, 3, padding=1, use_bias=True, name="c1")(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=False, use_scale=False, use_bias=False,
                             name="bn")(x)
        x = jnn.relu(self, x)
        x = jnn.Conv(4, 5, 3, strides=2, padding=1, name="c2")(x)
        x = jnn.relu(self, x)
        return jnn.Dense(5, 3, name="fc")(x.mean((1, 2)))


def _conv(a, k, stride):
    return jax.lax.conv_general_dilated(a, k, (stride, stride), [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def oracle_forward(w, x, pert=None, bn=True):
    """(logits, layer inputs, layer outputs, relu inputs); ``pert`` is added to layer outputs."""
    pert = pert or {}
    ins, outs, relus = {}, {}, []
    ins["c1"] = x
    h = _conv(x, w["c1"]["kernel"], 1) + w["c1"]["bias"] + pert.get("c1", 0.0)
    outs["c1"] = h
    if bn:
        h = (h - h.mean((0, 1, 2))) / jnp.sqrt(h.var((0, 1, 2)) + 1e-5)
    relus.append(h)
    h = jax.nn.relu(h)
    ins["c2"] = h
    h = _conv(h, w["c2"]["kernel"], 2) + pert.get("c2", 0.0)
    outs["c2"] = h
    relus.append(h)
    h = jax.nn.relu(h).mean((1, 2))
    ins["fc"] = h
    logits = h @ w["fc"]["kernel"] + w["fc"]["bias"] + pert.get("fc", 0.0)
    outs["fc"] = logits
    return logits, ins, outs, relus


def ce(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])


KERNELS = ("c1", "c2", "fc")


@pytest.fixture(scope="module", params=[True, False], ids=["bn", "nobn"])
def setup(request):
    bn = request.param
    net = from_flax(Tiny(bn=bn))
    x = jax.random.normal(jax.random.key(1), (N, 6, 6, 3))
    y = jnp.arange(N) % 3
    params = net.init(jax.random.key(0), x)
    got = metrics.metrics_fn(net, list(metrics.METRICS))(params, Batch(x, y), jax.random.key(0))
    with jax.enable_x64(True):
        w = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        np.testing.assert_allclose(oracle_forward(w, x64, bn=bn)[0], net.apply(params, x),
                                   rtol=1e-4, atol=1e-5)
        want = _oracle_metrics(w, x64, y, bn)
    return got, want, (net, params, x, y)


def _with_kernels(w, ks):
    return {**w, **{n: {**w[n], "kernel": k} for n, k in zip(KERNELS, ks)}}


def _oracle_metrics(w, x, y, bn):
    ks = [w[n]["kernel"] for n in KERNELS]
    loss = lambda ks, x=x, y=y: ce(oracle_forward(_with_kernels(w, ks), x, bn=bn)[0], y)
    g = jax.grad(loss)(ks)
    out = {"grad_norm": sum(float(jnp.sqrt((gi ** 2).sum())) for gi in g),
           "snip": sum(float(jnp.abs(k * gi).sum()) for k, gi in zip(ks, g))}
    # GraSP: -sum W * (H g) with the explicit Hessian of the flattened kernels
    sizes = [k.size for k in ks]
    unflat = lambda v: [p.reshape(k.shape) for p, k in zip(jnp.split(v, np.cumsum(sizes)[:-1]), ks)]
    v = jnp.concatenate([k.ravel() for k in ks])
    hess = jax.hessian(lambda v: loss(unflat(v)))(v)
    out["grasp"] = float(-(v * (hess @ jax.grad(lambda v: loss(unflat(v)))(v))).sum())
    # Fisher from the cotangents of additive perturbations of each layer output
    _, _, outs, relus = oracle_forward(w, x, bn=bn)
    zeros = {n: jnp.zeros_like(o) for n, o in outs.items()}
    d = jax.grad(lambda p: ce(oracle_forward(w, x, p, bn=bn)[0], y))(zeros)
    out["fisher"] = sum(float((0.5 * ((outs[n] * d[n]).reshape(N, -1, outs[n].shape[-1]).sum(1)
                                      ** 2).mean(0)).sum()) for n in KERNELS)
    # SynFlow: |params|, no BN, all-ones input of batch 1
    wa = jax.tree.map(jnp.abs, w)
    ones = jnp.ones((1,) + x.shape[1:], jnp.float64)
    ka = [wa[n]["kernel"] for n in KERNELS]
    gs = jax.grad(lambda ks: oracle_forward(_with_kernels(wa, ks), ones, bn=False)[0].sum())(ka)
    out["synflow"] = sum(float(jnp.abs(k * gi).sum()) for k, gi in zip(ka, gs))
    # jacob_cov: batched input gradient of the summed logits
    jac = np.asarray(jax.grad(lambda x: oracle_forward(w, x, bn=bn)[0].sum())(x)).reshape(N, -1)
    lam = np.linalg.eigvalsh(np.corrcoef(jac))
    out["jacob_cov"] = float(-np.sum(np.log(lam + 1e-5) + 1 / (lam + 1e-5)))
    # NASWOT: codes of every ReLU input
    c = np.concatenate([np.asarray(r > 0, np.float64).reshape(N, -1) for r in relus], 1)
    out["naswot"] = float(np.linalg.slogdet(c @ c.T + (1 - c) @ (1 - c).T)[1])
    # ZiCo over two halves, each with its own batch statistics
    halves = [jax.grad(loss)(ks, x[h], y[h])
              for h in (slice(0, N // 2), slice(N // 2, N))]
    z = 0.0
    for layer in range(3):
        gl = np.stack([np.asarray(hv[layer]) for hv in halves])
        std, mean_abs = gl.std(0), np.abs(gl).mean(0)
        z += np.log((mean_abs[std > 0] / std[std > 0]).sum())
    out["zico"] = float(z)
    # NTK: official per-sample decomposition of S = sum_i logits[i, y_i], explicit loop
    _, ins, outs, _ = oracle_forward(w, x, bn=bn)
    zeros = {n: jnp.zeros_like(o) for n, o in outs.items()}
    s = lambda p: oracle_forward(w, x, p, bn=bn)[0][jnp.arange(N), y].sum()
    delta = jax.grad(s)(zeros)
    rows = []
    for i in range(N):
        parts = []
        for n, stride in (("c1", 1), ("c2", 2)):
            kgrad = jax.vjp(lambda k: _conv(ins[n][i:i + 1], k, stride), w[n]["kernel"])[1](
                delta[n][i:i + 1])[0]
            parts.append(np.asarray(kgrad).ravel())
            if "bias" in w[n]:
                parts.append(np.asarray(delta[n][i].sum((0, 1))))
        parts += [np.outer(ins["fc"][i], delta["fc"][i]).ravel(), np.asarray(delta["fc"][i])]
        rows.append(np.concatenate(parts))
    gram = np.stack(rows) @ np.stack(rows).T
    lam = np.linalg.eigvalsh(gram)
    out["ntk_trace"] = float(np.sqrt(np.trace(gram) / N))
    out["ntk_cond"] = float(lam[-1] / lam[0])
    # the decomposition's rows sum to the batch gradient of S
    gs = jax.grad(lambda w: oracle_forward(w, x, bn=bn)[0][jnp.arange(N), y].sum())(w)
    out["sum_check"] = (float(gram.sum()), sum(float((v ** 2).sum()) for v in jax.tree.leaves(gs)))
    return out


TOL = {"grasp": 2e-3, "zico": 1e-3, "ntk_cond": 1e-3, "naswot": 1e-9}


@pytest.mark.parametrize("name", list(metrics.METRICS))
def test_metric_matches_oracle(setup, name):
    got, want, _ = setup
    assert got[name] == pytest.approx(want[name], rel=TOL.get(name, 1e-4)), name


def test_decomposition_rows_sum_to_the_batch_gradient(setup):
    _, want, _ = setup
    total, grad_sq = want["sum_check"]
    assert total == pytest.approx(grad_sq, rel=1e-9)


def test_single_metric_functions_and_determinism(setup):
    got, _, (net, params, x, y) = setup
    batch = Batch(x, y)
    for name in ("snip", "ntk_cond", "jacob_cov"):
        assert getattr(metrics, name)(net, params, batch, jax.random.key(5)) == pytest.approx(
            got[name], rel=1e-5)
    fn = metrics.metrics_fn(net, ["grasp", "naswot"])
    assert fn(params, batch, jax.random.key(0)) == fn(params, batch, jax.random.key(1))


def test_registry_errors_and_plain_functions():
    net = from_flax(Tiny(bn=False))
    x = jax.random.normal(jax.random.key(1), (N, 6, 6, 3))
    batch = Batch(x, jnp.arange(N) % 3)
    params = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unknown metric.*nope"):
        metrics.metrics_fn(net, ["snip", "nope"])
    plain = from_apply(net.apply)
    for name in ("fisher", "naswot", "ntk_trace"):
        with pytest.raises(ValueError, match="tappable"):
            metrics.metrics_fn(plain, [name])
    names = ["grad_norm", "snip", "grasp", "jacob_cov", "synflow", "zico"]
    a = metrics.metrics_fn(plain, names)(params, batch)
    b = metrics.metrics_fn(net, names)(params, batch)
    for n in names:
        assert a[n] == pytest.approx(b[n], rel=1e-5), n


def test_degenerate_networks():
    """An output that ignores the input: jacob_cov is NaN (undefined), kappa hits its cap."""

    class Dead(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnn.relu(self, jnn.Conv(3, 4, 3, padding=1)(x)) * 0.0
            return jnn.Dense(4, 3)(h.mean((1, 2)))

    net = from_flax(Dead())
    x = jax.random.normal(jax.random.key(1), (N, 6, 6, 3))
    params = net.init(jax.random.key(0), x)
    r = metrics.metrics_fn(net, ["jacob_cov", "ntk_cond", "ntk_trace"])(
        params, Batch(x, jnp.arange(N) % 3))
    assert np.isnan(r["jacob_cov"])
    from jhnas.ntk import cond_floor

    assert r["ntk_cond"] == pytest.approx(1 / cond_floor(N))
    assert r["ntk_trace"] > 0  # the head's bias still moves the output


def test_overflowing_network_gives_nan_and_a_warning():
    net = from_flax(Tiny(bn=False))
    x = jax.random.normal(jax.random.key(1), (N, 6, 6, 3))
    params = jax.tree.map(lambda a: a * 1e25, net.init(jax.random.key(0), x))
    with pytest.warns(RuntimeWarning, match="non-finite.*recorded as NaN"):
        r = metrics.metrics_fn(net, ["ntk_trace", "ntk_cond"])(params, Batch(x, jnp.arange(N) % 3))
    assert np.isnan(r["ntk_trace"]) and np.isnan(r["ntk_cond"])
