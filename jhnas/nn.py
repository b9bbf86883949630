"""Flax building blocks shared by the search spaces.

* ``Conv`` / ``Dense``: ``flax.linen`` layers with PyTorch's default initialisation
  (``kaiming_uniform(a=sqrt(5))`` for the kernel, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the
  same bound for the bias), so metric values are comparable with the official PyTorch code.
* ``relu(module, x)``: a ReLU that records its input in the ``"relu_inputs"`` collection; NASWOT
  reads the activation codes from there.

They are plain subclasses of ``nn.Conv`` / ``nn.Dense``, so :func:`jhnas.net.from_flax` taps them
like any other Flax layer.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

RELU_INPUTS = "relu_inputs"

#: Kernel initialiser equal to PyTorch's ``kaiming_uniform_(w, a=sqrt(5))``: U(-1/sqrt(fan_in), +).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """PyTorch's default bias initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def Conv(in_features: int, features: int, kernel_size: int | Sequence[int], *, strides=1,
         padding=0, use_bias: bool = False, groups: int = 1, dilation=1, name=None) -> nn.Conv:
    """``nn.Conv`` (NHWC) with PyTorch's default initialisation and PyTorch-style integer padding."""
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    fan_in = (in_features // groups) * math.prod(ks)
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
    return nn.Conv(features, ks, strides=strides, padding=pad, use_bias=use_bias,
                   feature_group_count=groups, kernel_dilation=dilation,
                   kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name=name)


def Dense(in_features: int, features: int, *, use_bias: bool = True, name=None) -> nn.Dense:
    """``nn.Dense`` with PyTorch's default ``nn.Linear`` initialisation."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(in_features), name=name)


def relu(module: nn.Module, x: jax.Array) -> jax.Array:
    """ReLU applied inside ``module``; records ``x`` (the pre-activation) for NASWOT.

    Recording is free unless the ``"relu_inputs"`` collection is mutable in ``apply``.
    """
    module.sow(RELU_INPUTS, "relu_in", x)
    return jax.nn.relu(x)
