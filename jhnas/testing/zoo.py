"""Models jhnas did not write, and float64 oracles of their NTK (tests/test_zoo.py,
bench/ntk_zoo.py).

Each entry of :data:`ZOO` builds ``(net, params, x, y, coupled)``: a :class:`jhnas.net.Net` (a Flax module
through ``from_flax`` or a plain ``apply`` through ``from_apply``), its parameters, a small batch
and labels, and whether the samples are coupled (train-mode BatchNorm). They are written the way
Flax's examples and neural-tangents' ``stax`` write models, not with jhnas's layers.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import ntk
from jhnas.net import from_apply, from_flax

N, K = 3, 4  # batch, classes


def _images(h=6, w=6, c=3, n=N):
    return jax.random.normal(jax.random.key(7), (n, h, w, c))


def _labels(n=N):
    return jnp.arange(n, dtype=jnp.int32) % K


# ----------------------------------------------------------------------------- plain functions
# stax-style: parameters are tuples and lists (no names), the function is apply(params, x).

def _glorot(key, shape):
    return jax.random.normal(key, shape) / jnp.sqrt(shape[-2] if len(shape) > 1 else 1.0)


def stax_fc():
    keys = jax.random.split(jax.random.key(0), 3)
    params = [(_glorot(keys[0], (6 * 6 * 3, 16)), jnp.zeros(16)),
              (_glorot(keys[1], (16, 16)), 0.1 * jnp.ones(16)),
              (_glorot(keys[2], (16, K)), jnp.zeros(K))]

    def apply(p, x):
        h = x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            h = jnp.tanh(h) if i < len(p) - 1 else h
        return h

    return from_apply(apply, batch_coupled=False), params, _images(), _labels(), False


def _conv(x, w, b, stride=1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


def stax_cnn():
    keys = jax.random.split(jax.random.key(1), 3)
    params = ((jax.random.normal(keys[0], (3, 3, 3, 8)) / 5, jnp.zeros(8)),
              (jax.random.normal(keys[1], (3, 3, 8, 8)) / 8, jnp.zeros(8)),
              (_glorot(keys[2], (8, K)), jnp.zeros(K)))

    def apply(p, x):
        h = jax.nn.relu(_conv(x, *p[0]))
        h = jax.nn.relu(_conv(h, *p[1], stride=2))
        return h.mean((1, 2)) @ p[2][0] + p[2][1]

    return from_apply(apply, batch_coupled=False), params, _images(), _labels(), False


def stax_wide_resnet():
    """A WideResNet-style stack: two residual blocks of pre-activation convs, pooled head."""
    keys = jax.random.split(jax.random.key(2), 6)
    params = {"stem": (jax.random.normal(keys[0], (3, 3, 3, 8)) / 5, jnp.zeros(8)),
              "blocks": [((jax.random.normal(keys[1 + 2 * i], (3, 3, 8, 8)) / 8, jnp.zeros(8)),
                          (jax.random.normal(keys[2 + 2 * i], (3, 3, 8, 8)) / 8, jnp.zeros(8)))
                         for i in range(2)],
              "head": (_glorot(keys[5], (8, K)), jnp.zeros(K))}

    def apply(p, x):
        h = _conv(x, *p["stem"])
        for a, b in p["blocks"]:
            h = h + _conv(jax.nn.relu(_conv(jax.nn.relu(h), *a)), *b)
        return jax.nn.relu(h).mean((1, 2)) @ p["head"][0] + p["head"][1]

    return from_apply(apply, batch_coupled=False), params, _images(), _labels(), False


# ----------------------------------------------------------------------------- Flax modules

def _flax(module, x, *, bn="train", rngs=None, coupled=False, **kw):
    net = from_flax(module, bn=bn, rngs=rngs, **kw)
    variables = jax.jit(module.init)({"params": jax.random.key(3), **(rngs or {})}, x)
    return net, variables["params"], x, _labels(x.shape[0]), coupled


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=2, kernel_dilation=2)(x))
        return nn.Dense(K)(x.reshape(x.shape[0], -1))


class FlaxResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        for _ in range(2):
            h = nn.relu(nn.BatchNorm(use_running_average=False)(x))
            h = nn.Conv(8, (3, 3), use_bias=False)(h)
            h = nn.relu(nn.BatchNorm(use_running_average=False)(h))
            x = x + nn.Conv(8, (3, 3), use_bias=False)(h)
        return nn.Dense(K)(x.mean((1, 2)))


class WithDenseGeneral(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))  # (N, 3, 3, 4)
        x = nn.relu(nn.DenseGeneral((2, 5), axis=(-2, -1))(x))  # (N, 3, 2, 5)
        return nn.DenseGeneral(K, axis=(1, 2, 3))(x)


class WithEinsum(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1, 3)
        x = nn.relu(nn.Einsum((3, 6), "nsc,cd->nsd")(x))
        return nn.Dense(K)(x.mean(1))


class WithEmbed(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(11, 6)(tokens)  # (N, L, 6)
        return nn.Dense(K)(nn.relu(nn.Dense(8)(x)).mean(1))


class WithConvTranspose(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.ConvTranspose(4, (2, 2), strides=(2, 2))(x))
        return nn.Dense(K)(x.mean((1, 2)))


class WithConvLocal(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.ConvLocal(4, (3, 3), padding="VALID")(x))
        return nn.Dense(K)(x.mean((1, 2)))


class WithAttention(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1, 3)  # 36 tokens of 3 features
        x = nn.Dense(8)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x)
        return nn.Dense(K)(x.mean(1))


class WithNorms(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x)))
        x = nn.LayerNorm()(nn.Dense(8)(x.mean((1, 2))))
        return nn.Dense(K)(nn.Dropout(0.5, deterministic=True)(x))


class WithDropout(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(K)(nn.Dropout(0.3, deterministic=False)(x))


class _Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return nn.tanh(nn.Dense(8)(h)), None


class WithScan(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x.reshape(x.shape[0], -1))
        h, _ = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=2)()(h, None)
        return nn.Dense(K)(h)


class WithRemat(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.remat(nn.Dense)(8)(x.reshape(x.shape[0], -1))
        return nn.Dense(K)(nn.relu(h))


class WithSharedLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(8)
        h = nn.relu(dense(nn.Dense(8)(x.reshape(x.shape[0], -1))))
        return nn.Dense(K)(nn.relu(dense(h)))


class WithPaddingModes(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="CIRCULAR")(x))
        x = nn.relu(nn.Conv(4, (3, 2), padding="REFLECT", kernel_dilation=(1, 2))(x))
        x = x.reshape(x.shape[0], -1, 4)  # a sequence of 36 positions
        x = nn.relu(nn.Conv(4, (3,), padding="CAUSAL", kernel_dilation=2)(x))
        return nn.Dense(K)(x.mean(1))


ZOO: dict[str, Callable[[], tuple]] = {
    "stax_fc": stax_fc,
    "stax_cnn": stax_cnn,
    "stax_wide_resnet": stax_wide_resnet,
    "flax_cnn": lambda: _flax(FlaxCNN(), _images(8, 8)),
    "flax_resnet_bn_train": lambda: _flax(FlaxResNet(), _images(), coupled=True),
    "flax_resnet_bn_eval": lambda: _flax(FlaxResNet(), _images(), bn="eval"),
    "dense_general": lambda: _flax(WithDenseGeneral(), _images()),
    "einsum": lambda: _flax(WithEinsum(), _images(4, 4)),
    "embed": lambda: _flax(WithEmbed(), jax.random.randint(jax.random.key(4), (N, 5), 0, 11)),
    "conv_transpose": lambda: _flax(WithConvTranspose(), _images(4, 4)),
    "conv_local": lambda: _flax(WithConvLocal(), _images(5, 5)),
    "attention": lambda: _flax(WithAttention(), _images()),
    "group_and_layer_norm": lambda: _flax(WithNorms(), _images()),
    "dropout_train_mode": lambda: _flax(WithDropout(), _images(4, 4),
                                        rngs={"dropout": jax.random.key(5)}, coupled=True),
    "scan": lambda: _flax(WithScan(), _images(4, 4)),
    "remat": lambda: _flax(WithRemat(), _images(4, 4)),
    "shared_layer": lambda: _flax(WithSharedLayer(), _images(4, 4)),
    "padding_modes": lambda: _flax(WithPaddingModes(), _images()),
}


# ----------------------------------------------------------------------------- oracles

IMPLEMENTATIONS = ("jacobian", "per_sample", "decomposition")
OUTPUTS = ("all", "sum", "label")
PARAMS = ("layers", "kernels", "all")


#: Models whose oracle runs in float32: a dropout mask drawn in float64 is another mask.
FLOAT32_ORACLE = frozenset({"dropout_train_mode"})


def oracle(net, params, x, y, output: str, which, per_sample: bool,
           dtype=jnp.float64) -> np.ndarray:
    """The NTK Gram by brute force (float64 by default): ``jax.jacrev`` of the batched function
    (``per_sample=False``) or of each sample alone, rows stacked, ``J J^T``; a float64 numpy
    array (M, M).

    Examples:
      >>> net, params, x, y, coupled = ZOO["stax_fc"]()
      >>> oracle(net, params, x, y, "label", "all", per_sample=False).shape   # N = 3 samples
      (3, 3)
    """
    with jax.enable_x64(dtype == jnp.float64):
        cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        p = jax.tree.map(cast, params)
        sel, merge = ntk.split_params(p, ntk.param_mask(p, which))
        xx = cast(x) if jnp.issubdtype(x.dtype, jnp.floating) else x

        @jax.jit
        def rows(s, xs, ys):
            jac = jax.jacrev(lambda s: ntk.select_outputs(net.apply(merge(s), xs), ys, output))(s)
            return jnp.concatenate([j.reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)], 1)

        r = np.asarray(jnp.concatenate([rows(sel, xx[i:i + 1], y[i:i + 1])
                                        for i in range(x.shape[0])])
                       if per_sample else rows(sel, xx, y), np.float64)
        return r @ r.T


def check(name: str, implementation: str, output: str, which, model: tuple | None = None,
          oracles: dict | None = None) -> tuple[str, float | str]:
    """``("ok", max relative error)`` of jhnas's Gram against :func:`oracle` (the decomposition
    with train-mode BatchNorm: of 1^T Theta 1 against ||dS/dtheta||^2, the one quantity it shares
    with the exact Jacobian), or ``("error", message)`` if jhnas refused. ``model``: the result
    of ``ZOO[name]()``, to build it once for several checks; ``oracles``: a dict that keeps the
    oracles computed, for several checks of one model, output and parameter choice.

    Examples:
      >>> status, error = check("stax_fc", "jacobian", "label", "all")
      >>> status, error < 1e-5
      ('ok', True)
    """
    net, params, x, y, _ = model or ZOO[name]()
    oracles = {} if oracles is None else oracles
    try:
        got = np.asarray(ntk.empirical_ntk_fn(net, implementation=implementation, output=output,
                                              params=which)(params, x, y), np.float64)
    except (ValueError, NotImplementedError) as e:
        return "error", str(e).split("\n")[0]
    batch_norm = name == "flax_resnet_bn_train"
    per_sample = implementation == "per_sample"
    if per_sample not in oracles:
        oracles[per_sample] = oracle(net, params, x, y, output, which, per_sample=per_sample,
                                     dtype=jnp.float32 if name in FLOAT32_ORACLE else jnp.float64)
    want = oracles[per_sample]
    if implementation == "decomposition" and batch_norm:
        return "ok", abs(got.sum() - want.sum()) / abs(want.sum())
    return "ok", float(np.abs(got - want).max() / np.abs(want).max())
