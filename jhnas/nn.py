"""Flax building blocks shared by the search spaces.

* ``Conv`` / ``Dense``: ``flax.linen`` layers with PyTorch's default initialisation
  (``kaiming_uniform(a=sqrt(5))`` for the kernel, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the
  same bound for the bias), so metric values are comparable with the official PyTorch code.
* ``relu(module, x)``: a ReLU that records its input in the ``"relu_inputs"`` collection; NASWOT
  reads the activation codes from there.
* ``chunked_conv``: ``lax.conv_general_dilated`` whose weight gradient is summed over chunks of
  the batch (the convolution of ``Conv``; same values).
* ``avg_pool_3x3``: PyTorch's ``AvgPool2d(3, stride, 1, count_include_pad=False)`` as shifted
  slices instead of ``reduce_window``; ``avg_pool_2x2``: ``AvgPool2d(2, 2)`` as a reshaped mean.

Why these forms (XLA:CPU's convolution gradient and ``reduce_window``), with the benchmarks that
measured them, is in the design notes of the documentation.

They are plain subclasses of ``nn.Conv`` / ``nn.Dense``, so :func:`jhnas.net.from_flax` taps them
like any other Flax layer.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from flax.typing import PaddingLike
from jax import lax
from jax.custom_derivatives import SymbolicZero

RELU_INPUTS = "relu_inputs"

#: Eager draws of :func:`_uniform` are made in sizes _DRAW_MIN * _DRAW_STEP**k (a draw of 4096
#: values costs what one of 256 does, about 50 us on CPU, and each size is a compilation).
_DRAW_MIN, _DRAW_STEP = 4096, 4


def _draw_size(n: int) -> int:
    size = _DRAW_MIN
    while size < n:
        size *= _DRAW_STEP
    return size


def _prefix_stable(key: jax.Array) -> bool:
    """True if ``uniform(key, (m,))[:n] == uniform(key, (n,))`` for m >= n: threefry with
    ``jax_threefry_partitionable`` (JAX's default), whose i-th value depends only on the key and
    i."""
    # jax.config's options are attributes set at run time, unknown to its class's type
    if not jax.config.jax_threefry_partitionable:  # pyright: ignore[reportAttributeAccessIssue]
        return False
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = (jax.random.key_impl(key) if typed
            else jax.config.jax_default_prng_impl)  # pyright: ignore[reportAttributeAccessIssue]
    return "threefry" in str(impl)


def _uniform(key: jax.Array, shape: Sequence[int], dtype: Any, minval: float, maxval: float,
             scale: Any = 1) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval) * scale``, the same values.

    Run eagerly, ``jax.random.uniform`` compiles one program per shape: most of a network's first
    initialisation (:func:`jhnas.net.block_init`). Here an eager draw
    is the first ``prod(shape)`` values of a flat draw of size 4096 * 4**k, sliced, reshaped and
    scaled in NumPy (the same float32 product), so a whole search space compiles a few random
    programs. Under a trace, or where the prefix property fails (:func:`_prefix_stable`), it is
    the plain draw.
    """
    shape = tuple(shape)
    if isinstance(key, jax.core.Tracer) or not _prefix_stable(key):
        return jax.random.uniform(key, shape, dtype, minval, maxval) * scale
    n = math.prod(shape)
    flat = np.asarray(_flat_uniform(key, _draw_size(n), dtype, minval, maxval))
    # device_put, unlike jnp.asarray, compiles nothing per shape
    return jax.device_put(flat[:n].reshape(shape) * np.asarray(scale, flat.dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _flat_uniform(key: jax.Array, size: int, dtype: Any, minval: float, maxval: float
                  ) -> jax.Array:
    # jax.random.uniform's own argument checks cost more than the draw of a small layer
    return jax.random.uniform(key, (size,), dtype, minval, maxval)


def torch_kernel_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32
                      ) -> jax.Array:
    """PyTorch's ``kaiming_uniform_(w, a=sqrt(5))``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in
    the product of all but the last (output) axis; the values of
    ``nn.initializers.variance_scaling(1/3, "fan_in", "uniform")``.

    Examples:
      >>> import jax, numpy as np
      >>> w = torch_kernel_init(jax.random.key(0), (3, 3, 16, 8))   # fan_in 144: bound 1/12
      >>> w.shape, w.dtype, bool(np.abs(w).max() <= 1 / 12)
      ((3, 3, 16, 8), dtype('float32'), True)
    """
    variance = np.asarray(1.0 / 3.0 / math.prod(shape[:-1]), dtype=dtype)
    return _uniform(key, shape, dtype, -1.0, 1.0, scale=np.sqrt(np.asarray(3, dtype) * variance))


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, -bound, bound)

    return init


#: Samples per chunk of :func:`chunked_conv`'s weight gradient.
CONV_CHUNK = 8
#: Inputs with at most this many positions per sample keep XLA's weight gradient by default:
#: on NB201's 8x8 stage chunks are no faster (bench/results/xla_conv_grad.md), and the chunked
#: programs take longer to compile (about 1 s less over NB201's blocks, same run time).
UNCHUNKED_POSITIONS = 64


def chunked_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any, *,
                 dimension_numbers: Any = None, chunk: int | None = None, **kwargs: Any
                 ) -> jax.Array:
    r"""``lax.conv_general_dilated`` (same arguments) with the weight gradient computed in chunks.

    The reverse-mode weight gradient of a convolution is :math:`\sum_n x_n \star dy_n`, which
    XLA:CPU computes for the whole batch at once. Here the JVP w.r.t. the kernel is written as the
    concatenation of the convolutions of ``chunk``-sample slices of the batch, so its transpose
    (the weight gradient) is a sum of small convolutions; forward, input gradient, ``jvp`` and
    higher derivatives are unchanged, and the values equal ``lax``'s up to the summation order.
    ``chunk=None``: :data:`CONV_CHUNK`, or no chunks for inputs of at most
    :data:`UNCHUNKED_POSITIONS` positions per sample. Without a batch axis first in the input and
    output, or with at most ``chunk`` samples, it is ``lax.conv_general_dilated`` itself.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2))
      >>> w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
      >>> dn = ("NHWC", "HWIO", "NHWC")
      >>> grad = lambda f, **kw: jax.grad(
      ...     lambda w: f(x, w, (1, 1), "SAME", dimension_numbers=dn, **kw).sum())(w)
      >>> g = grad(chunked_conv, chunk=2)   # the weight gradient as 2 chunks of 2 samples
      >>> bool(jnp.allclose(g, grad(jax.lax.conv_general_dilated), rtol=1e-4, atol=1e-4))
      True
    """
    conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides,
                             padding=padding, dimension_numbers=dimension_numbers, **kwargs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    n = lhs.shape[0]
    if chunk is None:
        positions = math.prod(lhs.shape[i] for i in dn.lhs_spec[2:])
        chunk = n if positions <= UNCHUNKED_POSITIONS else CONV_CHUNK
    if dn.lhs_spec[0] != 0 or dn.out_spec[0] != 0 or n <= chunk:
        return conv(lhs, rhs)

    @jax.custom_jvp
    def f(x, w):
        return conv(x, w)

    def jvp(primals, tangents):
        (x, w), (dx, dw) = primals, tangents
        y = conv(x, w)
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(conv(dx, w))
        if not isinstance(dw, SymbolicZero):
            terms.append(jnp.concatenate([conv(x[i:i + chunk], dw) for i in range(0, n, chunk)]))
        return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)

    f.defjvp(jvp, symbolic_zeros=True)
    return f(lhs, rhs)


def Conv(in_features: int, features: int, kernel_size: int | Sequence[int], *,
         strides: int | Sequence[int] = 1, padding: PaddingLike = 0,
         use_bias: bool = False, groups: int = 1, dilation: int | Sequence[int] = 1,
         name: str | None = None) -> nn.Conv:
    """``nn.Conv`` (NHWC) with PyTorch's default initialisation, PyTorch-style integer padding and
    :func:`chunked_conv`.

    Arguments as ``torch.nn.Conv2d``'s (``padding`` an int, or Flax's per-axis ``(low, high)``
    pairs); ``in_features`` sets the bias bound 1/sqrt(fan_in). Returns a plain ``nn.Conv``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> conv = Conv(3, 8, 3, padding=1, use_bias=True)
      >>> params = conv.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))["params"]
      >>> params["kernel"].shape, params["bias"].shape
      ((3, 3, 3, 8), (8,))
    """
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    fan_in = (in_features // groups) * math.prod(ks)
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
    return nn.Conv(features, ks, strides=strides, padding=pad, use_bias=use_bias,
                   feature_group_count=groups, kernel_dilation=dilation,
                   kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in),
                   conv_general_dilated=chunked_conv, name=name)


def Dense(in_features: int, features: int, *, use_bias: bool = True, name: str | None = None
          ) -> nn.Dense:
    """``nn.Dense`` with PyTorch's default ``nn.Linear`` initialisation (kernel and bias
    U(-1/sqrt(in_features), 1/sqrt(in_features))); returns a plain ``nn.Dense``."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(in_features), name=name)


def relu(module: nn.Module, x: jax.Array) -> jax.Array:
    """ReLU applied inside ``module``; records ``x`` (the pre-activation) for NASWOT.

    Recording is free unless the ``"relu_inputs"`` collection is mutable in ``apply``.

    Examples:
      >>> import flax.linen as nn, jax.numpy as jnp
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return relu(self, nn.Dense(2)(x))
      >>> net = Net()
      >>> variables = net.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> _, rec = net.apply(variables, jnp.ones((1, 3)), mutable=[RELU_INPUTS])
      >>> rec[RELU_INPUTS]["relu_in"][0].shape
      (1, 2)
    """
    module.sow(RELU_INPUTS, "relu_in", x)
    return jax.nn.relu(x)


def avg_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
    """3x3 average pool, zero padding 1, padded cells not counted: (N, H, W, C) -> (N, H', W', C).

    ``H' = (H - 1) // stride + 1``. The window sum is three shifted slices along H, then three
    along W; the divisor (9 inside, 6 on edges, 4 in corners) is a constant. Same values as
    ``flax.linen.avg_pool(..., count_include_pad=False)`` up to float rounding.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> avg_pool_3x3(x)[0, :, :, 0]
      Array([[ 2.5,  3. ,  4. ,  4.5],
             [ 4.5,  5. ,  6. ,  6.5],
             [ 8.5,  9. , 10. , 10.5],
             [10.5, 11. , 12. , 12.5]], dtype=float32)
      >>> avg_pool_3x3(x, stride=2).shape
      (1, 2, 2, 1)
    """
    h, w = x.shape[1:3]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1

    def window_sum(a: Any, pad: Callable[[Any], Any]) -> Any:
        a = pad(a)
        a = sum(a[:, i:i + stride * (ho - 1) + 1:stride] for i in range(3))
        return sum(a[:, :, j:j + stride * (wo - 1) + 1:stride] for j in range(3))

    count = window_sum(np.ones((1, h, w, 1)), lambda a: np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0))))
    total = window_sum(x, lambda a: jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0))))
    return total * jnp.asarray(1.0 / count, x.dtype)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pool, stride 2, no padding: (N, H, W, C) -> (N, H // 2, W // 2, C).

    The mean over the reshaped (N, H/2, 2, W/2, 2, C) array (a trailing odd row or column is
    dropped, as ``flax.linen.avg_pool`` does); its gradient is a broadcast, where
    ``reduce_window``'s is a padded window sum.

    Examples:
      >>> import jax.numpy as jnp
      >>> avg_pool_2x2(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
      Array([[ 2.5,  4.5],
             [10.5, 12.5]], dtype=float32)
    """
    n, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
