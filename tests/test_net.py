"""jhnas.net: BatchNorm modes and layer taps through Flax interceptors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import metrics, ntk
from jhnas import nn as jnn
from jhnas.data import Batch
from jhnas.net import from_apply, from_flax


class Small(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 4, 3, padding=1, use_bias=True)(x)
        x = nn.BatchNorm(use_running_average=True)(x)  # the attribute is overridden by `bn`
        x = jnn.relu(self, x)
        return jnn.Dense(4, 3)(x.mean((1, 2)))


def _setup(bn="train"):
    net = from_flax(Small(), bn=bn)
    x = jax.random.normal(jax.random.key(1), (6, 5, 5, 3)) * 3 + 1
    return net, net.init(jax.random.key(0), x), x


def test_bn_modes():
    net, p, x = _setup("train")
    conv = lambda x: jax.lax.conv_general_dilated(
        x, p["Conv_0"]["kernel"], (1, 1), [(1, 1)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["Conv_0"]["bias"]
    head = lambda h: jax.nn.relu(h).mean((1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = conv(x)
    train = (h - h.mean((0, 1, 2))) / jnp.sqrt(h.var((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(net.apply(p, x), head(train), rtol=1e-4, atol=1e-5)
    eval_net = from_flax(Small(), bn="eval")  # fresh statistics: mean 0, var 1
    np.testing.assert_allclose(eval_net.apply(p, x), head(h / jnp.sqrt(1 + 1e-5)), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(net.apply_nobn(p, x), head(h), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="bn must be one of"):
        from_flax(Small(), bn="frozen")


def test_taps_record_inputs_outputs_and_cotangents():
    net, p, x = _setup()
    specs, dy0 = net.layers(p, x)
    assert set(specs) == {("Conv_0",), ("Dense_0",)}
    assert specs[("Conv_0",)].kind == "conv" and specs[("Conv_0",)].kernel_size == (3, 3)
    logits, taps, relus = net.tapped(p, x, dy0)
    np.testing.assert_allclose(logits, net.apply(p, x), rtol=1e-6)
    assert taps.inputs[("Conv_0",)].shape == x.shape
    assert taps.outputs[("Dense_0",)].shape == logits.shape
    np.testing.assert_allclose(taps.outputs[("Dense_0",)], logits, rtol=1e-6)
    assert len(relus) == 1 and relus[0].shape == (6, 5, 5, 4)
    # the cotangent of the last layer's output is the cotangent of the logits
    g = jax.grad(lambda dy: (net.tapped(p, x, dy)[0] ** 2).sum())(dy0)
    np.testing.assert_allclose(g[("Dense_0",)], 2 * logits, rtol=1e-5)


def test_reused_layer_is_an_error():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            d = nn.Dense(3)
            return d(d(x))

    net = from_flax(Shared())
    x = jnp.ones((2, 3))
    p = net.init(jax.random.key(0), x)
    specs, dy0 = net.layers(p, x)
    with pytest.raises(ValueError, match="applied 2 times"):
        net.tapped(p, x, dy0)


def test_plain_function():
    net = from_apply(lambda p, x: x @ p)
    assert net.tapped is None and net.apply_nobn is net.apply


def test_torch_default_init():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels and biases, as PyTorch's defaults."""
    conv = jnn.Conv(30, 200, 3, use_bias=True)
    p = conv.init(jax.random.key(0), jnp.ones((1, 3, 3, 30)))["params"]
    dense = jnn.Dense(300, 500).init(jax.random.key(1), jnp.ones((1, 300)))["params"]
    for leaf, fan_in in [(p["kernel"], 270), (p["bias"], 270), (dense["kernel"], 300),
                         (dense["bias"], 300)]:
        bound, a = 1 / np.sqrt(fan_in), np.asarray(leaf)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
        assert a.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)


def test_block_init_rejects_layers_it_does_not_know():
    from jhnas.net import Block, block_init
    init = block_init([Block(nn.LayerNorm(), ("norm",), 0, 1)])
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        init(jax.random.key(0), jnp.ones((2, 3)))


def test_rngs_for_dropout_in_training_mode():
    """Issue 34: a module with nn.Dropout(deterministic=False) could not be used (no way to pass
    an rng). With rngs the masks are fixed: the same logits on every call, the metrics and the
    NTK computable, and other keys give other masks."""
    class WithDropout(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
            return nn.Dense(3)(nn.Dropout(0.5, deterministic=False)(x))

    x, y = jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])
    with pytest.raises(Exception, match="dropout"):
        plain = from_flax(WithDropout())
        plain.apply(plain.init(jax.random.key(0), x), x)
    net = from_flax(WithDropout(), rngs={"dropout": jax.random.key(1)})
    params = net.init(jax.random.key(0), x)
    np.testing.assert_array_equal(net.apply(params, x), net.apply(params, x))
    other = from_flax(WithDropout(), rngs={"dropout": jax.random.key(2)})
    assert not np.array_equal(net.apply(params, x), other.apply(params, x))
    m = metrics.metrics_fn(net, ["grad_norm", "ntk_trace"])(params, Batch(x, y))
    assert np.isfinite(m["grad_norm"]) and m["ntk_trace"] > 0
    jac = ntk.empirical_ntk_fn(net, implementation="jacobian")(params, x, y)
    np.testing.assert_allclose(ntk.empirical_ntk_fn(net)(params, x, y), jac, rtol=1e-5,
                               atol=1e-6 * np.abs(jac).max())
