"""The NTK implementations against a float64 brute-force oracle and against each other."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import nn as jnn
from jhnas import ntk
from jhnas.net import LayerSpec, from_apply, from_flax

IMPLS = ["jacobian", "per_sample", "decomposition"]


class CNN(nn.Module):
    """Strided, grouped and dilated convolutions, with optional train-mode BatchNorm."""
    bn: bool = False

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 6, 3, padding=1, use_bias=True)(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=False)(x)
        x = jnn.relu(self, x)
        x = jnn.Conv(6, 6, 3, strides=2, padding=1, groups=3, use_bias=True)(x)
        x = nn.Conv(4, (2, 2), padding="SAME", kernel_dilation=2)(x)
        x = jnn.relu(self, x)
        return jnn.Dense(4, 3)(x.mean((1, 2)))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(jnn.Dense(x.shape[-1], 16)(x))
        return jnn.Dense(16, 3)(x)


def _data(n=5):
    x = jax.random.normal(jax.random.key(1), (n, 7, 7, 3))
    return x, jnp.arange(n) % 3


def _oracle(apply, params, x, y, output, which):
    """Gram of per-sample Jacobians (single-sample function), float64, explicit loop."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        flat = jax.tree_util.tree_flatten_with_path(p64)[0]
        names = [tuple(k.key for k in path) for path, _ in flat]
        keep = [n[-1] == "kernel" or (which == "layers" and n[-1] == "bias"
                                     and n[:-1] + ("kernel",) in names) for n in names]
        treedef = jax.tree.structure(p64)
        rows = []
        for i in range(x.shape[0]):
            def f(sel):
                it = iter(sel)
                leaves = [next(it) if k else leaf for (_, leaf), k in zip(flat, keep)]
                logits = apply(treedef.unflatten(leaves), jnp.asarray(x[i:i + 1], jnp.float64))
                return {"label": logits[:, y[i]], "sum": logits.sum(-1),
                        "all": logits.reshape(-1)}[output]
            jac = jax.jacrev(f)([leaf for (_, leaf), k in zip(flat, keep) if k])
            rows.append(np.concatenate([np.asarray(j).reshape(j.shape[0], -1) for j in jac], 1))
        r = np.concatenate(rows)
        return r @ r.T


@pytest.mark.parametrize("model, output, which", [
    pytest.param(CNN(), "label", "layers", marks=pytest.mark.smoke),
    (CNN(), "sum", "kernels"), (CNN(), "all", "layers"),
    (MLP(), "label", "kernels"), (MLP(), "sum", "layers"), (MLP(), "all", "kernels")],
    ids=["cnn-label-layers", "cnn-sum-kernels", "cnn-all-layers", "mlp-label-kernels",
         "mlp-sum-layers", "mlp-all-kernels"])
def test_implementations_match_float64_oracle(model, output, which):
    """(tests/test_zoo.py checks the other combinations on 18 models jhnas did not write.)"""
    net = from_flax(model)
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    want = _oracle(net.apply, params, x, y, output, which)
    for impl in IMPLS:
        got = np.asarray(ntk.empirical_ntk_fn(net, implementation=impl, output=output,
                                             params=which)(params, x, y))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=impl)


def test_plain_function_and_chunking():
    net = from_flax(MLP())
    x, y = _data(7)
    params = net.init(jax.random.key(0), x)
    want = _oracle(net.apply, params, x, y, "label", "layers")
    for impl in ["jacobian", "per_sample"]:
        for chunk in [1, 3, 16]:  # 3 does not divide 7
            got = ntk.empirical_ntk_fn(net.apply, implementation=impl, chunk_size=chunk)(
                params, x, y)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    with pytest.raises(ValueError, match="tappable"):
        ntk.empirical_ntk_fn(from_apply(net.apply))(params, x, y)


def test_train_mode_bn_jacobian_is_the_coupled_jacobian():
    """With batch statistics, JACOBIAN is the exact Jacobian of the batched function."""
    net = from_flax(CNN(bn=True))
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        jac = jax.jacrev(lambda p: net.apply(p, jnp.asarray(x, jnp.float64))[jnp.arange(5), y])(p64)
        r = np.concatenate([np.asarray(v).reshape(5, -1) for path, v in
                            jax.tree_util.tree_flatten_with_path(jac)[0]
                            if "BatchNorm_0" not in str(path[0])], 1)
    got = ntk.empirical_ntk_fn(net, implementation="jacobian")(params, x, y)
    np.testing.assert_allclose(got, r @ r.T, rtol=1e-5, atol=1e-5 * np.abs(r @ r.T).max())


def test_train_mode_bn_decomposition_sums_to_the_batch_gradient():
    """The decomposition splits dS/dtheta into per-sample terms: 1^T Theta 1 = ||dS/dtheta||^2,
    and so does the exact Jacobian; the two Grams differ otherwise (BatchNorm couples samples)."""
    net = from_flax(CNN(bn=True))
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    mask = ntk.param_mask(params, "layers")
    g = jax.grad(lambda p: net.apply(p, x)[jnp.arange(5), y].sum())(params)
    sq = sum(float((v ** 2).sum()) for v, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)) if m)
    dec = np.asarray(ntk.empirical_ntk_fn(net)(params, x, y), np.float64)
    jac = np.asarray(ntk.empirical_ntk_fn(net, implementation="jacobian")(params, x, y), np.float64)
    assert dec.sum() == pytest.approx(sq, rel=1e-4)
    assert jac.sum() == pytest.approx(sq, rel=1e-4)
    assert np.abs(dec - jac).max() > 1e-3 * np.abs(jac).max()


def test_layer_weight_grad_is_the_kernel_gradient():
    """Kernel gradients rebuilt from the taps (layer input, output cotangent) equal jax.grad
    for strided, grouped and dilated convolutions and a Dense layer, with train-mode BN."""
    net = from_flax(CNN(bn=True))
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    loss = lambda logits: jnp.sin(logits).sum()
    specs, dy0 = net.layers(params, x)
    logits, vjp, taps = jax.vjp(lambda dy: net.tapped(params, x, dy)[:2], dy0, has_aux=True)
    deltas = vjp(jax.grad(loss)(logits))[0]
    want = jax.grad(lambda p: loss(net.apply(p, x)))(params)
    assert len(specs) == 4
    for path, spec in specs.items():
        got = ntk.layer_weight_grad(spec, taps.inputs[path], deltas[path])
        ref = want
        for k in path:
            ref = ref[k]
        np.testing.assert_allclose(got, ref["kernel"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunked", [False, True])
def test_layer_gram_equals_the_gram_of_patch_gradients(monkeypatch, chunked):
    """Every path of the per-layer Gram (per-sample convolutions; offsets over the whole batch or
    in chunks of samples; offsets in a scan) against the Gram of per-sample gradients from
    explicit patches, float64, for strided, grouped, dilated, SAME-padded, 1-D and 1x1
    convolutions, two output directions, a batch (12) that the chunk (8) does not divide."""
    monkeypatch.setattr(ntk, "GRAM_CHUNK", 8)
    monkeypatch.setattr(ntk, "GRAM_CHUNK_BYTES", 0 if chunked else 2**40)
    specs = [LayerSpec("conv", (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 3, True),
             LayerSpec("conv", (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 1, True),
             LayerSpec("conv", (2, 2), (1, 1), "SAME", (1, 1), (2, 2), 1, False),
             LayerSpec("conv", (3, 2), (2, 1), ((1, 1), (0, 1)), (1, 1), (1, 2), 1, True),
             LayerSpec("conv", (3, 1), (1, 1), ((1, 1), (0, 0)), (1, 1), (1, 1), 1, True),
             LayerSpec("conv", (1, 1), (1, 1), "VALID", (1, 1), (1, 1), 1, False),
             LayerSpec("conv", (3,), (2,), ((1, 1),), (1,), (1,), 1, True)]
    layer_gram = ntk._layer_gram.__wrapped__  # unjitted: reads the patched constants
    with jax.enable_x64(True):
        for spec in specs:
            rank = len(spec.kernel_size)
            a = jax.random.normal(jax.random.key(0), (12, *(9,) * rank, 6), jnp.float64)
            spatial = "HW"[:rank]
            w = jnp.zeros((*spec.kernel_size, 6 // spec.groups, 6), jnp.float64)
            out = jax.lax.conv_general_dilated(
                a, w, spec.strides, spec.padding, rhs_dilation=spec.kernel_dilation,
                feature_group_count=spec.groups,
                dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
            d = jax.random.normal(jax.random.key(1), (2, *out.shape), jnp.float64)
            rows = []
            for di in d:
                kern, bias = ntk.per_sample_layer_grads(spec, a, di)
                rows.append(jnp.concatenate([kern, bias], 1) if spec.use_bias else kern)
            r = jnp.stack(rows, 1).reshape(24, -1)  # sample-major
            for scan in (False, True):
                got = layer_gram(spec, a, d, spec.use_bias, scan)
                np.testing.assert_allclose(got, r @ r.T, rtol=1e-10, atol=1e-10)
            jaxpr = str(jax.make_jaxpr(lambda a, d: layer_gram(spec, a, d, True))(a, d))
            by_conv = spec.groups == 1 and spec.kernel_size not in ((1,), (1, 1))
            assert ("conv_general_dilated" in jaxpr) == by_conv, spec
            assert ("scan" in jaxpr) == (by_conv or chunked and spec.kernel_size != (1, 1)), spec


def test_param_mask_excludes_batchnorm():
    net = from_flax(CNN(bn=True))
    params = net.init(jax.random.key(0), _data()[0])
    mask = ntk.param_mask(params, "layers")
    assert mask["BatchNorm_0"] == {"scale": False, "bias": False}
    assert mask["Conv_0"] == {"kernel": True, "bias": True}
    assert ntk.param_mask(params, "kernels")["Conv_0"] == {"kernel": True, "bias": False}
    assert all(jax.tree.leaves(ntk.param_mask(params, "all")))
    with pytest.raises(ValueError, match="params must be one of"):
        ntk.param_mask(params, "weights")


def test_bad_options():
    net = from_flax(MLP())
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="output must be one of"):
        ntk.empirical_ntk_fn(net, output="logits")
    with pytest.raises(ValueError):
        ntk.empirical_ntk_fn(net, implementation="fast")
    for impl in IMPLS:  # no silent default label
        with pytest.raises(ValueError, match="needs the labels"):
            ntk.empirical_ntk_fn(net, implementation=impl)(params, x)
    with pytest.raises(ValueError, match="params must be one of"):
        ntk.empirical_ntk_fn(net, params="weights")
    bn = from_flax(CNN(bn=True))
    bn_params = bn.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="also selects BatchNorm_0/bias, BatchNorm_0/scale"):
        ntk.empirical_ntk_fn(bn, params="all")(bn_params, x, y)


def test_spectrum_and_guards():
    a = np.random.default_rng(0).normal(size=(6, 40))
    gram = a @ a.T
    lam = np.linalg.eigvalsh(gram)
    np.testing.assert_allclose(ntk.eigenvalues(gram), lam)
    assert ntk.trace_norm(gram) == pytest.approx(np.sqrt(np.trace(gram) / 6))
    assert ntk.condition_number(gram) == pytest.approx(lam[-1] / lam[0])
    assert ntk.condition_number(np.eye(4)) == pytest.approx(1.0)
    cap = 1 / ntk.cond_floor(6)
    assert ntk.condition_number(np.zeros((6, 6))) == pytest.approx(cap)  # all-zero Gram
    rank1 = np.outer(np.arange(1.0, 7.0), np.arange(1.0, 7.0))  # singular: lambda_min ~ 0
    assert ntk.condition_number(rank1) == pytest.approx(cap)
    assert np.isfinite(ntk.condition_number(-np.eye(6)))
    bad = gram.copy()
    bad[0, 1] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        ntk.condition_number(bad)
    with pytest.raises(ValueError, match="square"):
        ntk.trace_norm(np.ones((2, 3)))


def test_implementations_agree_on_a_bn_free_nb201_network():
    """All ops of the space (conv 1x1/3x3, pooling, skip, none), reduction blocks, the head."""
    from jhnas.spaces import nb201

    arch = "|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    net = from_flax(nb201.NB201Net(arch, C=4, N=1), bn="none")
    x = jax.random.normal(jax.random.key(2), (6, 8, 8, 3))
    y = jnp.arange(6) % 10
    params = net.init(jax.random.key(0), x)
    grams = {impl: np.asarray(ntk.empirical_ntk_fn(net, implementation=impl)(params, x, y),
                              np.float64) for impl in IMPLS}
    scale = np.abs(grams["jacobian"]).max()
    for impl in IMPLS[1:]:
        np.testing.assert_allclose(grams[impl], grams["jacobian"], rtol=1e-5, atol=1e-5 * scale)


def _squared_grad_norms(apply, params, x, y, outputs, which="layers"):
    """{output: ||dS/dtheta||^2} in float64 (one compilation), S the sum of the NTK's outputs:
    1^T Theta 1 for every implementation (the decomposition's per-sample terms sum to dS/dtheta)."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        sel, merge = ntk.split_params(p64, ntk.param_mask(p64, which))
        pick = {"label": lambda z: z[jnp.arange(z.shape[0]), y], "sum": lambda z: z,
                "all": lambda z: z}

        @jax.jit
        def norms(s, x):
            return [sum((g ** 2).sum() for g in jax.grad(lambda s: pick[o](apply(merge(s), x))
                                                         .sum())(s)) for o in outputs]

        return dict(zip(outputs, map(float, norms(sel, jnp.asarray(x, jnp.float64)))))


def test_nb201_batch64_gram_sum_is_the_squared_batch_gradient():
    """Issue 33: the jit-compiled decomposition with output="sum" was 7-38 % off on NB201 at
    batch 64 (XLA:CPU folded the classifier bias's constant rows into a broadcast and
    miscompiled their product, see ntk.ones_like). 1^T Theta 1 = ||dS/dtheta||^2 (float64)
    for the whole network and the compiled blocks, each jitted and eager; for output="label"
    (never miscompiled) the jitted network only."""
    from jhnas import data
    from jhnas.spaces import nb201

    arch = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
    batch = data.default_batch(64)
    x, y = jnp.asarray(batch.x), jnp.asarray(batch.y)
    whole = from_flax(nb201.NB201Net(arch, N=1), bn="train")
    blocks = nb201.make_net(arch, N=1, bn="train", compile="blocks")
    params = blocks.init(jax.random.key(0), x[:1])  # = whole.init (tests/test_nb201.py)
    want = _squared_grad_norms(whole.apply, params, x, y, ("sum", "label"))
    for output in ("sum", "label"):
        grams = {"network jitted": ntk.empirical_ntk_fn(whole, output=output),
                 "network eager": lambda p, x, y: ntk._decomposition_gram(
                     whole, p, x, y, output=output, which="layers"),
                 "blocks eager": ntk.empirical_ntk_fn(blocks, output=output),
                 "blocks jitted": jax.jit(ntk.empirical_ntk_fn(blocks, output=output))}
        for name, fn in grams.items():
            if output == "label" and name != "network jitted":
                continue
            got = float(np.asarray(fn(params, x, y), np.float64).sum())
            assert got == pytest.approx(want[output], rel=2e-3), (output, name)


class _RandomCNN(nn.Module):
    """Convolutions of the given (features, kernel, stride, groups), ReLU, a mean-pooled head."""
    layers: tuple
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        for features, kernel, stride, groups in self.layers:
            x = nn.Conv(features, (kernel, kernel), strides=stride, feature_group_count=groups,
                        padding="SAME" if kernel % 2 else "VALID")(x)
            x = jnn.relu(self, x)
        return nn.Dense(self.classes)(x.mean((1, 2)))


def _random_cnns(count, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        layers, c = [], 3
        for _ in range(rng.integers(1, 4)):
            features, groups = int(rng.choice([4, 6, 8])), 1
            if c % 2 == 0 and features % 2 == 0 and rng.random() < 0.3:
                groups = 2
            layers.append((features, int(rng.integers(1, 4)), int(rng.integers(1, 3)), groups))
            c = features
        yield pytest.param(_RandomCNN(tuple(layers)), int(rng.choice([2, 5, 17, 48, 64, 96])),
                           int(rng.choice([6, 9])), id=f"cnn{i}")


@pytest.mark.parametrize("model,n,size", list(_random_cnns(2, seed=4)) + [
    pytest.param(_RandomCNN(((8, 3, 1, 1), (8, 3, 2, 1)), 10), 64, 12, id="head10-batch64")])
def test_decompositions_jitted_eager_and_jacobian_agree_on_random_cnns(model, n, size):
    """A property test (issue 33): on BN-free CNNs with random kernel sizes, strides, groups and
    batch sizes 2 to 96, the jitted and eager decompositions equal the exact Jacobian, for every
    output."""
    net = from_flax(model, bn="none")
    x = jax.random.normal(jax.random.key(n), (n, size, size, 3))
    y = jnp.arange(n) % model.classes
    params = net.init(jax.random.key(1), x[:1])
    for output in ("label", "sum", "all"):
        want = np.asarray(ntk.empirical_ntk_fn(net, implementation="jacobian", output=output)(
            params, x, y), np.float64)
        jitted = ntk.empirical_ntk_fn(net, output=output)(params, x, y)
        eager = ntk._decomposition_gram(net, params, x, y, output=output, which="layers")
        tol = dict(rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(jitted, want, err_msg=f"jitted {output}", **tol)
        np.testing.assert_allclose(eager, want, err_msg=f"eager {output}", **tol)


def test_decomposition_refuses_parameters_it_does_not_tap():
    """A ConvTranspose kernel is selected by params="layers" but not tapped: the decomposition
    names it instead of leaving it out of the Gram; the exact implementations include it."""
    class WithConvTranspose(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jnn.relu(self, nn.Conv(4, (3, 3))(x))
            x = nn.ConvTranspose(5, (2, 2), strides=(2, 2))(x)
            return nn.Dense(3)(x.mean((1, 2)))

    net = from_flax(WithConvTranspose())
    x, y = _data()
    params = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="also selects ConvTranspose_0/bias, "
                                         "ConvTranspose_0/kernel; use implementation='jacobian'"):
        ntk.empirical_ntk_fn(net)(params, x, y)
    want = _oracle(net.apply, params, x, y, "label", "layers")
    got = ntk.empirical_ntk_fn(net, implementation="jacobian")(params, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
