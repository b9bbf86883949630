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

from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
from flax import traverse_util
from flax.linen.linear import canonicalize_padding

from jhnas.nn import RELU_INPUTS

Params = Any
Path = tuple[str, ...]

_TAPS = "jhnas_taps"
_PERTURB = "jhnas_dy"
BN_MODES = ("train", "eval", "none")


class LayerSpec(NamedTuple):
    """Static description of one tapped layer call (what the per-sample gradient needs)."""

    kind: str  # "conv" or "dense"
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: Any = "VALID"  # "SAME", "VALID" or ((lo, hi), ...)
    input_dilation: tuple[int, ...] = ()
    kernel_dilation: tuple[int, ...] = ()
    groups: int = 1
    use_bias: bool = True


class Taps(NamedTuple):
    """Per-layer activations of one batched forward pass, keyed by the layer's module path."""

    inputs: dict[Path, jax.Array]  # (N, ..., C_in)
    outputs: dict[Path, jax.Array]  # (N, ..., C_out), bias included


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
    """

    apply: Callable[[Params, jax.Array], jax.Array]
    init: Callable[[jax.Array, jax.Array], Params] | None = None
    apply_nobn: Callable[[Params, jax.Array], jax.Array] | None = None
    layers: Callable[..., tuple[dict[Path, LayerSpec], dict[Path, jax.Array]]] | None = None
    tapped: Callable[..., tuple[jax.Array, Taps, list[jax.Array]]] | None = None


def from_apply(apply: Callable[[Params, jax.Array], jax.Array]) -> Net:
    """Wraps a plain ``apply(params, x) -> logits``; no taps, BatchNorm left as the function has it."""
    return Net(apply=apply, apply_nobn=apply)


def _spec(mod: nn.Module, x: jax.Array) -> LayerSpec:
    if isinstance(mod, nn.Dense):
        return LayerSpec("dense", use_bias=mod.use_bias)
    rank = x.ndim - 2
    tup = lambda v: (v,) * rank if isinstance(v, int) else tuple(v or (1,) * rank)
    padding = canonicalize_padding(mod.padding, rank)
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        raise NotImplementedError(f"tapping a Conv with padding {padding!r} is not supported")
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return LayerSpec("conv", tup(mod.kernel_size), tup(mod.strides), padding,
                     tup(mod.input_dilation), tup(mod.kernel_dilation),
                     mod.feature_group_count, mod.use_bias)


def _interceptor(bn: str, tap: bool, specs: dict | None):
    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(mod, nn.BatchNorm):
            if bn == "none":
                return args[0]
            # BatchNorm refuses the flag both as attribute and argument: clear the attribute
            # for the duration of this call (the module is a frozen dataclass).
            saved = mod.use_running_average
            object.__setattr__(mod, "use_running_average", None)
            try:
                return next_fun(args[0], **{**kwargs, "use_running_average": bn == "eval"})
            finally:
                object.__setattr__(mod, "use_running_average", saved)
        if tap and isinstance(mod, (nn.Conv, nn.Dense)):
            x = args[0]
            if specs is not None:
                specs[tuple(mod.scope.path)] = _spec(mod, x)
            y = next_fun(*args, **kwargs)
            mod.sow(_TAPS, "jhnas_x", x)
            y = mod.perturb("jhnas_dy", y, collection=_PERTURB)
            mod.sow(_TAPS, "jhnas_y", y)
            return y
        return next_fun(*args, **kwargs)

    return intercept


def _flat(tree, leaf_name: str) -> dict[Path, Any]:
    flat = traverse_util.flatten_dict(tree) if tree else {}
    return {k[:-1]: v for k, v in flat.items() if k[-1] == leaf_name}


def from_flax(module: nn.Module, *, bn: str = "train", state: Mapping | None = None) -> Net:
    """Builds a :class:`Net` from a Flax module whose ``__call__(x)`` returns logits.

    Args:
      module: any ``flax.linen`` module; its ``nn.Conv``/``nn.Dense`` layers are tapped, its
        ``nn.BatchNorm`` layers follow ``bn``, ReLUs called through :func:`jhnas.nn.relu` are
        recorded for NASWOT.
      bn: ``"train"`` (batch statistics, the official protocol), ``"eval"`` (running statistics
        from ``state``, or the fresh-init statistics mean 0 / var 1 if absent) or ``"none"``.
      state: other variable collections (e.g. ``{"batch_stats": ...}``).
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    state = {k: v for k, v in dict(state or {}).items() if k != "params"}

    def run(params, x, *, mode=bn, tap=False, dy=None, mutable=(), specs=None):
        variables = {"params": params, **state}
        if dy is not None:
            variables[_PERTURB] = traverse_util.unflatten_dict(
                {path + ("jhnas_dy",): v for path, v in dy.items()})
        # batch_stats is always mutable: train mode updates it, eval mode without `state`
        # initialises it to the fresh statistics; either way the update is discarded.
        with nn.intercept_methods(_interceptor(mode, tap, specs)):
            return module.apply(variables, x, mutable=["batch_stats", *mutable])

    def apply(params, x):
        return run(params, x)[0]

    def apply_nobn(params, x):
        return run(params, x, mode="none")[0]

    def init(key, x):
        with nn.intercept_methods(_interceptor(bn, False, None)):
            return module.init(key, x)["params"]

    def layers(params, x):
        specs: dict[Path, LayerSpec] = {}
        _, coll = jax.eval_shape(lambda p, x: run(p, x, tap=True, mutable=[_PERTURB], specs=specs),
                                 params, x)
        dy0 = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype),
                           _flat(coll[_PERTURB], "jhnas_dy"))
        return specs, dy0

    def tapped(params, x, dy):
        logits, coll = run(params, x, tap=True, dy=dy, mutable=[_TAPS, RELU_INPUTS])
        xs, ys = _flat(coll.get(_TAPS), "jhnas_x"), _flat(coll.get(_TAPS), "jhnas_y")
        for path, v in xs.items():
            if len(v) != 1:
                raise ValueError(f"layer {'/'.join(path)} is applied {len(v)} times in one forward "
                                 "pass; the per-layer decomposition needs each layer applied once")
        relus = [a for v in _flat(coll.get(RELU_INPUTS), "relu_in").values() for a in v]
        return logits, Taps({k: v[0] for k, v in xs.items()}, {k: v[0] for k, v in ys.items()}), relus

    return Net(apply=apply, init=init, apply_nobn=apply_nobn, layers=layers, tapped=tapped)
