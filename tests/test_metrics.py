"""Every metric of :mod:`jhnas.metrics` against an independent float64 brute-force oracle.

Each test network is written twice: as a Flax module (``jhnas.nn`` layers, ``nn.BatchNorm``), which
is what jhnas measures, and as a plain JAX function of explicit weight arrays (a tiny interpreter
over a layer list: ``lax.conv_general_dilated``, ``@``, batch normalisation written out), into which
the Flax parameters are mapped by name. Every metric is then recomputed from its definition
(official zero-cost / HNAS code) on the plain function in float64, with no jhnas
internals. The oracle pieces are jit-compiled only to keep the file fast.
"""
import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jhnas import metrics, ntk
from jhnas import nn as jnn
from jhnas.net import from_apply, from_flax

Batch = collections.namedtuple("Batch", "x y")
N = 8  # batch; zico splits it into two halves of 4
EPS = 1e-5
ALL = list(metrics.METRICS)


# ----------------------------------------------------------------------------- the networks

class NetBN(nn.Module):
    """Two train-mode BatchNorms (default affine, and none), strided conv, GAP, linear head."""

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 4, 3, padding=1, use_bias=True, name="c1")(x)
        x = nn.BatchNorm(use_running_average=False, epsilon=EPS, name="bn1")(x)
        x = jnn.relu(self, x)
        x = jnn.Conv(4, 6, 3, strides=2, padding=1, name="c2")(x)
        x = nn.BatchNorm(use_running_average=False, epsilon=EPS, use_scale=False, use_bias=False,
                         name="bn2")(x)
        x = jnn.relu(self, x)
        return jnn.Dense(6, 3, name="fc")(x.mean((1, 2)))


class NetPlain(nn.Module):
    """No BatchNorm: conv, grouped strided conv, a Dense applied per pixel, flatten, head."""

    @nn.compact
    def __call__(self, x):
        x = jnn.relu(self, jnn.Conv(3, 4, 3, padding=1, use_bias=True, name="c1")(x))
        x = jnn.Conv(4, 4, 3, strides=2, padding=1, groups=2, use_bias=True, name="c2")(x)
        x = jnn.relu(self, x)
        x = jnn.relu(self, jnn.Dense(4, 5, name="d1")(x))  # (N, 3, 3, 5)
        return jnn.Dense(45, 3, name="fc")(x.reshape(x.shape[0], -1))


class NetNoBias(nn.Module):
    """Bias-free, no BatchNorm, ReLUs: positively homogeneous in every layer's kernel."""

    @nn.compact
    def __call__(self, x):
        x = jnn.relu(self, jnn.Conv(3, 4, 3, padding=1, name="c1")(x))
        x = jnn.relu(self, jnn.Conv(4, 4, 3, strides=2, padding=1, name="c2")(x))
        return jnn.Dense(4, 3, use_bias=False, name="fc")(x.mean((1, 2)))


class NetDead(nn.Module):
    """The last layer multiplies by 0: the output ignores the input (and the parameters)."""

    @nn.compact
    def __call__(self, x):
        x = jnn.relu(self, jnn.Conv(3, 4, 3, padding=1, use_bias=True, name="c1")(x))
        return jnn.Dense(4, 3, name="fc")(x.mean((1, 2))) * 0.0


# The same networks as layer lists for the oracle: (op, name, stride, groups).
ARCHS = {
    "bn": [("conv", "c1", 1, 1), ("bn", "bn1"), ("relu",), ("conv", "c2", 2, 1), ("bn", "bn2"),
           ("relu",), ("gap",), ("dense", "fc")],
    "plain": [("conv", "c1", 1, 1), ("relu",), ("conv", "c2", 2, 2), ("relu",), ("dense", "d1"),
              ("relu",), ("flatten",), ("dense", "fc")],
    "nobias": [("conv", "c1", 1, 1), ("relu",), ("conv", "c2", 2, 1), ("relu",), ("gap",),
               ("dense", "fc")],
}
MODULES = {"bn": NetBN, "plain": NetPlain, "nobias": NetNoBias}


def layer_names(arch):
    return [op[1] for op in arch if op[0] in ("conv", "dense")]


def conv(a, k, stride, groups):
    return lax.conv_general_dilated(a, k, (stride, stride), [(1, 1), (1, 1)],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)


def forward(w, arch, h, *, bn=True, pert=None, rec=None):
    """The plain network: runs the ops of ``arch`` on ``h`` with weights ``w`` (Flax names).

    ``bn=False`` replaces BatchNorm by the identity; ``pert[name]`` is added to a layer's output;
    ``rec`` (a dict) receives the layer inputs/outputs and the ReLU inputs.
    """
    for op in arch:
        kind = op[0]
        if kind in ("conv", "dense"):
            name, p = op[1], w[op[1]]
            if rec is not None:
                rec.setdefault("in", {})[name] = h
            h = conv(h, p["kernel"], op[2], op[3]) if kind == "conv" else h @ p["kernel"]
            if "bias" in p:
                h = h + p["bias"]
            if pert is not None:
                h = h + pert[name]
            if rec is not None:
                rec.setdefault("out", {})[name] = h
        elif kind == "bn":
            if bn:  # train mode: batch statistics over batch and spatial axes, biased variance
                axes = tuple(range(h.ndim - 1))
                mean = h.mean(axes)
                var = ((h - mean) ** 2).mean(axes)
                h = (h - mean) / jnp.sqrt(var + EPS)
                p = w.get(op[1], {})
                if "scale" in p:
                    h = h * p["scale"]
                if "bias" in p:
                    h = h + p["bias"]
        elif kind == "relu":
            if rec is not None:
                rec.setdefault("relu", []).append(h)
            h = jnp.maximum(h, 0.0)
        elif kind == "gap":
            h = h.mean((1, 2))
        elif kind == "flatten":
            h = h.reshape(h.shape[0], -1)
        else:
            raise AssertionError(kind)
    return h


def cross_entropy(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), y])


def to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def data(n=N, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, 6, 6, 3)).astype(np.float32)
    return jnp.asarray(x), jnp.arange(n, dtype=jnp.int32) % 3


def init_params(net, x, seed=0):
    """Parameters of the Flax net's structure (``jax.eval_shape`` of ``net.init``: nothing to
    compile), drawn with numpy: PyTorch's default U(-1/sqrt(fan_in), +) for Conv/Dense, and a
    non-trivial BatchNorm affine (scale in [0.5, 1.5], bias in [-0.3, 0.3])."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    out = {}
    for name, layer in shapes.items():
        if "kernel" in layer:
            bound = 1 / np.sqrt(np.prod(layer["kernel"].shape[:-1]))
            draw = lambda s: rng.uniform(-bound, bound, s.shape)
        else:
            draw = lambda s: rng.uniform(-0.3, 0.3, s.shape)
        out[name] = {k: draw(s) if k != "scale" else rng.uniform(0.5, 1.5, s.shape)
                     for k, s in layer.items()}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


def build(kind, x):
    net = from_flax(MODULES[kind]())
    return net, init_params(net, x)


# ----------------------------------------------------------------------------- the oracle

def oracle_arrays(w, x, y, *, arch, bn):
    """Every array the definitions need, from the plain function (one jit-compiled program)."""
    names = layer_names(arch)
    n = x.shape[0]
    out = {}

    def with_kernels(w, ks):
        return {**w, **{m: {**w[m], "kernel": k} for m, k in zip(names, ks)}}

    def loss(ks, xx, yy):
        return cross_entropy(forward(with_kernels(w, ks), arch, xx, bn=bn), yy)

    ks = [w[m]["kernel"] for m in names]
    rec = {}
    out["logits"] = forward(w, arch, x, bn=bn, rec=rec)
    out["relu"] = rec["relu"]
    out["kernels"] = ks
    out["g"] = jax.grad(loss)(ks, x, y)

    # GraSP: Hessian of the loss w.r.t. all kernels flattened into one vector
    sizes = np.cumsum([k.size for k in ks])[:-1]
    unflat = lambda v: [p.reshape(k.shape) for p, k in zip(jnp.split(v, sizes), ks)]
    lv = lambda v: loss(unflat(v), x, y)
    v = jnp.concatenate([k.ravel() for k in ks])
    out["v"], out["hess"], out["gv"] = v, jax.hessian(lv)(v), jax.grad(lv)(v)

    # Fisher: split the function after each layer, dL/da by jax.grad w.r.t. the activation
    out["fisher"] = []
    for m in names:
        k = next(i for i, op in enumerate(arch) if op[1:2] == (m,))
        a = forward(w, arch[:k + 1], x, bn=bn)
        rest = lambda aa: cross_entropy(forward(w, arch[k + 1:], aa, bn=bn), y)
        out["fisher"].append((a, jax.grad(rest)(a)))

    # SynFlow: |params|, BN off, all-ones input of batch 1, R = sum of logits
    wa = jax.tree.map(jnp.abs, w)
    ones = jnp.ones((1,) + x.shape[1:], x.dtype)
    ka = [wa[m]["kernel"] for m in names]
    out["syn_k"] = ka
    out["syn_g"] = jax.grad(lambda ks: forward(with_kernels(wa, ks), arch, ones, bn=False).sum())(ka)

    # jacob_cov: gradient of the sum over the batch of all logits w.r.t. x (batched backward)
    out["jac"] = jax.grad(lambda xx: forward(w, arch, xx, bn=bn).sum())(x)

    # ZiCo, 2 splits: each half its own loss and its own BatchNorm statistics
    h = n // 2
    out["zico"] = [jax.grad(loss)(ks, x[:h], y[:h]), jax.grad(loss)(ks, x[h:], y[h:])]

    # NTK: official decomposition of S = sum_i logits[i, y_i]. Layer-output cotangents from
    # additive zero perturbations; per-sample gradients on single samples, explicit loop.
    s_fn = lambda p: forward(w, arch, x, bn=bn, pert=p)[jnp.arange(n), y].sum()
    delta = jax.grad(s_fn)({m: jnp.zeros_like(rec["out"][m]) for m in names})
    ops = {op[1]: op for op in arch if op[0] in ("conv", "dense")}
    rows = []
    for i in range(n):
        parts = []
        for m in names:
            a_i, d_i = rec["in"][m][i:i + 1], delta[m][i:i + 1]
            if ops[m][0] == "conv":
                _, _, stride, groups = ops[m]
                layer = lambda k: conv(a_i, k, stride, groups)
            else:
                layer = lambda k: a_i @ k
            parts.append(jax.vjp(layer, w[m]["kernel"])[1](d_i)[0].ravel())
            if "bias" in w[m]:
                parts.append(d_i.reshape(-1, d_i.shape[-1]).sum(0))
        rows.append(jnp.concatenate(parts))
    out["ntk_rows"] = jnp.stack(rows)
    # dS/dtheta over Conv/Dense kernels and biases, straight from the batched function
    label = lambda lp: forward({**w, **lp}, arch, x, bn=bn)[jnp.arange(n), y]
    out["ds"] = jax.grad(lambda lp: label(lp).sum())({m: w[m] for m in names})
    # for contrast: the true Jacobian of the batched function (differs under train-mode BN)
    out["jacobian"] = jax.jacrev(label)({m: w[m] for m in names})
    return out


def oracle_metrics(w, arch, x, y, bn):
    """All metrics from their definitions in float64 (call inside ``jax.enable_x64(True)``)."""
    # Low XLA optimisation: compiling this program is what costs time, running it is instant.
    run = jax.jit(oracle_arrays, static_argnames=("arch", "bn"),
                  compiler_options={"xla_backend_optimization_level": 0})
    r = jax.tree.map(lambda a: np.asarray(a, np.float64), run(w, x, y, arch=tuple(arch), bn=bn))
    assert r["logits"].dtype == np.float64
    n = x.shape[0]
    out = {"_logits": r["logits"]}
    out["grad_norm"] = sum(float(np.sqrt(np.sum(g ** 2))) for g in r["g"])
    out["snip"] = sum(float(np.abs(k * g).sum()) for k, g in zip(r["kernels"], r["g"]))

    hess = r["hess"]
    assert hess.shape == (r["v"].size,) * 2
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    out["grasp"] = float(-np.sum(r["v"] * (hess @ r["gv"])))

    fisher = 0.0
    for (a, da), k in zip(r["fisher"], r["kernels"]):
        g_nc = (a * da).reshape(n, -1, a.shape[-1]).sum(1)  # (N, C): sum over spatial
        # as the official code: each channel's value copied to its kernel slice, then summed
        fisher += float(np.sum(np.broadcast_to(0.5 * np.mean(g_nc ** 2, axis=0), k.shape)))
    out["fisher"] = fisher

    out["synflow"] = sum(float(np.abs(k * g).sum()) for k, g in zip(r["syn_k"], r["syn_g"]))

    lam = np.linalg.eigvalsh(np.corrcoef(r["jac"].reshape(n, -1)))
    out["jacob_cov"] = float(-np.sum(np.log(lam + 1e-5) + 1.0 / (lam + 1e-5)))
    out["_jacob_eigs"] = lam

    codes = np.concatenate([(a > 0).astype(np.float64).reshape(n, -1) for a in r["relu"]], 1)
    sign, logdet = np.linalg.slogdet(codes @ codes.T + (1 - codes) @ (1 - codes).T)
    assert sign != 0
    out["naswot"] = float(logdet)
    out["_relu_margin"] = min(float(np.abs(a).min()) for a in r["relu"])

    zico = 0.0
    for g1, g2 in zip(*r["zico"]):
        gl = np.stack([g1, g2])
        std, mean_abs = gl.std(0), np.abs(gl).mean(0)  # numpy std: ddof=0
        zico += np.log(np.sum(mean_abs[std > 0] / std[std > 0]))
    out["zico"] = float(zico)

    gram = r["ntk_rows"] @ r["ntk_rows"].T
    lam = np.linalg.eigvalsh(gram)
    out["ntk_trace"] = float(np.sqrt(np.trace(gram) / n))
    out["ntk_cond"] = float(lam[-1] / lam[0])
    out["_gram"] = gram
    out["_ds_sq"] = float(sum(np.sum(t ** 2) for t in jax.tree.leaves(r["ds"])))
    jrows = np.concatenate([t.reshape(n, -1) for t in jax.tree.leaves(r["jacobian"])], 1)
    out["_gram_jacobian"] = jrows @ jrows.T
    return out


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=["bn", "plain"])
def case(request):
    kind = request.param
    x, y = data()
    net, params = build(kind, x)
    fn = metrics.metrics_fn(net, ALL)
    got = fn(params, Batch(x, y), jax.random.key(0))
    with jax.enable_x64(True):
        want = oracle_metrics(to64(params), ARCHS[kind], np.asarray(x, np.float64),
                              np.asarray(y), bn=kind == "bn")
    return dict(kind=kind, net=net, params=params, x=x, y=y, fn=fn, got=got, want=want)


# float32 (jhnas) against float64 (oracle). GraSP, ZiCo and kappa amplify rounding: GraSP is a
# second derivative, ZiCo divides by |g_1 - g_2| and kappa by lambda_min.
# Observed on CPU: <= 1.4e-7 for all but GraSP (1.1e-6) and ZiCo (2.7e-6); SynFlow is float64 on
# both sides and NASWOT is integer arithmetic.
TOL = {"grad_norm": 1e-5, "snip": 1e-5, "grasp": 5e-5, "fisher": 1e-5, "synflow": 1e-12,
       "jacob_cov": 1e-5, "naswot": 1e-12, "zico": 5e-5, "ntk_trace": 1e-5, "ntk_cond": 1e-5}


def test_flax_and_plain_networks_agree(case):
    logits = jax.jit(case["net"].apply)(case["params"], case["x"])
    np.testing.assert_allclose(logits, case["want"]["_logits"], rtol=1e-5, atol=1e-6)
    # the oracle's NASWOT codes are robust: no ReLU input within float32 rounding of 0
    assert case["want"]["_relu_margin"] > 1e-5


@pytest.mark.smoke
@pytest.mark.parametrize("name", ALL)
def test_metric_matches_oracle(case, name):
    got, want = case["got"][name], case["want"][name]
    assert np.isfinite(want) and np.isfinite(got)
    assert got == pytest.approx(want, rel=TOL[name], abs=0), (name, got, want)


def test_oracle_is_well_conditioned(case):
    """The tolerances above presume the oracle values are not near-degenerate."""
    want = case["want"]
    assert want["ntk_cond"] < 1e-2 / ntk.cond_floor(N)  # far from jhnas' guard
    assert want["_jacob_eigs"].min() > 1e-3  # jacob_cov's 1/(lambda + 1e-5) is not amplified


def test_decomposition_sums_to_batch_gradient(case):
    """1^T Theta 1 = ||sum_i g_i||^2 = ||dS/dtheta||^2 (exact in the oracle; jhnas' Gram too)."""
    want = case["want"]
    assert want["_gram"].sum() == pytest.approx(want["_ds_sq"], rel=1e-10)
    gram = np.asarray(ntk.empirical_ntk_fn(case["net"])(case["params"], case["x"], case["y"]),
                      np.float64)
    np.testing.assert_allclose(gram, want["_gram"], rtol=1e-4,
                               atol=1e-5 * np.abs(want["_gram"]).max())
    assert gram.sum() == pytest.approx(want["_ds_sq"], rel=1e-5)
    # the decomposition is the true NTK without batch coupling, and is not with train-mode BN
    # (so the oracle above really checks the official decomposition)
    jac = want["_gram_jacobian"]
    if case["kind"] == "bn":
        assert abs(np.trace(jac) - np.trace(want["_gram"])) > 1e-2 * np.trace(jac)
    else:
        np.testing.assert_allclose(want["_gram"], jac, rtol=1e-10, atol=1e-12 * np.abs(jac).max())


def test_deterministic_and_key_independent(case):
    fn, b = case["fn"], Batch(case["x"], case["y"])
    again = fn(case["params"], b, jax.random.key(0))
    other_key = fn(case["params"], b, jax.random.key(123))
    no_key = fn(case["params"], b, None)
    assert again == case["got"]
    assert other_key == case["got"]
    assert no_key == case["got"]


def test_single_metric_functions_match_metrics_fn():
    x, y = data()
    net, params = build("nobias", x)
    b = Batch(x, y)
    together = metrics.metrics_fn(net, ALL)(params, b, jax.random.key(0))
    for name in ALL:
        alone = getattr(metrics, name)(net, params, b, jax.random.key(7))
        assert alone == pytest.approx(together[name], rel=1e-6, abs=0), name
    # subsets of names and repeated names give the same values
    sub = metrics.metrics_fn(net, ["zico", "snip", "zico"])(params, b, jax.random.key(0))
    assert list(sub) == ["zico", "snip"]
    assert sub["snip"] == pytest.approx(together["snip"], rel=1e-6)
    assert sub["zico"] == pytest.approx(together["zico"], rel=1e-6)


# ----------------------------------------------------------------------------- properties

def test_synflow_positive_homogeneity():
    """Bias-free ReLU net without BN: R is linear in each layer's |W|, so scaling one layer by
    s scales SynFlow by |s|, and SynFlow = (number of layers) * R (Euler)."""
    x, y = data()
    net, params = build("nobias", x)
    fn = metrics.metrics_fn(net, ["synflow"])
    b = Batch(x, y)
    base = fn(params, b)["synflow"]
    with jax.enable_x64(True):
        wa = jax.tree.map(np.abs, to64(params))
        r = float(jax.jit(lambda w: forward(w, ARCHS["nobias"], jnp.ones((1, 6, 6, 3)),
                                            bn=False).sum())(wa))
    assert base == pytest.approx(3 * r, rel=1e-12)
    for layer, s in (("c1", 4.0), ("c2", 0.25), ("fc", -2.0)):  # exact in float32
        scaled = {**params, layer: {"kernel": params[layer]["kernel"] * s}}
        assert fn(scaled, b)["synflow"] == pytest.approx(abs(s) * base, rel=1e-12), layer


def test_jacob_cov_nan_when_output_ignores_input():
    x, y = data()
    net = from_flax(NetDead())
    params = init_params(net, x)
    assert not np.any(net.apply(params, x))
    r = metrics.metrics_fn(net, ["jacob_cov", "ntk_trace"])(params, Batch(x, y))
    assert np.isnan(r["jacob_cov"])
    assert r["ntk_trace"] == 0.0  # the output ignores the parameters too


# ----------------------------------------------------------------------------- registry

def test_unknown_metric_is_named():
    x, _ = data()
    net, _ = build("plain", x)
    with pytest.raises(ValueError, match="nope"):
        metrics.metrics_fn(net, ["nope"])
    with pytest.raises(ValueError, match="nope"):
        metrics.metrics_fn(net, ["snip", "nope"])


def test_plain_function_net():
    """A plain JAX function (the float32 oracle network itself) through ``from_apply``: the metrics
    needing taps refuse clearly; the others match the Flax net."""
    x, y = data()
    flax_net, params = build("plain", x)
    plain = lambda p, xx: forward(p, ARCHS["plain"], xx, bn=False)
    np.testing.assert_allclose(plain(params, x), flax_net.apply(params, x), rtol=1e-5, atol=1e-6)
    net = from_apply(plain)
    for name in ("fisher", "naswot", "ntk_trace", "ntk_cond"):
        for f in (net, plain):
            with pytest.raises(ValueError, match=name) as err:
                metrics.metrics_fn(f, ["snip", name])
            assert "from_flax" in str(err.value)
    names = ["grad_norm", "snip", "grasp", "jacob_cov", "synflow", "zico"]
    b = Batch(x, y)
    got = metrics.metrics_fn(net, names)(params, b, jax.random.key(0))
    want = metrics.metrics_fn(flax_net, names)(params, b, jax.random.key(0))
    for name in names:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=0), name


def test_overflowing_network_gives_nan_and_a_warning():
    x, y = data()
    net, params = build("plain", x)
    params = jax.tree.map(lambda a: a * 1e25, params)
    with pytest.warns(RuntimeWarning, match="non-finite.*recorded as NaN"):
        r = metrics.metrics_fn(net, ["ntk_trace", "ntk_cond"])(params, Batch(x, y))
    assert np.isnan(r["ntk_trace"]) and np.isnan(r["ntk_cond"])


# ----------------------------------------------------------------------------- transformed kernels

class StdConv(nn.Conv):
    """Weight-standardised convolution, as in google-research/vision_transformer."""

    def param(self, name, *args, **kwargs):
        p = super().param(name, *args, **kwargs)
        if name == "kernel":
            p = p - p.mean(axis=(0, 1, 2), keepdims=True)
            p = p / (p.std(axis=(0, 1, 2), keepdims=True) + 1e-5)
        return p


class NetTransformed(nn.Module):
    """A masked nn.Conv, a weight-standardised one, a plain one, BN, a Dense head."""

    @nn.compact
    def __call__(self, x):
        mask = (np.arange(3 * 3 * 3 * 6).reshape(3, 3, 3, 6) % 3 != 0).astype(np.float32)
        x = jnn.relu(self, nn.Conv(6, (3, 3), mask=mask)(x))
        x = jnn.relu(self, nn.BatchNorm(use_running_average=False)(StdConv(6, (3, 3))(x)))
        x = jnn.relu(self, nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(3)(x.mean((1, 2)))


def test_metrics_do_not_change_with_company_on_transformed_kernels():
    """Issue 33: a tapped pass (fisher, naswot, the NTK) computed grad_norm and snip from the
    gradient of the *transformed* kernel of a masked or weight-standardised convolution. Every
    metric alone equals every metric together; grad_norm and snip equal float64 jax.grad of the
    parameters; the decomposition NTK refuses such layers by name."""
    x, y = data()
    net = from_flax(NetTransformed())
    params = net.init(jax.random.key(0), x[:1])
    b = Batch(x, y)
    names = [n for n in ALL if not n.startswith("ntk")]
    together = metrics.metrics_fn(net, names)(params, b)
    for name in names:
        alone = metrics.metrics_fn(net, [name])(params, b)[name]
        assert alone == pytest.approx(together[name], rel=1e-6, abs=0), name
    with jax.enable_x64(True):
        p64 = to64(params)
        kernels, merge = ntk.split_params(p64, ntk.param_mask(p64, "kernels"))
        g = jax.grad(lambda k: cross_entropy(net.apply(merge(k), jnp.asarray(x, jnp.float64)),
                                             y))(kernels)
        grad_norm = sum(float(jnp.sqrt((gi ** 2).sum())) for gi in g)
        snip = sum(float(jnp.abs(k * gi).sum()) for k, gi in zip(kernels, g))
    assert together["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    assert together["snip"] == pytest.approx(snip, rel=1e-5)
    specs, _ = net.layers(params, x)
    assert {"/".join(p) for p, s in specs.items() if not s.direct} == {"Conv_0", "StdConv_0"}
    for name in ("ntk_trace", "ntk_cond"):
        with pytest.raises(ValueError, match="Conv_0, StdConv_0.*implementation='jacobian'"):
            metrics.metrics_fn(net, ["snip", name])(params, b)
    with pytest.raises(ValueError, match="Conv_0, StdConv_0: the kernel or bias is transformed"):
        ntk.empirical_ntk_fn(net)(params, x, y)
