"""The optional neural-tangents backend against jhnas's own NTK implementations.

Skipped when neural-tangents is not installed (``pip install --no-deps neural-tangents==0.6.5
frozendict``).
"""
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import _nt_compat
from jhnas import nn as jnn
from jhnas import ntk
from jhnas.net import from_flax

if not _nt_compat.available():  # importorskip would import it raw, which needs tensorflow
    pytest.skip("neural-tangents is not installed", allow_module_level=True)


class BNNet(nn.Module):
    """Strided and grouped convs, pooling (lax and NB201's shifted slices), train-mode
    BatchNorm (couples the samples)."""

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 6, 3, padding=1, use_bias=True)(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        x = jnn.relu(self, x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = jnn.avg_pool_3x3(x)
        x = jnn.Conv(6, 6, 3, strides=2, padding=1, groups=3, use_bias=True)(x)
        return jnn.Dense(6, 3)(x.mean((1, 2)))


@pytest.fixture(scope="module")
def setup():
    net = from_flax(BNNet())
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 3))
    y = jnp.arange(4) % 3
    return net, net.init(jax.random.key(0), x), x, y


def _close(got, ref):
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5 * float(jnp.abs(ref).max()))


# (jhnas implementation, neural-tangents implementation, output, parameter set); "auto" only
# picks one of the other three by FLOP count (and compiles all three to count), so it is left out
CASES = [("jacobian", "structured_derivatives", "label", "layers"),
         ("jacobian", "jacobian_contraction", "label", "layers"),
         ("jacobian", "ntk_vector_products", "label", "layers"),
         ("per_sample", "structured_derivatives", "label", "layers"),
         ("jacobian", "structured_derivatives", "all", "kernels")]


@pytest.mark.parametrize("impl,nt_impl,output,which", CASES)
def test_matches_jhnas(setup, impl, nt_impl, output, which):
    """Same NTK as jhnas's implementation of the same semantics (train-mode BatchNorm: the
    batched Jacobian couples samples, per_sample normalises each sample alone)."""
    net, params, x, y = setup
    kw = dict(implementation=impl, output=output, params=which)
    ref = ntk.empirical_ntk_fn(net, **kw)(params, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neural-tangents' own deprecation noise
        got = ntk.empirical_ntk_fn(net, backend="neural_tangents", nt_implementation=nt_impl,
                                   **kw)(params, x, y)
    assert got.shape == ref.shape == ((12, 12) if output == "all" else (4, 4))
    _close(got, ref)


def test_decomposition_is_refused(setup):
    net = setup[0]
    with pytest.raises(ValueError, match="decomposition"):
        ntk.empirical_ntk_fn(net, backend="neural_tangents")
    with pytest.raises(ValueError, match="backend"):
        ntk.empirical_ntk_fn(net, backend="torch")


def test_jax_is_left_unpatched():
    import sys

    import jax.core
    _nt_compat.load()
    assert not hasattr(jax.core, "Jaxpr") and "jax.util" not in sys.modules
