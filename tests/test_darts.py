"""The DARTS space: genotypes, the sampler, and the NTK engine on NetworkCIFAR."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import data, metrics, ntk
from jhnas.net import from_flax
from jhnas.spaces import darts


def test_sampler_draws_every_primitive_and_valid_inputs():
    seen = set()
    for i in range(40):
        g = darts.sample(jax.random.key(i), darts.PRIMITIVES)
        assert darts.validate(g) == g and darts.parse(repr(g)) == g
        seen |= {op for op, _ in g.normal + g.reduce}
        for cell in (g.normal, g.reduce):
            for n in range(darts.NODES):
                a, b = cell[2 * n][1], cell[2 * n + 1][1]
                assert a != b and max(a, b) < n + 2
    assert seen == set(darts.PRIMITIVES)  # dil_conv_5x5 included
    default = {op for i in range(40) for op, _ in darts.sample(jax.random.key(i)).normal}
    assert "none" not in default and len(default) == 7
    assert darts.sample(jax.random.key(3)) == darts.sample(jax.random.key(3))


OK = (("skip_connect", 0),) * 8


@pytest.mark.parametrize("normal, match", [
    ((("conv_7x7", 0),) * 8, "unknown op"), (OK[:7], "pairs"),
    ((("skip_connect", 2),) * 8, "input 2")])
def test_bad_genotypes_are_refused(normal, match):
    with pytest.raises(darts.GenotypeError, match=match):
        darts.validate(darts.Genotype(normal, (2, 3, 4, 5), OK, (2, 3, 4, 5)))
    with pytest.raises(darts.GenotypeError, match=match):
        darts.parse(repr(darts.Genotype(normal, (2, 3, 4, 5), OK, (2, 3, 4, 5))))
    with pytest.raises(darts.GenotypeError, match="not a DARTS genotype"):
        darts.parse("not a genotype")


def test_ntk_engine_and_metrics_work_unchanged():
    g = darts.sample(jax.random.key(0), darts.PRIMITIVES)
    b = data.default_batch(4)
    x = jnp.asarray(b.x[:, ::4, ::4])  # 8 x 8 images
    p = from_flax(darts.NetworkCIFAR(g, C=4, layers=3)).init(jax.random.key(1), x)
    net = from_flax(darts.NetworkCIFAR(g, C=4, layers=3), bn="none")  # no batch coupling
    assert net.apply(p, x).shape == (4, 10)
    dec = ntk.empirical_ntk_fn(net, implementation="decomposition")(p, x, b.y)
    exact = from_flax(darts.NetworkCIFAR(g, C=4, layers=3), bn="none", batch_coupled=True)
    jac = ntk.empirical_ntk_fn(exact, implementation="jacobian")(p, x, b.y)  # row by row
    np.testing.assert_allclose(dec, jac, rtol=1e-5, atol=1e-5 * float(jnp.abs(jac).max()))
    vals = metrics.metrics_fn(from_flax(darts.NetworkCIFAR(g, C=4, layers=3)),
                              ["ntk_trace", "ntk_cond", "grad_norm", "synflow"])(
        p, data.Batch(x, b.y))
    assert all(np.isfinite(v) and v > 0 for v in vals.values())
