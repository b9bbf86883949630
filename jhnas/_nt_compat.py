# pyright: reportGeneralTypeIssues=false, reportPrivateImportUsage=false, reportAttributeAccessIssue=false
# (jax internals that differ between the jax versions this adapter supports; checked by its tests)
"""Import neural-tangents 0.6.5 on the current jax (the optional ``backend="neural_tangents"``).

neural-tangents 0.6.5 (the last release, 2023) was written for jax 0.4. On jax 0.10 its imports
fail (names moved from ``jax.core`` to ``jax.extend.core``, ``jax.util`` is gone, a few private
``jax.interpreters.ad`` names were removed) and its structured-derivatives path calls the old
``ad.linearize`` (different signature and return value). Its package metadata also pulls
tensorflow (~2 GB), used only by ``neural_tangents.experimental``.

Install it without its dependencies::

    pip install --no-deps neural-tangents==0.6.5 frozendict

:func:`load` then imports it:

* the moved names are put back *only while neural-tangents is imported* and removed afterwards,
  so jax itself is left as it was;
* the neural-tangents modules get private stand-ins for ``jax.core`` / ``jax.interpreters.ad``
  that add the few names they look up at run time;
* three of its internal functions are replaced by versions written for the current jax: the
  linearisation behind structured derivatives, the per-equation transpose and the FLOP count used
  by ``NtkImplementation.AUTO``;
* without tensorflow, ``neural_tangents.experimental`` is a stub that raises on use.

Checked against jhnas's own NTK implementations by ``tests/test_nt_backend.py``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
import types
from typing import Any

INSTALL = "pip install frozendict && pip install --no-deps neural-tangents==0.6.5"
#: The neural-tangents release this adapter is written for (its internal functions are replaced).
NT_VERSION = "0.6.5"
#: The jax versions on which tests/test_nt_backend.py passed with this adapter.
JAX_TESTED = ("0.10.2", "0.12.1")
_LOADED = None


def available() -> bool:
    """Whether neural-tangents is installed (it may still fail to load)."""
    return importlib.util.find_spec("neural_tangents") is not None


def version() -> str | None:
    if not available():
        return None
    from importlib import metadata
    return metadata.version("neural-tangents")


def load():
    """The ``neural_tangents`` module, imported and adapted to the current jax (once).

    Raises ImportError (with the install command) when it is not installed.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    if not available():
        raise ImportError(f"neural-tangents is not installed; install it with `{INSTALL}`")
    if version() != NT_VERSION:
        raise ImportError(f"jhnas adapts neural-tangents {NT_VERSION} to the current jax; "
                          f"{version()} is installed: `{INSTALL}`")
    import jax
    try:
        _check_internals()
        with _import_shims():
            nt = importlib.import_module("neural_tangents")
        _adapt(nt)
    except (ImportError, AttributeError, TypeError, KeyError) as e:
        # the jax internals the adapter uses (jax._src, jax.interpreters.ad) moved
        raise ImportError(
            f"jhnas could not adapt neural-tangents {NT_VERSION} to jax {jax.__version__} "
            f"(tested on jax {', '.join(JAX_TESTED)}): {type(e).__name__}: {e}") from e
    _LOADED = nt
    return nt


# ----------------------------------------------------------------------------- import time

@contextlib.contextmanager
def _import_shims():
    """Temporarily provides the names neural-tangents imports from old jax; removes them after."""
    import jax
    import jax.core
    import jax.extend.core as ext_core
    from jax._src import util as jax_util
    from jax.interpreters import ad

    added: list[tuple[object, str]] = []

    def add(obj, name, value):
        if not hasattr(obj, name):
            setattr(obj, name, value)
            added.append((obj, name))

    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive", "ClosedJaxpr"):
        add(jax.core, name, getattr(ext_core, name))
    add(ad, "zeros_like_p", _zeros_like_p())
    saved_util = sys.modules.get("jax.util")
    if saved_util is None:
        util: Any = types.ModuleType("jax.util")  # given attributes below
        util.safe_map, util.safe_zip = jax_util.safe_map, jax_util.safe_zip
        sys.modules["jax.util"] = util
        add(jax, "util", util)
    if importlib.util.find_spec("tensorflow") is None and \
            "neural_tangents.experimental" not in sys.modules:
        sys.modules["neural_tangents.experimental"] = _experimental_stub()
    try:
        yield
    finally:
        for obj, name in reversed(added):
            delattr(obj, name)
        if saved_util is None:
            sys.modules.pop("jax.util", None)


@functools.lru_cache(maxsize=None)
def _zeros_like_p():
    """Stands in for the removed ``ad.zeros_like_p``: a dict key in neural-tangents' rule
    tables, never bound (jax no longer emits such a primitive)."""
    import jax.extend.core as ext_core
    return ext_core.Primitive("jhnas_nt_compat_zeros_like")


def _experimental_stub() -> types.ModuleType:
    mod = types.ModuleType("neural_tangents.experimental")

    def __getattr__(name):
        raise ImportError("neural_tangents.experimental needs tensorflow, which jhnas does not "
                          "install")

    mod.__getattr__ = __getattr__
    return mod


# ----------------------------------------------------------------------------- run time

class _Proxy(types.ModuleType):
    """A stand-in for a jax module inside neural-tangents: the module plus a few extra names."""

    def __init__(self, base: types.ModuleType, extras: dict):
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(extras)

    def __getattr__(self, name):
        return getattr(self._base, name)


class _NoDynamicShapes:
    """``core.DShapedArray`` no longer exists; nothing is ever an instance of this."""


def _adapt(nt) -> None:
    import jax
    import jax.core
    import jax.extend.core as ext_core
    from jax._src import source_info_util
    from jax.interpreters import ad

    core_proxy = _Proxy(jax.core, {
        **{n: getattr(ext_core, n) for n in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive")},
        "DShapedArray": _NoDynamicShapes,
        "get_aval": jax.typeof,
        "lattice_join": lambda a, b: a,
    })
    ad_proxy = _Proxy(ad, {
        "source_info_util": source_info_util,
        "config": jax.config,
        "zeros_like_p": _zeros_like_p(),
        "reducing_transposes": {},
    })
    for name, mod in list(sys.modules.items()):
        if not name.startswith("neural_tangents") or not isinstance(mod, types.ModuleType):
            continue
        for attr, value in list(vars(mod).items()):
            if value is jax.core:
                setattr(mod, attr, core_proxy)
            elif value is ad:
                setattr(mod, attr, ad_proxy)
    emp: Any = sys.modules["neural_tangents._src.empirical"]  # its functions are replaced
    emp._get_primals_out_and_pullback = functools.partial(_primals_out_and_pullback, emp)
    emp._eqn_vjp_fn = _eqn_vjp_fn
    emp._get_flops = _get_flops


def _primals_out_and_pullback(emp, fn, mode, _j_rules, _s_rules, _fwd, *primals_in):
    """Outputs of ``fn`` and neural-tangents' structured "pullback", on the current
    ``jax.interpreters.ad.linearize`` (which takes a FlatTree of primals and returns which outputs
    have zero tangents instead of partial values)."""
    import jax
    from jax.interpreters import ad

    leaves, in_tree = jax.tree.flatten(primals_in)
    with jax.disable_jit():
        out_ft, out_zero, jaxpr, consts, *_ = ad.linearize(
            lambda *flat: fn(*jax.tree.unflatten(in_tree, flat)), _flat_tree(tuple(leaves)))
    if len(jaxpr.constvars) != len(consts):
        # jax 0.12.1 returns the linear jaxpr with its consts bound by the leading invars (its
        # Jaxpr and ClosedJaxpr are one class); attaching them makes those invars constvars, as
        # jax 0.10.2 returns them and neural-tangents' backward pass reads them
        import jax.extend.core as ext_core
        jaxpr = ext_core.ClosedJaxpr(jaxpr, consts)
    primals_out = out_ft.unflatten()

    def pullback(*cts_in):
        cts = jax.tree.leaves(cts_in)
        cts = tuple(ct for ct, zero in zip(cts, out_zero) if not zero)
        dummies = [ad.UndefinedPrimal(v.aval) for v in jaxpr.invars]
        cts_out = emp._backward_pass(jaxpr, mode=mode, consts=consts, primals_in=dummies,
                                     cotangents_in=cts, _j_rules=_j_rules, _s_rules=_s_rules,
                                     _fwd=_fwd)
        return jax.tree.unflatten(in_tree, cts_out)

    return primals_out, pullback


def _flat_tree(tree):
    """jax's internal ``FlatTree`` of ``tree``, which ``ad.linearize`` takes: in
    ``jax._src.flattree`` (jax 0.12.1), before that a static method of
    ``jax._src.tree_util.FlatTree`` (jax 0.10.2)."""
    try:
        from jax._src import flattree
    except ImportError:
        from jax._src.tree_util import FlatTree
        return FlatTree.flatten(tree)
    return flattree.flatten(tree)


def _check_internals() -> None:
    """Looks up every jax internal the adapted functions use, so that a jax that moved one fails
    in :func:`load` with its name rather than in the middle of a kernel computation."""
    from jax._src import source_info_util
    from jax._src.interpreters import ad as ad_src
    from jax.interpreters import ad
    for obj, name in ((ad, "linearize"), (ad, "get_primitive_transpose"),
                      (ad, "UndefinedPrimal"), (ad_src, "fancy_transposes"),
                      (ad_src, "primitive_transposes"), (ad_src, "ValAccum"),
                      (source_info_util, "user_context"),
                      (source_info_util, "current_name_stack")):
        getattr(obj, name)
    _flat_tree(())


def _eqn_vjp_fn(eqn, cts_in, *invals):
    """The transpose of one linear equation (``eqn=None``: identity)."""
    from jax._src import source_info_util
    from jax._src.interpreters import ad as ad_src
    from jax.interpreters import ad
    if eqn is None:
        return (cts_in,)
    with source_info_util.user_context(eqn.source_info.traceback,
                                       name_stack=source_info_util.current_name_stack()
                                       + eqn.source_info.name_stack):
        fancy = ad_src.fancy_transposes.get(eqn.primitive)
        if fancy is None or eqn.primitive in ad_src.primitive_transposes:
            return ad.get_primitive_transpose(eqn.primitive)(cts_in, *invals, **eqn.params)
        # current jax registers some transposes (slice, ...) only in the accumulator style
        accums = [ad_src.ValAccum(v.aval) if isinstance(v, ad.UndefinedPrimal) else v
                  for v in invals]
        fancy(cts_in, *accums, **eqn.params)
        return [a.freeze() if isinstance(a, ad_src.ValAccum) else None for a in accums]


def _get_flops(f, optimize: bool, *a, **kw) -> float:
    import jax
    lowered = jax.jit(f).lower(*a, **kw)
    analysis = lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
    if analysis is None:  # documented: no cost analysis on this backend, as without "flops"
        return 0.0
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))

