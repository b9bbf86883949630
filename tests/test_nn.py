"""jhnas.nn: the chunked convolution, the shifted-slice average pool and the PyTorch-default
initialisers against lax, flax and jax.random."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jhnas import nn as jnn

CASES = {  # name: (batch, in/out channels, conv keyword arguments)
    "3x3": (10, (3, 4), dict(window_strides=(1, 1), padding=[(1, 1), (1, 1)])),
    "strided dilated depthwise": (9, (4, 4), dict(window_strides=(2, 2), padding="SAME",
                                                  rhs_dilation=(2, 2), feature_group_count=4)),
}
DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("name", CASES)
def test_chunked_conv_equals_lax_in_float64(name):
    n, (ci, co), kw = CASES[name]
    groups = kw.get("feature_group_count", 1)
    with jax.enable_x64(True):
        kx, kw_, kt = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (n, 5, 5, ci), jnp.float64)
        w = jax.random.normal(kw_, (3, 3, ci // groups, co), jnp.float64)
        ref = functools.partial(lax.conv_general_dilated, dimension_numbers=DN, **kw)
        ours = functools.partial(jnn.chunked_conv, dimension_numbers=DN, chunk=4, **kw)
        np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-12)

        def loss(f, x, w):
            return jnp.sum(jnp.tanh(f(x, w)) ** 2)

        for argnums in ((0, 1), 1, 0):  # both, the kernel alone (the chunked path), x alone
            got = jax.grad(functools.partial(loss, ours), argnums)(x, w)
            want = jax.grad(functools.partial(loss, ref), argnums)(x, w)
            for g, h in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)
        tx, tw = jax.random.normal(kt, x.shape, jnp.float64), jnp.ones_like(w)
        np.testing.assert_allclose(jax.jvp(ours, (x, w), (tx, tw))[1],
                                   jax.jvp(ref, (x, w), (tx, tw))[1], rtol=1e-10, atol=1e-12)
        # Hessian-vector product (GraSP): forward over reverse and reverse over reverse
        for hvp in (lambda f: jax.jvp(lambda w: jax.grad(functools.partial(loss, f), 1)(x, w), (w,),
                                       (tw,))[1],
                    lambda f: jax.grad(lambda w: jnp.vdot(
                        jax.grad(functools.partial(loss, f), 1)(x, w), tw))(w)):
            np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=1e-9, atol=1e-11)
        # vmapped per-sample gradients (batches of one are not chunked)
        per = lambda f: jax.vmap(lambda xi: jax.grad(functools.partial(loss, f), 1)(xi[None], w))
        np.testing.assert_allclose(per(ours)(x), per(ref)(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size,convs", [(8, 2), (9, 1 + 16 // jnn.CONV_CHUNK)])
def test_chunked_conv_default_chunks_inputs_above_unchunked_positions(size, convs):
    """The kernel gradient by default: one convolution for inputs of at most
    UNCHUNKED_POSITIONS = 8 x 8 positions per sample, one per chunk of CONV_CHUNK above."""
    assert jnn.UNCHUNKED_POSITIONS == 64
    x, w = jnp.ones((16, size, size, 2)), jnp.ones((3, 3, 2, 2))
    loss = lambda w: jnn.chunked_conv(x, w, (1, 1), "SAME", dimension_numbers=DN).sum()
    assert str(jax.make_jaxpr(jax.grad(loss))(w)).count("conv_general_dilated") == convs


def test_chunked_conv_is_the_conv_of_jnn_Conv():
    conv = jnn.Conv(3, 5, 3, padding=1)
    assert conv.conv_general_dilated is jnn.chunked_conv


@pytest.mark.parametrize("stride,size", [(1, 5), (1, 4), (2, 5), (2, 6)])
def test_avg_pool_3x3_equals_flax_avg_pool_in_float64(stride, size):
    import flax.linen as nn
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (2, size, size + 1, 3), jnp.float64)
        ref = functools.partial(nn.avg_pool, window_shape=(3, 3), strides=(stride, stride),
                                padding=((1, 1), (1, 1)), count_include_pad=False)
        ours = functools.partial(jnn.avg_pool_3x3, stride=stride)
        np.testing.assert_allclose(ours(x), ref(x), rtol=1e-13)
        ct = jax.random.normal(jax.random.key(2), ref(x).shape, jnp.float64)
        np.testing.assert_allclose(jax.vjp(ours, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0],
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("size", [4, 5])
def test_avg_pool_2x2_equals_flax_avg_pool_in_float64(size):
    import flax.linen as nn
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (2, size, size + 1, 3), jnp.float64)
        ref = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
        assert jnn.avg_pool_2x2(x).shape == ref(x).shape
        np.testing.assert_allclose(jnn.avg_pool_2x2(x), ref(x), rtol=1e-13)
        ct = jax.random.normal(jax.random.key(2), ref(x).shape, jnp.float64)
        np.testing.assert_allclose(jax.vjp(jnn.avg_pool_2x2, x)[1](ct)[0],
                                   jax.vjp(ref, x)[1](ct)[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("partitionable", [True, False])
def test_torch_inits_equal_the_plain_draws(partitionable):
    """Eager (flat draw, sliced) and traced: exactly variance_scaling(1/3, "fan_in", "uniform")
    and jax.random.uniform; without the prefix property the plain draw is used."""
    ref = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    bias = jnn.torch_bias_init(27)
    traced = jax.jit(jnn.torch_kernel_init, static_argnums=1)
    with jax.threefry_partitionable(partitionable):
        for i, shape in enumerate([(3, 3, 3, 16), (1, 1, 16, 16), (5, 7, 9), (3, 3, 32, 64)]):
            key = jax.random.fold_in(jax.random.key(7), i)
            want = ref(key, shape)
            assert jnn.torch_kernel_init(key, shape).shape == shape
            np.testing.assert_array_equal(jnn.torch_kernel_init(key, shape), want)
            np.testing.assert_array_equal(traced(key, shape), want)
            np.testing.assert_array_equal(bias(key, shape[-1:]), jax.random.uniform(
                key, shape[-1:], jnp.float32, -27**-.5, 27**-.5))


def test_eager_inits_compile_one_random_program_per_draw_size():
    names = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kw.get("fun_name"))

    shapes = [(3, 3, 2, 2), (4, 4, 4, 3), (5, 5, 5), (64, 4), (37,)]
    keys = [jax.random.key(i) for i in range(len(shapes))]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:  # 36 to 256 values: one draw size (4096); dtype float16 keeps earlier tests' caches out
        for key, shape in zip(keys, shapes):
            jnn.torch_kernel_init(key, shape, jnp.float16)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert names == ["jit(_flat_uniform)"]  # and nothing per shape (slicing, staging)
