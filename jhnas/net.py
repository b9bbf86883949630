"""Networks as bundles of pure functions of ``(params, x)``.

The metrics and the NTK engine need more than ``logits = f(params, x)``: the official per-sample
NTK decomposition and Fisher read each Conv/Linear layer's input, output and output cotangent
(PyTorch hooks in the official code), NASWOT reads the ReLU inputs, SynFlow runs the network with
BatchNorm switched off. :func:`from_flax` builds all of these from any Flax module with
``flax.linen.intercept_methods``, without touching the module's code:

* every ``nn.BatchNorm`` call is forced to the chosen mode (``"train"``: batch statistics, the
  official protocol; ``"eval"``: running statistics; ``"none"``: identity);
* every ``nn.Conv`` / ``nn.Dense`` call can be *tapped*: its input ``x`` and output ``y`` are
  recorded and a zero perturbation ``dy`` is added to ``y``, so that the gradient of any scalar
  w.r.t. ``dy`` is the layer's output cotangent (``Module.perturb``).

A plain function ``f(params, x)`` can be wrapped with :func:`from_apply`; the metrics that need
taps then raise a clear error.

Example::

  >>> import flax.linen as nn, jax, jax.numpy as jnp
  >>> net = from_flax(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)]))
  >>> params = net.init(jax.random.key(0), jnp.ones((2, 5)))
  >>> net.apply(params, jnp.ones((2, 5))).shape
  (2, 3)
"""
from __future__ import annotations

import contextlib
import functools
from typing import (Any, Callable, Collection, Mapping, NamedTuple, Sequence, cast,
                    overload)

import flax.linen as nn
import jax
import jax.core
import jax.extend.core as jex
import numpy as np
from flax import traverse_util

from jhnas._compat import canonicalize_padding, check_rng_path_hash, rng_path_hash
from jhnas.nn import RELU_INPUTS

Params = Any
Path = tuple[str, ...]
#: A plain network function ``apply(params, x) -> logits`` (N, K).
Apply = Callable[[Params, jax.Array], jax.Array]
#: ``pullback(ct, wrt=("params",)) -> {name: cotangent}`` of :func:`vjp`.
Pullback = Callable[..., dict[str, Any]]

_TAPS = "jhnas_taps"
_PERTURB = "jhnas_dy"
BN_MODES = ("train", "eval", "none")


class LayerSpec(NamedTuple):
    """Static description of one tapped layer call (what the per-sample gradient needs).

    ``"conv"``: an ``nn.Conv`` on channels-last input (N, *spatial, C_in); ``padding`` may also be
    Flax's ``"CIRCULAR"``, ``"REFLECT"`` or ``"CAUSAL"`` (the input is padded before a
    ``"VALID"`` convolution, as Flax does). ``"dense"``: an ``nn.Dense`` or ``nn.DenseGeneral``
    contracting the input axes ``contract`` (in the kernel's order) into ``out_dims`` trailing
    feature axes.
    """

    kind: str  # "conv" or "dense"
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: Any = "VALID"  # "SAME", "VALID", "CIRCULAR", "REFLECT", "CAUSAL" or ((lo, hi), ...)
    input_dilation: tuple[int, ...] = ()
    kernel_dilation: tuple[int, ...] = ()
    groups: int = 1
    use_bias: bool = True
    #: False if the layer's kernel or bias is transformed before its convolution/matmul uses it
    #: (a mask, weight standardisation, another use of the parameter; :func:`_direct_layers`):
    #: per-sample gradients from the layer's input and output cotangent are then gradients of
    #: the transformed kernel, not of the parameter.
    direct: bool = True
    contract: tuple[int, ...] = (-1,)  # dense: input axes contracted, in the kernel's order
    out_dims: int = 1  # dense: trailing feature axes of the output


class Taps(NamedTuple):
    """Per-layer activations of one batched forward pass, keyed by the layer's module path."""

    inputs: dict[Path, jax.Array]  # (N, ..., C_in)
    outputs: dict[Path, jax.Array]  # (N, ..., C_out), bias included


def _no_init(key: jax.Array, x: jax.Array) -> Params:
    raise ValueError("this net has no init (a plain function from from_apply): pass its "
                     "parameters yourself")


class Net(NamedTuple):
    """Pure functions of one network. ``params`` is the Flax ``"params"`` collection.

    Attributes:
      apply: ``(params, x) -> logits`` of shape (N, K).
      init: ``(key, x) -> params``.
      apply_nobn: ``apply`` with every BatchNorm replaced by the identity (SynFlow).
      layers: ``(params, x) -> (specs, dy0)``: the tapped layers' :class:`LayerSpec` and zero
        output perturbations, both keyed by module path. ``None`` if the net cannot be tapped.
      tapped: ``(params, x, dy) -> (logits, Taps, relu_inputs)``: the forward pass with ``dy``
        added to every tapped layer's output; ``relu_inputs`` lists the recorded ReLU inputs.
      compiled: True for a network composed of jit-compiled blocks (:func:`from_blocks`); the
        metrics and NTK functions then run their glue eagerly instead of compiling the whole
        network again.
      vjp: ``(params, x, dy=None) -> (logits, pullback, aux)``, a reverse pass of ``apply``
        (``dy`` None, ``aux`` None) or of ``tapped`` (``aux = (Taps, relu_inputs)``);
        ``pullback(ct, wrt=("params",))`` maps a cotangent of the logits to a dict of the
        cotangents of ``"params"``, ``"x"`` and/or ``"dy"``. ``None``: use the generic one,
        :func:`vjp` (``jax.vjp``); :func:`from_blocks` pulls back block by block through
        compiled reverse passes, which computes only what ``wrt`` asks for.
      coupled: ``(params, x) -> bool``: whether a sample's outputs depend on the other samples of
        the batch (train-mode BatchNorm) or on the batch's shape (random masks); None: assume
        they do. Without coupling the exact Jacobian of the batched function is the per-sample
        one, which :func:`jhnas.ntk.empirical_ntk_fn` then computes sample by sample.
    """

    apply: Apply
    init: Callable[[jax.Array, jax.Array], Params] = _no_init
    apply_nobn: Apply | None = None
    layers: Callable[[Params, jax.Array | jax.ShapeDtypeStruct],
                     tuple[dict[Path, LayerSpec], dict[Path, jax.Array]]] | None = None
    tapped: Callable[[Params, jax.Array, Mapping[Path, jax.Array]],
                     tuple[jax.Array, Taps, list[jax.Array]]] | None = None
    compiled: bool = False  # functions are already jit-compiled piecewise (:func:`from_blocks`)
    vjp: Callable[..., tuple[jax.Array, Pullback,
                             tuple[Taps, list[jax.Array]] | None]] | None = None
    coupled: Callable[[Params, jax.Array], bool] | None = None


_WRT = ("params", "x", "dy")


def _check_wrt(wrt: Collection[str], tapped: bool) -> tuple[bool, ...]:
    """``wrt`` as flags over ("params", "x", "dy"), validated."""
    bad = set(wrt) - set(_WRT if tapped else _WRT[:2])
    if bad:
        raise ValueError(f"wrt must name some of {_WRT if tapped else _WRT[:2]}, got {sorted(bad)}"
                         + (" (a cotangent of dy needs the tapped pass: pass dy)"
                            if "dy" in bad and not tapped else ""))
    return tuple(name in wrt for name in (_WRT if tapped else _WRT[:2]))


def _tapped_vjp(tapped: Callable[..., tuple[jax.Array, Taps, list[jax.Array]]], params: Params,
                x: jax.Array, dy: Mapping[Path, jax.Array]
                ) -> tuple[jax.Array, Callable[[jax.Array], tuple[Any, ...]], Any]:
    """``jax.vjp`` of ``tapped`` in (params, x, dy), with ``(taps, relu_inputs)`` as aux."""
    def f(p, h, d):
        out, taps, relus = tapped(p, h, d)
        return out, (taps, relus)

    return jax.vjp(f, params, x, dy, has_aux=True)


@overload
def vjp(net: Net, params: Params, x: jax.Array, dy: None = None
        ) -> tuple[jax.Array, Pullback, None]: ...


@overload
def vjp(net: Net, params: Params, x: jax.Array, dy: Mapping[Path, jax.Array]
        ) -> tuple[jax.Array, Pullback, tuple[Taps, list[jax.Array]]]: ...


def vjp(net: Net, params: Params, x: jax.Array, dy: Mapping[Path, jax.Array] | None = None
        ) -> tuple[jax.Array, Pullback, tuple[Taps, list[jax.Array]] | None]:
    """``(logits, pullback, aux)``: the reverse pass of ``net.apply(params, x)`` or, with the
    layers' output perturbations ``dy``, of ``net.tapped(params, x, dy)`` (then ``aux = (Taps,
    relu_inputs)``, else None). ``pullback(ct, wrt=("params",))`` returns ``{name: cotangent}``
    for the names in ``wrt`` among ``"params"``, ``"x"``, ``"dy"``.

    Uses ``net.vjp`` where the net has one (:func:`from_blocks`), else ``jax.vjp`` (inside a
    ``jit``, XLA drops the cotangents that are not asked for). Raises ``ValueError`` for ``dy``
    on a net without taps, and (from ``pullback``) for a name in ``wrt`` that the pass does not
    have.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> net = from_flax(nn.Dense(3))
      >>> params = net.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> logits, pullback, _ = vjp(net, params, jnp.ones((2, 4)))
      >>> grads = pullback(jnp.ones_like(logits), wrt=("params", "x"))
      >>> grads["params"]["kernel"].shape, grads["x"].shape
      ((4, 3), (2, 4))
    """
    if net.vjp is not None:
        return net.vjp(params, x, dy)
    if dy is None:
        logits, pull = jax.vjp(net.apply, params, x)
        aux = None
    else:
        if net.tapped is None:
            raise ValueError("a pass with dy needs a tappable net: build it with from_flax")
        logits, pull, aux = _tapped_vjp(net.tapped, params, x, dy)

    def pullback(ct: jax.Array, wrt: Collection[str] = ("params",)) -> dict[str, Any]:
        keep = _check_wrt(wrt, dy is not None)
        return {name: g for name, g, k in zip(_WRT, pull(ct), keep) if k}

    return logits, pullback, aux


def from_apply(apply: Apply, *,
               batch_coupled: bool = True) -> Net:
    """Wraps a plain ``apply(params, x) -> logits``; no taps, BatchNorm left as the function has it.

    ``batch_coupled=False`` declares that each sample's logits depend on that sample alone (no
    batch statistics, no random masks): the exact NTK is then computed sample by sample.
    The returned :class:`Net` has no ``init`` and no taps: the NTK offers the ``jacobian`` and
    ``per_sample`` implementations, and the metrics that need taps raise ``ValueError``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jhnas.ntk import empirical_ntk_fn
      >>> apply = lambda p, x: jnp.tanh(x @ p[0]) @ p[1]   # stax-style tuple parameters
      >>> params = (jnp.full((5, 8), 0.1), jnp.full((8, 3), 0.2))
      >>> net = from_apply(apply, batch_coupled=False)
      >>> ntk = empirical_ntk_fn(net, implementation="per_sample", params="all")
      >>> ntk(params, jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])).shape
      (4, 4)
    """
    return Net(apply=apply, apply_nobn=apply, coupled=lambda params, x: batch_coupled)


#: The layers :func:`from_flax` taps; other parameterised layers are not tapped, and the
#: decomposition names their parameters in an error (:func:`jhnas.ntk.check_decomposable`).
TAPPED = (nn.Conv, nn.Dense, nn.DenseGeneral)


def _spec(mod: nn.Module, x: jax.Array) -> LayerSpec | None:
    """The layer call's :class:`LayerSpec`, None if its per-sample gradients cannot be taken from
    its input and output cotangent (then it is not tapped)."""
    if isinstance(mod, nn.Dense):
        return LayerSpec("dense", use_bias=mod.use_bias, contract=(x.ndim - 1,))
    if isinstance(mod, nn.DenseGeneral):
        if mod.batch_dims or x.ndim < 2:
            return None
        axis = (mod.axis,) if isinstance(mod.axis, int) else tuple(mod.axis)
        contract = tuple(a % x.ndim for a in axis)
        if 0 in contract:  # the batch axis
            return None
        features = (mod.features,) if isinstance(mod.features, int) else tuple(mod.features)
        return LayerSpec("dense", use_bias=mod.use_bias, contract=contract,
                         out_dims=len(features))
    rank = len(mod.kernel_size) if not isinstance(mod.kernel_size, int) else 1
    if x.ndim != rank + 2:  # Flax flattens several batch axes or adds a missing one
        return None
    tup = lambda v: (v,) * rank if isinstance(v, int) else tuple(v or (1,) * rank)
    padding = canonicalize_padding(mod.padding, rank)
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return LayerSpec("conv", tup(mod.kernel_size), tup(mod.strides), padding,
                     tup(mod.input_dilation), tup(mod.kernel_dilation),
                     mod.feature_group_count, mod.use_bias)


def _interceptor(bn: str, tap: bool, specs: dict[Path, LayerSpec] | None) -> nn.module.Interceptor:
    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(mod, nn.BatchNorm):
            if bn == "none":
                return args[0]
            kwargs = {**kwargs, "use_running_average": bn == "eval"}
            if mod.use_running_average is None:
                return next_fun(args[0], **kwargs)
            # BatchNorm refuses the flag both as attribute and argument: call a copy without
            # the attribute, bound to this module's scope (the same variables, the same name;
            # the copy's call comes back through this interceptor and takes the branch above).
            return mod.clone(parent=mod.scope, use_running_average=None)(args[0], **kwargs)
        if tap and isinstance(mod, TAPPED) and (spec := _spec(mod, args[0])) is not None:
            x = args[0]
            if specs is not None:
                assert mod.scope is not None  # a bound module: its method is running
                specs[tuple(mod.scope.path)] = spec
            y = next_fun(*args, **kwargs)
            mod.sow(_TAPS, "jhnas_x", x)
            y = mod.perturb("jhnas_dy", y, collection=_PERTURB)
            mod.sow(_TAPS, "jhnas_y", y)
            return y
        return next_fun(*args, **kwargs)

    return intercept


def bn_mode(mode: str) -> contextlib.AbstractContextManager[None]:
    """A context in which every ``nn.BatchNorm`` of an applied Flax module runs in ``mode``
    (``"train"``: batch statistics, ``"eval"``: running statistics, ``"none"``: identity)."""
    if mode not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {mode!r}")
    return nn.intercept_methods(_interceptor(mode, False, None))


def leaf_paths(tree: Any) -> list[tuple[Any, ...]]:
    """The path of names of every leaf of ``tree``, in ``jax.tree.leaves`` order."""
    return [tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# Primitives that call a sub-jaxpr on their operands in order (the dataflow follows them).
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "checkpoint"})
# What a kernel may pass through on its way to the convolution/matmul, and a bias to the add.
_KERNEL_PASS = frozenset({"convert_element_type", "copy", "copy_p"})
_BIAS_PASS = _KERNEL_PASS | {"reshape", "broadcast_in_dim", "squeeze", "expand_dims"}


def _uses(jaxpr: jex.Jaxpr, var: Any, passthrough: Collection[str]) -> list[tuple[str, int]]:
    """The uses of ``var`` in ``jaxpr`` as (primitive, operand index), following it through the
    ``passthrough`` primitives and into and out of the sub-jaxprs of :data:`_CALLS`;
    ``("output", i)`` if it is the jaxpr's i-th output."""
    out = [("output", i) for i, v in enumerate(jaxpr.outvars) if v is var]
    for eqn in jaxpr.eqns:
        for i, v in enumerate(eqn.invars):
            if v is not var:
                continue
            name = eqn.primitive.name
            subs = list(jex.jaxprs_in_params(eqn.params))
            if name in passthrough:
                out += _uses(jaxpr, eqn.outvars[0], passthrough)
            elif name in _CALLS and len(subs) == 1 and len(subs[0].invars) == len(eqn.invars):
                for use in _uses(subs[0], subs[0].invars[i], passthrough):
                    out += (_uses(jaxpr, eqn.outvars[use[1]], passthrough)
                            if use[0] == "output" else [use])
            else:
                out.append((name, i))
    return out


def _direct_layers(jaxpr: jex.Jaxpr, param_paths: Sequence[tuple[Any, ...]],
                   specs: Mapping[Path, LayerSpec]) -> set[Path]:
    """The tapped layers whose kernel is used once, as the right operand of a convolution or
    ``dot_general``, and whose bias (if any) once, added, both unchanged on the way (dtype
    casts aside): those whose per-sample gradients the taps give. ``jaxpr`` is the tapped forward
    pass with the parameter leaves (in the order of ``param_paths``) as its first inputs."""
    invar = dict(zip(param_paths, jaxpr.invars))
    direct = set()
    for path, spec in specs.items():
        kernel = _uses(jaxpr, invar.get(path + ("kernel",)), _KERNEL_PASS)
        ok = kernel in ([("conv_general_dilated", 1)], [("dot_general", 1)])
        if spec.use_bias:
            ok = ok and _uses(jaxpr, invar.get(path + ("bias",)), _BIAS_PASS) in (
                [("add", 0)], [("add", 1)])
        if ok:
            direct.add(path)
    return direct


def _flat(tree: Mapping[str, Any] | None, leaf_name: str) -> dict[Path, Any]:
    flat = traverse_util.flatten_dict(tree) if tree else {}
    return {k[:-1]: v for k, v in flat.items() if k[-1] == leaf_name}


def from_flax(module: nn.Module, *, bn: str = "train", state: Mapping[str, Any] | None = None,
              rngs: Mapping[str, jax.Array] | None = None,
              batch_coupled: bool | None = None) -> Net:
    """Builds a :class:`Net` from a Flax module whose ``__call__(x)`` returns logits.

    Args:
      module: any ``flax.linen`` module; its ``nn.Conv``/``nn.Dense`` layers are tapped, its
        ``nn.BatchNorm`` layers follow ``bn``, ReLUs called through :func:`jhnas.nn.relu` are
        recorded for NASWOT.
      bn: ``"train"`` (batch statistics, the official protocol), ``"eval"`` (running statistics
        from ``state``, or the fresh-init statistics mean 0 / var 1 if absent) or ``"none"``.
      state: other variable collections (e.g. ``{"batch_stats": ...}``).
      rngs: keys of the module's random streams for every call, e.g. ``{"dropout": key}`` for
        ``nn.Dropout`` in training mode: the same masks on every call, so the metrics and the NTK
        stay functions of the parameters and the batch (the masks depend on the batch's shape:
        ``implementation="per_sample"`` draws other masks than the batched passes).
      batch_coupled: whether a sample's logits depend on the rest of the batch. ``None``
        (default): yes if an ``nn.BatchNorm`` runs in train mode or ``rngs`` are given. Pass
        ``True`` for a module that mixes samples in its own code (e.g. ``x - x.mean(0)``).

    Returns:
      A :class:`Net` with every function; ``init`` returns the ``"params"`` collection only.

    Raises:
      ValueError: ``bn`` is not one of :data:`BN_MODES`; later, from ``tapped``, a tapped layer
        applied more than once in one forward pass.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> module = nn.Sequential([nn.Dense(8), nn.BatchNorm(use_running_average=False),
      ...                         nn.relu, nn.Dense(3)])
      >>> net = from_flax(module, bn="train")
      >>> x = jnp.linspace(-1.0, 1.0, 20).reshape(4, 5)
      >>> params = net.init(jax.random.key(0), x)
      >>> net.apply(params, x).shape, net.coupled(params, x)   # train-mode BN couples samples
      ((4, 3), True)
      >>> specs, dy0 = net.layers(params, x)                    # the tapped layers
      >>> sorted("/".join(path) for path in specs)
      ['layers_0', 'layers_3']
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    state = {k: v for k, v in dict(state or {}).items() if k != "params"}
    rngs = dict(rngs or {})

    def run(params, x, *, mode=bn, tap=False, dy=None, mutable=(), specs=None):
        variables = {"params": params, **state}
        if dy is not None:
            variables[_PERTURB] = traverse_util.unflatten_dict(
                {path + ("jhnas_dy",): v for path, v in dy.items()})
        # batch_stats is always mutable: train mode updates it, eval mode without `state`
        # initialises it to the fresh statistics; either way the update is discarded.
        with nn.intercept_methods(_interceptor(mode, tap, specs)):
            return module.apply(variables, x, mutable=["batch_stats", *mutable], rngs=rngs)

    def apply(params, x):
        return run(params, x)[0]

    def apply_nobn(params, x):
        return run(params, x, mode="none")[0]

    def init(key, x):
        with nn.intercept_methods(_interceptor(bn, False, None)):
            return module.init(key, x).get("params", {})

    def coupled(params, x):
        if batch_coupled is not None or rngs or bn != "train":
            return bool(batch_coupled or (batch_coupled is None and rngs))
        found = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
                found.append(context.module)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):  # a fresh function: eval_shape caches traces
            jax.eval_shape(lambda p, h: apply(p, h), params, x)
        return bool(found)

    def layers(params, x):
        specs: dict[Path, LayerSpec] = {}
        jaxpr, (_, coll) = jax.make_jaxpr(
            lambda p, x: run(p, x, tap=True, mutable=[_PERTURB], specs=specs),
            return_shape=True)(params, x)
        dy0 = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype),
                           _flat(coll.get(_PERTURB), "jhnas_dy"))
        direct = _direct_layers(jaxpr.jaxpr, leaf_paths(params), specs)
        return {p: s._replace(direct=p in direct) for p, s in specs.items()}, dy0

    def tapped(params, x, dy):
        logits, coll = run(params, x, tap=True, dy=dy, mutable=[_TAPS, RELU_INPUTS])
        xs, ys = _flat(coll.get(_TAPS), "jhnas_x"), _flat(coll.get(_TAPS), "jhnas_y")
        for path, v in xs.items():
            if len(v) != 1:
                raise ValueError(f"layer {'/'.join(path)} is applied {len(v)} times in one forward "
                                 "pass; the per-layer decomposition needs each layer applied once")
        relus = [a for v in _flat(coll.get(RELU_INPUTS), "relu_in").values() for a in v]
        return logits, Taps({k: v[0] for k, v in xs.items()}, {k: v[0] for k, v in ys.items()}), relus

    return Net(apply=apply, init=init, apply_nobn=apply_nobn, layers=layers, tapped=tapped,
               coupled=coupled)


# ----------------------------------------------------------------------------- block composition

class Block(NamedTuple):
    """One block of a network composed by :func:`from_blocks`.

    ``module`` maps one input to one output; its parameters are ``params[scope[0]]...[scope[-1]]``
    of the whole network, or, with ``scope == ()``, the top-level entries named by its own
    submodules (``keys``). It reads node ``src`` and its output is added into node ``dst``.
    ``module=None`` is the identity (a skip connection: no program, its input is added as is).
    """

    module: nn.Module | None
    scope: Path
    src: int
    dst: int
    keys: tuple[str, ...] = ()


class _BlockFns(NamedTuple):
    apply: Callable
    apply_nobn: Callable
    tapped: Callable
    layers: Callable  # (shape, dtype) -> (specs, dy ShapeDtypeStructs), cached
    vjp: Callable  # (p, h) -> (out, pullback): pullback a jax.tree_util.Partial
    tapped_vjp: Callable  # (p, h, dy) -> (out, pullback, (taps, relus))


@functools.lru_cache(maxsize=None)
def _compiled_block(module: nn.Module, bn: str) -> _BlockFns:
    """The jit-compiled functions of one block (cached per module configuration and BN mode:
    equal modules share their compilations, which jit caches per input shape)."""
    net = from_flax(module, bn=bn)
    init, net_layers, apply_nobn, tapped = net.init, net.layers, net.apply_nobn, net.tapped
    # from_flax sets them all
    assert init is not None and net_layers is not None and apply_nobn is not None
    assert tapped is not None

    @functools.lru_cache(maxsize=None)
    def layers(shape, dtype):
        x = jax.ShapeDtypeStruct(shape, dtype)
        specs, dy0 = net_layers(jax.eval_shape(init, jax.random.key(0), x), x)
        return specs, {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in dy0.items()}

    # A jitted jax.vjp returns its pullback as a Partial whose static part is the same object
    # on every call, so _pull compiles once per block configuration and shape.
    return _BlockFns(jax.jit(net.apply), jax.jit(apply_nobn), jax.jit(tapped), layers,
                     jax.jit(functools.partial(jax.vjp, net.apply)),
                     jax.jit(functools.partial(_tapped_vjp, tapped)))


@functools.partial(jax.jit, static_argnums=2)
def _pull(pullback: Callable[[jax.Array], tuple[Any, ...]], ct: jax.Array, keep: tuple[bool, ...]
          ) -> tuple[Any, ...]:
    """The input cotangents of one block's reverse pass that ``keep`` asks for (None for the
    others, whose computation XLA then drops)."""
    return tuple(g if k else None for g, k in zip(pullback(ct), keep))


# The glue's sums: an eager ``a + b`` goes through jax.numpy's Python dispatch (about 70 us on
# CPU), a jitted add through jit's C++ fast path.
_add = jax.jit(jax.numpy.add)


def _add_at(tree: dict[str, Any], scope: Path, value: Mapping[str, Any]) -> None:
    """Adds the block parameters' cotangent ``value`` into the nested dict ``tree`` at ``scope``
    (``()``: top-level entries), summing with what is already there."""
    for s in scope:
        tree = tree.setdefault(s, {})
    for k, v in value.items():
        tree[k] = jax.tree.map(_add, tree[k], v) if k in tree else v


# The parameters of the layers block_init knows, in the order Flax creates them, with the
# attribute holding each one's initialiser.
_INITS = {nn.Conv: (("kernel", "kernel_init"), ("bias", "bias_init")),
          nn.Dense: (("kernel", "kernel_init"), ("bias", "bias_init")),
          nn.BatchNorm: (("scale", "scale_init"), ("bias", "bias_init"))}


@functools.lru_cache(maxsize=None)
def _block_params(module: nn.Module, shape: tuple[int, ...], dtype: Any
                  ) -> tuple[Any, list[tuple[Path, int, Callable, jax.ShapeDtypeStruct]]]:
    """``(output ShapeDtypeStruct, [(path, counter, initialiser, ShapeDtypeStruct)])`` of one
    block's parameters, in creation order (``jax.eval_shape``: nothing is computed)."""
    mods: dict[Path, nn.Module] = {}

    def record(next_fun, args, kwargs, context):
        mods[tuple(context.module.scope.path)] = context.module
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        out, variables = jax.eval_shape(module.init_with_output, jax.random.key(0),
                                        jax.ShapeDtypeStruct(shape, dtype))
    specs = []
    layers: dict[Path, dict[str, jax.ShapeDtypeStruct]] = {}
    for path, leaf in traverse_util.flatten_dict(variables.get("params", {})).items():
        layers.setdefault(path[:-1], {})[path[-1]] = cast(jax.ShapeDtypeStruct, leaf)
    for path, leaves in layers.items():
        mod = mods[path]
        order = _INITS.get(type(mod))
        if order is None or set(leaves) - {name for name, _ in order}:
            raise NotImplementedError(f"block_init knows nn.Conv, nn.Dense and nn.BatchNorm, not "
                                      f"{type(mod).__name__} ({'/'.join(path)})")
        # Flax counts make_rng calls per module scope; these layers make one per parameter.
        present = [(name, attr) for name, attr in order if name in leaves]
        specs += [(path + (name,), i + 1, getattr(mod, attr), leaves[name])
                  for i, (name, attr) in enumerate(present)]
    return out, specs


@jax.jit
def _fold_in_all(key: jax.Array, data: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (None, 0))(key, data)


#: block_init derives the keys of a network's parameters in one call, padded to a multiple of
#: this many (a few compilations for a whole search space).
KEY_BUCKET = 256


def block_init(blocks: Sequence[Block]) -> Callable[[jax.Array, jax.Array], Params]:
    """``init(key, x) -> params`` of the network composed of ``blocks``, equal to the monolithic
    Flax module's ``init`` without tracing it.

    Flax draws each parameter with the key ``fold_in(key, hash(module path, counter))``
    (``flax.core.scope.LazyRng``; the copy of the hash is :func:`jhnas._compat.rng_path_hash`,
    checked against the installed Flax on the first call), so a parameter depends only on the root key, its path and its
    initialiser. Here the paths come from each block's cached ``jax.eval_shape``, the keys are
    derived the same way (all in one call), and nothing else runs: no forward pass and none of
    the Python cost of Flax's module machinery. Supports blocks made of ``nn.Conv``,
    ``nn.Dense`` and ``nn.BatchNorm`` (others raise ``NotImplementedError`` on the first call).
    Works eagerly and under ``jit`` / ``vmap``.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> module = nn.Sequential([nn.Dense(8), nn.Dense(3)])   # submodules layers_0, layers_1
      >>> blocks = [Block(nn.Dense(8), ("layers_0",), 0, 1),
      ...           Block(nn.Dense(3), ("layers_1",), 1, 2)]
      >>> x = jnp.ones((2, 5))
      >>> params = block_init(blocks)(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, params)["layers_0"]
      {'bias': (8,), 'kernel': (5, 8)}
      >>> same = jax.tree.map(jnp.array_equal, params, module.init(jax.random.key(0), x)["params"])
      >>> all(jax.tree.leaves(same))
      True
    """
    blocks = tuple(blocks)

    def init(key, x):
        check_rng_path_hash()  # once per process: the copy of Flax's key derivation still holds
        params, shapes = [], {0: jax.ShapeDtypeStruct(x.shape, x.dtype)}
        for b in blocks:
            h = shapes[b.src]
            if b.module is None:
                shapes.setdefault(b.dst, h)
                continue
            out, specs = _block_params(b.module, tuple(h.shape), h.dtype)
            shapes.setdefault(b.dst, out)
            params += [(b.scope + path, counter, fn, leaf) for path, counter, fn, leaf in specs]
        data = np.zeros(-(-len(params) // KEY_BUCKET) * KEY_BUCKET, np.uint32)
        data[:len(params)] = [rng_path_hash(path[:-1] + (counter,))
                              for path, counter, _, _ in params]
        keys = _fold_in_all(key, data)
        if isinstance(keys, jax.core.Tracer):  # under jit / vmap: slices of the traced keys
            rows, wrap = keys, lambda k: k
        else:  # eagerly, iterating over a key array would compile an unstack program per
            # bucket (about 1 s each): the key data comes to the host once, wrapped per row
            typed = jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key)
            rows = np.asarray(jax.random.key_data(keys) if typed else keys)
            wrap = (functools.partial(jax.random.wrap_key_data, impl=jax.random.key_impl(key))
                    if typed else jax.device_put)
        return traverse_util.unflatten_dict({
            path: fn(wrap(k), leaf.shape, leaf.dtype) for (path, _, fn, leaf), k in zip(params, rows)})

    return init


def from_blocks(blocks: Sequence[Block],
                init: Callable[[jax.Array, jax.Array], Params] | None = None, *,
                bn: str = "train") -> Net:
    """A :class:`Net` evaluated block by block, each block compiled once per configuration.

    Scoring thousands of architectures of a cell space with one ``jit`` per architecture pays a
    compilation (seconds) per architecture. Here each block (a cell edge's op, a reduction, the
    stem, the head) is compiled once per configuration and input shape and shared by every
    architecture that uses it; the glue (summing nodes, the backward chain, per-layer NTK
    products) runs eagerly. The reverse pass (``Net.vjp``) chains each block's compiled forward
    (which returns its pullback's residuals) and compiled backward, which computes only the
    cotangents asked for; other transformations (``jax.jvp``, ``jax.grad`` of ``apply``) trace
    through the blocks eagerly, and JAX caches the transformed blocks. The number of compilations
    does not grow with the number of architectures, and the values equal the monolithic
    network's (same parameters, same maths).

    Args:
      blocks: in topological order; node 0 is the input, the output is the last block's ``dst``.
      init: ``(key, x) -> params`` of the whole network; default :func:`block_init`, which
        equals the ``init`` of the monolithic module whose parameter paths the blocks' scopes
        reproduce.
      bn: the BatchNorm mode of every block (see :func:`from_flax`).

    Returns:
      A :class:`Net` with ``compiled=True`` and every function of :func:`from_flax`'s.

    Raises:
      ValueError: ``bn`` is not one of :data:`BN_MODES`.

    Examples:
      Node 2 is ``mix(h) + h`` (an identity block adds its input), ``h = hidden(x)``:

      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> blocks = [Block(nn.Dense(8), ("hidden",), 0, 1), Block(None, (), 1, 2),
      ...           Block(nn.Dense(8), ("mix",), 1, 2), Block(nn.Dense(3), ("out",), 2, 3)]
      >>> net = from_blocks(blocks)
      >>> x = jnp.ones((2, 5))
      >>> params = net.init(jax.random.key(0), x)
      >>> sorted(params), net.apply(params, x).shape
      (['hidden', 'mix', 'out'], (2, 3))
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    blocks = tuple(blocks)
    init = init or block_init(blocks)
    fns = {i: _compiled_block(b.module, bn) for i, b in enumerate(blocks) if b.module is not None}

    def sub(params: Params, b: Block) -> Params:
        if not b.scope:
            return {k: params[k] for k in b.keys}
        for s in b.scope:
            params = params[s]
        return params

    def run(x: Any, call: Callable[[int, Block, Any], Any],
            add: Callable[[Any, Any], Any] = _add) -> Any:
        nodes = {0: x}
        for i, b in enumerate(blocks):
            y = nodes[b.src] if b.module is None else call(i, b, nodes[b.src])
            nodes[b.dst] = add(nodes[b.dst], y) if b.dst in nodes else y
        return nodes[blocks[-1].dst]

    def apply(params, x):
        return run(x, lambda i, b, h: fns[i].apply(sub(params, b), h))

    def apply_nobn(params, x):
        return run(x, lambda i, b, h: fns[i].apply_nobn(sub(params, b), h))

    def layers(params, x):
        specs, dy0 = {}, {}

        def call(i, b, h):
            s, d = fns[i].layers(tuple(h.shape), h.dtype)
            specs.update({b.scope + p: v for p, v in s.items()})
            dy0.update({b.scope + p: jax.numpy.zeros(v.shape, v.dtype) for p, v in d.items()})
            return jax.eval_shape(fns[i].apply, sub(params, b), h)

        run(jax.ShapeDtypeStruct(x.shape, x.dtype), call, add=lambda a, b: a)
        return specs, dy0

    def block_dy(i, b, h, dy):
        return {p: dy[b.scope + p] for p in fns[i].layers(tuple(h.shape), h.dtype)[0]}

    def record(taps_out, b, taps, r):
        xs, ys, relus = taps_out
        xs.update({b.scope + p: v for p, v in taps.inputs.items()})
        ys.update({b.scope + p: v for p, v in taps.outputs.items()})
        relus.extend(r)

    def tapped(params, x, dy):
        taps_out = ({}, {}, [])

        def call(i, b, h):
            out, taps, r = fns[i].tapped(sub(params, b), h, block_dy(i, b, h, dy))
            record(taps_out, b, taps, r)
            return out

        logits = run(x, call)
        return logits, Taps(*taps_out[:2]), taps_out[2]

    def vjp(params, x, dy=None):
        pulls, outs, taps_out = {}, {}, ({}, {}, [])

        def call(i, b, h):
            if dy is None:
                out, pull = fns[i].vjp(sub(params, b), h)
            else:
                out, pull, (taps, r) = fns[i].tapped_vjp(sub(params, b), h, block_dy(i, b, h, dy))
                record(taps_out, b, taps, r)
            pulls[i], outs[i] = pull, jax.ShapeDtypeStruct(out.shape, out.dtype)
            return out

        logits = run(x, call)
        aux = None if dy is None else (Taps(*taps_out[:2]), taps_out[2])

        def pullback(ct, wrt=("params",)):
            keep = _check_wrt(wrt, dy is not None)
            want_dy = any(keep[2:])  # the cotangent of dy is asked for
            cts, grads, d_dy = {blocks[-1].dst: ct}, {}, {}
            for i in reversed(range(len(blocks))):
                b = blocks[i]
                # every reader of node b.dst comes after its writers: its cotangent is complete
                c = cts.get(b.dst)
                if b.module is None:  # the identity passes its cotangent on
                    if c is not None:
                        cts[b.src] = _add(cts[b.src], c) if b.src in cts else c
                    continue
                if c is None:  # a node nothing reads
                    c = jax.numpy.zeros(outs[i].shape, outs[i].dtype)
                g = _pull(pulls[i], c, (keep[0], keep[1] or b.src != 0) + keep[2:])
                if keep[0]:
                    _add_at(grads, b.scope, g[0])
                if g[1] is not None:
                    cts[b.src] = _add(cts[b.src], g[1]) if b.src in cts else g[1]
                if want_dy:
                    d_dy.update({b.scope + p: v for p, v in g[2].items()})
            out = {"params": grads, "x": cts.get(0), "dy": d_dy}
            return {name: out[name] for name, k in zip(_WRT, keep) if k}

        return logits, pullback, aux

    return Net(apply=apply, init=init, apply_nobn=apply_nobn, layers=layers, tapped=tapped,
               compiled=True, vjp=vjp, coupled=lambda params, x: bn == "train")
