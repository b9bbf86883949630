"""The details of Flax and jax that jhnas relies on and that they do not expose publicly.

Everything here is checked against the installed versions rather than assumed from a version
number: :func:`check_rng_path_hash` compares the copy of Flax's key derivation with Flax itself
(once per process, before :func:`jhnas.net.block_init` first uses it; also run by
``tests/test_compat.py``), and the names are looked up with fallbacks. The optional
neural-tangents backend has its own adapter, :mod:`jhnas._nt_compat`.

* :func:`rng_path_hash`: the 32-bit number Flax folds into a root key for a parameter's module
  path and ``make_rng`` counter (``flax.core.scope._fold_in_static``, with the separator of
  ``flax.config.flax_fix_rng_separator``). :func:`jhnas.net.block_init` derives every
  parameter's key this way, so that a network composed of compiled blocks initialises exactly as
  the monolithic module's ``init`` would, without tracing it.
* :func:`canonicalize_padding`: Flax's normalisation of a ``Conv`` padding argument
  (``flax.linen.linear.canonicalize_padding``: not underscored, but not re-exported by
  ``flax.linen``), used to describe tapped convolutions.
* :data:`BACKEND_COMPILE_EVENT`: the ``jax.monitoring`` event of an XLA compilation (the tests
  and benchmarks count compilations with it).
"""
from __future__ import annotations

import functools
import hashlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding  # noqa: F401  (not re-exported by flax.linen)

#: The Flax versions on which :func:`check_rng_path_hash` was last seen to pass in CI (the lowest
#: and the newest declared/tested); any other version is checked at run time all the same.
FLAX_TESTED = ("0.12.8", "0.12.12")

#: The ``jax.monitoring`` event of a backend (XLA) compilation: ``jax._src.dispatch``'s name
#: for it when it is there, else its value in jax 0.10.2-0.12.1.
try:
    from jax._src.dispatch import BACKEND_COMPILE_EVENT
except ImportError:  # pragma: no cover
    BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _fix_rng_separator() -> bool:
    """``flax.config.flax_fix_rng_separator`` (False if this Flax has no such flag)."""
    return bool(getattr(flax.config, "flax_fix_rng_separator", False))


def rng_path_hash(parts) -> int:
    """The 32-bit number Flax folds into the root key for a parameter's module path and counter:
    the first 4 bytes (big-endian) of the SHA-1 of the parts, strings UTF-8, integers as
    minimal big-endian bytes, each part preceded by a zero byte under
    ``flax_fix_rng_separator``. The key is ``jax.random.fold_in(root, rng_path_hash(path +
    (counter,)))``."""
    sep = _fix_rng_separator()
    m = hashlib.sha1()
    for part in parts:
        if sep:
            m.update(b"\0")
        m.update(part.encode("utf-8") if isinstance(part, str)
                 else part.to_bytes((part.bit_length() + 7) // 8, "big"))
    return int.from_bytes(m.digest()[:4], "big")


@functools.lru_cache(maxsize=None)
def _check(sep: bool) -> None:
    class Leaf(nn.Module):
        @nn.compact
        def __call__(self):
            # two make_rng calls in one scope: counters 1 and 2
            return (self.param("a", jax.random.key_data), self.param("b", jax.random.key_data))

    class Mid(nn.Module):
        @nn.compact
        def __call__(self):
            return Leaf(name="c")()

    class Top(nn.Module):
        @nn.compact
        def __call__(self):
            # paths ("ab", "c") and ("a", "bc") differ only by the separator
            return Mid(name="ab")(), Leaf(name="a")(), Leaf(name="bc")()

    with jax.ensure_compile_time_eval():
        key = jax.random.key(20240917)
        got = Top().init(key)["params"]
        paths = {("ab", "c"): got["ab"]["c"], ("bc",): got["bc"]}
        for path, leaves in paths.items():
            for counter, name in ((1, "a"), (2, "b")):
                want = jax.random.key_data(
                    jax.random.fold_in(key, rng_path_hash(path + (counter,))))
                if not bool(jnp.all(leaves[name] == want)):
                    raise RuntimeError(
                        f"flax {flax.__version__} derives parameter keys differently from the "
                        f"copy in jhnas._compat.rng_path_hash (checked on flax "
                        f"{', '.join(FLAX_TESTED)}): jhnas.net.block_init would not reproduce "
                        f"module.init. Install a tested flax (pip install 'flax=="
                        f"{FLAX_TESTED[-1]}') or report this to jhnas.")


def check_rng_path_hash() -> None:
    """Raises RuntimeError if :func:`rng_path_hash` does not give the keys the installed Flax
    gives its parameters (for Flax's current ``flax_fix_rng_separator``); cached per setting."""
    _check(_fix_rng_separator())
