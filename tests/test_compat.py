"""jhnas._compat on the installed Flax/jax: the copy of Flax's parameter-key derivation, and the
BatchNorm mode override of jhnas.net (public Flax API only), against Flax's own behaviour."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import _compat
from jhnas.net import Block, block_init, bn_mode, from_flax


@pytest.mark.smoke
@pytest.mark.parametrize("separator", [False, True])
def test_rng_path_hash_equals_flax(separator):
    """rng_path_hash gives the keys Flax gives its parameters, with and without Flax's
    flax_fix_rng_separator (paths that differ only by the separator included)."""
    saved = flax.config.flax_fix_rng_separator
    flax.config.update("flax_fix_rng_separator", separator)
    try:
        _compat._check.cache_clear()
        _compat.check_rng_path_hash()
    finally:
        flax.config.update("flax_fix_rng_separator", saved)
        _compat._check.cache_clear()


def test_rng_path_hash_mismatch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_compat, "rng_path_hash", lambda parts: 7)
    _compat._check.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="derives parameter keys differently"):
            _compat.check_rng_path_hash()
    finally:
        _compat._check.cache_clear()


class Body(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=False, name="bn")(x)
        return nn.Dense(3, name="head")(x.mean((1, 2)))


class Whole(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Body(name="b0")(x)


def test_block_init_equals_module_init():
    """block_init (keys from the copy of Flax's hash, no tracing) == Flax's module.init."""
    x = jnp.zeros((2, 6, 6, 3))
    init = block_init([Block(Body(), ("b0",), 0, 1)])
    for key in (jax.random.key(0), jax.random.key(11), jax.random.PRNGKey(3)):
        want = Whole().init(key, x)["params"]
        jax.tree.map(np.testing.assert_array_equal, init(key, x), want)


class WithBN(nn.Module):
    attr: bool | None

    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=self.attr, momentum=0.8, name="bn")(x)


class ArgBN(nn.Module):
    """Flax's own BatchNorm, the mode passed as the call argument."""
    mode: bool

    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(momentum=0.8, name="bn")(x, use_running_average=self.mode)


@pytest.mark.parametrize("attr", [None, False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bn_mode_override_equals_flax(attr, mode):
    """Whatever the module's use_running_average attribute, bn_mode gives Flax's own BatchNorm
    in that mode: the same outputs and the same updated running statistics, bit for bit."""
    x = jax.random.normal(jax.random.key(1), (5, 3, 3, 4)) * 2 + 1
    stats = {"batch_stats": {"bn": {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 2.0)}}}
    params = ArgBN(mode == "eval").init(jax.random.key(0), x)["params"]
    want, want_upd = ArgBN(mode == "eval").apply({"params": params, **stats}, x,
                                                 mutable=["batch_stats"])
    with bn_mode(mode):
        got, got_upd = WithBN(attr).apply({"params": params, **stats}, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(got, want)
    jax.tree.map(np.testing.assert_array_equal, got_upd, want_upd)
    # and through from_flax, under jit (against Flax's own under jit: XLA fuses differently)
    net = from_flax(WithBN(attr), bn=mode, state=stats)
    want_jit = jax.jit(lambda p, x: ArgBN(mode == "eval").apply(
        {"params": p, **stats}, x, mutable=["batch_stats"])[0])(params, x)
    np.testing.assert_array_equal(jax.jit(net.apply)(params, x), want_jit)
    with bn_mode(mode):  # init through the override: the same variables as Flax's own
        got_init = WithBN(attr).init(jax.random.key(0), x)
    want_init = ArgBN(mode == "eval").init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, got_init, want_init)


@pytest.mark.smoke
def test_import_and_declared_versions():
    """jhnas imports, and the installed jax, jaxlib, flax and optax are in the declared ranges."""
    from importlib import metadata

    from packaging.requirements import Requirement

    import jhnas
    assert jhnas.__version__ == metadata.version("jhnas")
    checked = set()
    for req in map(Requirement, metadata.requires("jhnas")):
        if req.marker is None:  # not an extra
            assert req.specifier.contains(metadata.version(req.name), prereleases=True), req
            checked.add(req.name)
    assert {"jax", "jaxlib", "flax", "optax"} <= checked
