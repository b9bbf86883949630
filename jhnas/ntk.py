r"""The empirical neural tangent kernel and its spectrum.

For outputs :math:`f_m(\theta)`, :math:`m = 1..M`, of a network on a batch and a subset of its
parameters :math:`\theta`, the empirical NTK is the Gram matrix of the output Jacobian,

.. math:: \Theta = J J^\top, \qquad J_{m,p} = \partial f_m / \partial \theta_p, \qquad (M \times M).

The outputs are chosen with ``output``: ``"label"`` the true-label logit of each sample
(:math:`f_{y_i}(x_i)`, M = N; the NASI/HNAS metric), ``"sum"`` the sum of each sample's logits
(M = N; TE-NAS), ``"all"`` every logit (M = N·K, rows ordered sample-major, ``i * K + k``).
The parameters with ``params`` (:func:`param_mask`): ``"layers"`` every kernel and the bias beside
it (the official choice; normalisation scales and embedding tables excluded), ``"kernels"``
kernels only, ``"all"``, or a predicate or mask.

Three implementations (:class:`Implementation`):

* ``JACOBIAN``: the exact Jacobian of the *batched* function. When the samples are coupled
  (``Net.coupled``: train-mode BatchNorm, random masks, or declared) it takes its rows one
  reverse pass per output, ``chunk_size`` at a time: the true :math:`\partial f_i /
  \partial\theta` of the batched network, slow for CNNs on XLA:CPU. Without coupling that
  Jacobian is the per-sample one, and it is computed as ``PER_SAMPLE`` (per-sample Jacobians
  contracted, as neural-tangents does).
* ``PER_SAMPLE``: ``vmap`` of the gradient of the single-sample function. Each sample runs alone
  (with train-mode BatchNorm it is normalised by its own statistics).
* ``DECOMPOSITION``: one batched forward and one backward pass of :math:`S = \sum_i f_i`; per layer
  the input activations :math:`a_i` and output cotangents :math:`\delta_i` of every sample are
  combined into per-sample weight gradients :math:`g_i = \sum_{s} \delta_i(s) \otimes
  \mathrm{patch}(a_i)(s)` (bias: :math:`\sum_s \delta_i(s)`). This is exactly what the official
  hook-based code computes; with train-mode BatchNorm it *decomposes* :math:`\partial S/\partial
  \theta = \sum_i g_i` and is not the Jacobian of either other implementation. Needs a tappable
  :class:`jhnas.net.Net` (from :func:`jhnas.net.from_flax`); raises ``ValueError`` naming any
  selected parameter outside a tapped layer, and any layer whose kernel or bias is transformed
  before use (:func:`check_decomposable`).

All three agree to float32 rounding on networks without batch coupling (tested against a
float64 ``jacrev`` oracle). Spectra are computed on the host in float64.

``backend="neural_tangents"`` computes ``JACOBIAN`` (the batched function, ``vmap_axes=None``) or
``PER_SAMPLE`` (``vmap_axes=0``: each sample alone) with neural-tangents' ``empirical_ntk_fn``
instead (``nt_implementation``: ``"structured_derivatives"``, ``"jacobian_contraction"``,
``"ntk_vector_products"`` or ``"auto"``). It is optional: ``pip install --no-deps
neural-tangents==0.6.5 frozendict`` (see :mod:`jhnas._nt_compat`); jhnas imports without it.

Example::

  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> from jhnas.net import from_flax
  >>> net = from_flax(nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)]))
  >>> x, y = jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])
  >>> params = net.init(jax.random.key(0), x)
  >>> gram = empirical_ntk_fn(net)(params, x, y)
  >>> gram.shape
  (4, 4)
"""
from __future__ import annotations

import enum
import functools
import math
from typing import Any, Callable, Collection, Iterable, Mapping, Protocol, Sequence, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpy.typing import ArrayLike

from jhnas import _nt_compat
from jhnas.data import check_labels
from jhnas.net import Apply, LayerSpec, Net, Params, Path, from_apply, leaf_paths
from jhnas.net import vjp as net_vjp
from jhnas.nn import chunked_conv

OUTPUTS = ("label", "sum", "all")
PARAM_SETS = ("layers", "kernels", "all")
BACKENDS = ("jhnas", "neural_tangents")
NT_IMPLEMENTATIONS = ("structured_derivatives", "jacobian_contraction", "ntk_vector_products",
                      "auto")


class Implementation(enum.Enum):
    JACOBIAN = "jacobian"
    PER_SAMPLE = "per_sample"
    DECOMPOSITION = "decomposition"


# ----------------------------------------------------------------------------- parameter subsets

#: A parameter choice: one of :data:`PARAM_SETS`, a predicate ``(path, leaf) -> bool`` (``path``
#: the tuple of names or indices leading to the leaf), or a pytree of bools shaped like params.
ParamChoice = Any


class NTKFn(Protocol):
    """``ntk(params, x, y=None) -> Theta`` (M, M), as :func:`empirical_ntk_fn` returns it."""

    def __call__(self, params: Params, x: jax.Array, y: jax.Array | None = None, /
                 ) -> jax.Array: ...


def param_mask(params: Params, which: ParamChoice = "layers") -> Any:
    """Boolean pytree: which leaves of ``params`` the parameter choice ``which`` selects.

    ``"layers"``: every leaf named ``kernel`` (the weights of ``nn.Conv``, ``nn.Dense``,
    ``nn.DenseGeneral``, ``nn.ConvTranspose``, ...) and every ``bias`` beside one; not
    normalisation scales and shifts, embedding tables or other parameters. ``"kernels"``: the
    kernels only. ``"all"``: every leaf. A predicate or a boolean pytree selects what it says.

    Args:
      params: a parameter pytree (e.g. Flax's ``"params"`` collection).
      which: ``"layers"``, ``"kernels"``, ``"all"``, a predicate ``(path, leaf) -> bool`` or a
        boolean pytree with the structure of ``params``.

    Returns:
      A pytree of Python bools with the structure of ``params``. It may select nothing (the
      NTK functions then raise).

    Raises:
      ValueError: an unknown name, or a mask of another structure.

    Examples:
      >>> import numpy as np
      >>> params = {"conv": {"kernel": np.ones((3, 3, 1, 2)), "bias": np.zeros(2)},
      ...           "norm": {"scale": np.ones(2), "bias": np.zeros(2)}}
      >>> param_mask(params)
      {'conv': {'bias': True, 'kernel': True}, 'norm': {'bias': False, 'scale': False}}
      >>> param_mask(params, lambda path, leaf: path[0] == "norm")["norm"]
      {'bias': True, 'scale': True}
    """
    paths = leaf_paths(params)
    treedef = jax.tree.structure(params)
    if callable(which):
        leaves = jax.tree.leaves(params)
        return treedef.unflatten([bool(which(p, leaf)) for p, leaf in zip(paths, leaves)])
    if not isinstance(which, str):
        try:
            keep = treedef.flatten_up_to(which)
        except (ValueError, TypeError) as e:
            raise ValueError(f"a params mask must have the structure of the parameters: {e}") \
                from None
        return treedef.unflatten([bool(k) for k in keep])
    if which not in PARAM_SETS:
        raise ValueError(f"params must be one of {PARAM_SETS}, a predicate (path, leaf) -> bool "
                         f"or a boolean pytree, got {which!r}")
    present = set(paths)

    def keep_leaf(path):
        if which == "all" or path[-1] == "kernel":
            return True
        return which == "layers" and path[-1] == "bias" and path[:-1] + ("kernel",) in present

    return treedef.unflatten([keep_leaf(p) for p in paths])


def selected(params: Params, which: ParamChoice = "layers") -> list[str]:
    """The paths (``"a/b/kernel"``) of the parameters that ``which`` selects, in leaf order.

    ``which`` as for :func:`param_mask` (which raises ``ValueError`` for a bad choice); an empty
    list if it selects nothing.

    Examples:
      >>> import numpy as np
      >>> params = {"dense": {"kernel": np.ones((4, 2)), "bias": np.zeros(2)},
      ...           "embed": {"embedding": np.ones((10, 4))}}
      >>> selected(params)
      ['dense/bias', 'dense/kernel']
      >>> selected(params, "kernels"), selected(params, "all")
      (['dense/kernel'], ['dense/bias', 'dense/kernel', 'embed/embedding'])
    """
    return ["/".join(map(str, p)) for p, keep in
            zip(leaf_paths(params), jax.tree.leaves(param_mask(params, which))) if keep]


def _checked_mask(params: Params, which: ParamChoice) -> Any:
    """:func:`param_mask`, with an error if it selects nothing."""
    mask = param_mask(params, which)
    if not any(jax.tree.leaves(mask)):
        hint = ("it selects leaves named 'kernel' (and a 'bias' beside one), and this parameter "
                "tree has none (a plain function's parameters, e.g. a neural-tangents stax "
                "network's tuples, have no names): pass params='all', a predicate "
                "(path, leaf) -> bool or a boolean pytree" if isinstance(which, str) else
                "the mask or predicate is False everywhere")
        raise ValueError(f"params={which!r} selects no parameter: {hint}")
    return mask


def split_params(params: Params, mask: Any
                 ) -> tuple[list[Any], Callable[[Iterable[Any]], Params]]:
    """``(selected leaves, merge)``: the leaves where ``mask`` is True, and a function that puts
    replacements for them back into ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keep = treedef.flatten_up_to(mask)
    selected = [leaf for leaf, k in zip(leaves, keep) if k]

    def merge(new: Iterable[Any]) -> Params:
        it = iter(new)
        return treedef.unflatten([next(it) if k else leaf for leaf, k in zip(leaves, keep)])

    return selected, merge


def select_outputs(logits: jax.Array, y: jax.Array | None, output: str) -> jax.Array:
    """The NTK outputs of a batch of logits (N, K): f_(i,o) = <c_o,i, logits_i> with the
    cotangents c of :func:`output_cotangents`; shape (N * outs,), sample-major."""
    ct = lax.stop_gradient(output_cotangents(logits, y, output))
    return jnp.einsum("onk,nk->no", ct, logits).reshape(-1)


def _gram_of_rows(rows: Any) -> jax.Array:
    """sum over leaves of R R^T, with every leaf reshaped to (M, -1)."""
    # rows has at least one leaf (_checked_mask), so the sum is an array, not the int 0
    return cast(jax.Array, sum(r.reshape(r.shape[0], -1) @ r.reshape(r.shape[0], -1).T
                               for r in jax.tree.leaves(rows)))


# ----------------------------------------------------------------------------- implementations

#: Reverse passes of the coupled JACOBIAN vectorised at once when ``chunk_size`` is None.
JACOBIAN_CHUNK = 16


def _jacobian_gram(apply, params, x, y, *, output, mask, chunk_size):
    selected, merge = split_params(params, mask)
    out, vjp = jax.vjp(lambda s: select_outputs(apply(merge(s), x), y, output), selected)
    basis = jnp.eye(out.shape[0], dtype=out.dtype)
    rows = lax.map(lambda e: vjp(e)[0], basis, batch_size=chunk_size or JACOBIAN_CHUNK)
    return _gram_of_rows(rows)


def _per_sample_gram(apply, params, x, y, *, output, mask, chunk_size):
    selected, merge = split_params(params, mask)

    def one(xi, yi):
        f = lambda s: select_outputs(apply(merge(s), xi[None]), yi[None], output)
        return jax.jacrev(f)(selected)  # leaves (1 or K, *shape)

    # y only matters for output="label"; dummy labels keep the chunks' inputs uniform otherwise
    ys = y if y is not None else jnp.zeros(x.shape[0], jnp.int32)
    n = x.shape[0]
    step = n if chunk_size is None else max(1, min(chunk_size, n))
    # chunks unrolled, not lax.map: XLA:CPU runs the per-sample convolution gradients about 19x
    # slower inside a loop (bench/results/ntk_zoo_speed.md)
    chunks = [jax.vmap(one)(x[i:i + step], ys[i:i + step]) for i in range(0, n, step)]
    rows = jax.tree.map(lambda *r: jnp.concatenate(r).reshape((-1,) + r[0].shape[2:]), *chunks)
    return _gram_of_rows(rows)  # rows (N*outs, *shape), sample-major


#: jnp.pad modes of Flax's padding strings that pad the input before a "VALID" convolution.
_PAD_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect", "CAUSAL": "constant"}


def _prepad(spec: LayerSpec, a: jax.Array) -> tuple[LayerSpec, jax.Array]:
    """A convolution with Flax's ``"CIRCULAR"``, ``"REFLECT"`` or ``"CAUSAL"`` padding as the
    ``"VALID"`` convolution of the input padded the way ``nn.Conv`` pads it; others unchanged."""
    if spec.kind != "conv" or spec.padding not in _PAD_MODES:
        return spec, a
    dilated = [(k - 1) * d + 1 for k, d in zip(spec.kernel_size, spec.kernel_dilation)]
    pads = ([(dilated[0] - 1, 0)] if spec.padding == "CAUSAL"
            else [((k - 1) // 2, k // 2) for k in dilated])
    return (spec._replace(padding="VALID"),
            jnp.pad(a, [(0, 0), *pads, (0, 0)], mode=_PAD_MODES[spec.padding]))


def _dense_operands(spec: LayerSpec, a: jax.Array, delta: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """A dense layer's input as (N, S, C_in) and output cotangent as (N, S, C_out): the
    contracted input axes moved last (in the kernel's order) and flattened, the trailing
    ``out_dims`` feature axes flattened, the other axes as S positions."""
    n = a.shape[0]
    keep = [i for i in range(1, a.ndim) if i not in spec.contract]
    x = jnp.transpose(a, (0, *keep, *spec.contract))
    x = x.reshape(n, -1, math.prod(a.shape[i] for i in spec.contract))
    return x, delta.reshape(n, -1, math.prod(delta.shape[delta.ndim - spec.out_dims:]))


def out_channels(spec: LayerSpec, out: jax.Array) -> int:
    """A layer's output channels: a convolution's last axis, a dense layer's feature axes."""
    return math.prod(out.shape[out.ndim - spec.out_dims:]) if spec.kind == "dense" else \
        out.shape[-1]


def per_sample_layer_grads(spec: LayerSpec, a: jax.Array, delta: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
    """Per-sample gradients of one layer, ``(kernel (N, D), bias (N, C_out))``.

    ``a`` is the layer input (N, ..., C_in), ``delta`` the output cotangent (N, ..., C_out);
    kernel gradients come flattened in the (group, C_in/group·window, C_out/group) order (a
    dense layer: the kernel's own order).
    """
    if spec.kind == "dense":
        x, d = _dense_operands(spec, a, delta)
        kernel = jnp.einsum("nsi,nso->nio", x, d)
        return kernel.reshape(x.shape[0], -1), d.sum(1)
    spec, a = _prepad(spec, a)
    n, c_out = delta.shape[0], delta.shape[-1]
    d = delta.reshape(n, -1, c_out)
    bias = d.sum(1)
    rank = a.ndim - 2
    spatial = "HWD"[:rank] if rank <= 3 else None
    if spatial is None:
        raise NotImplementedError("convolutions of rank > 3 are not supported")
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    patches = lax.conv_general_dilated_patches(
        a, spec.kernel_size, spec.strides, spec.padding, lhs_dilation=spec.input_dilation,
        rhs_dilation=spec.kernel_dilation, dimension_numbers=dn)  # (N, *out, C_in * window)
    g = spec.groups
    p = patches.reshape(n, -1, g, patches.shape[-1] // g)  # channel-major: groups are contiguous
    kernel = jnp.einsum("nsgk,nsgo->ngko", p, d.reshape(n, -1, g, c_out // g))
    return kernel.reshape(n, -1), bias


@functools.partial(jax.jit, static_argnums=0)
def layer_weight_grad(spec: LayerSpec, a: jax.Array, delta: jax.Array) -> jax.Array:
    """The kernel gradient of one layer summed over the batch, shaped like the kernel.

    ``a`` is the layer input (N, ..., C_in), ``delta`` the output cotangent (N, ..., C_out), as
    in :func:`per_sample_layer_grads`. A backward pass taken through a tapped network's output
    perturbations (not its kernels) gives every layer's ``delta``; this turns them into the
    kernel gradient (a convolution's through :func:`jhnas.nn.chunked_conv`), so one backward pass
    serves the NTK, Fisher and the loss gradient. jitted per layer configuration.
    """
    if spec.kind == "dense":
        x, d = _dense_operands(spec, a, delta)
        shape = (*(a.shape[i] for i in spec.contract), *delta.shape[delta.ndim - spec.out_dims:])
        return jnp.einsum("nsi,nso->io", x, d).reshape(shape)
    spec, a = _prepad(spec, a)
    c_in, c_out = a.shape[-1], delta.shape[-1]
    rank = a.ndim - 2
    spatial = "HWD"[:rank]
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    shape = (*spec.kernel_size, c_in // spec.groups, c_out)
    conv = lambda w: chunked_conv(a, w, spec.strides, spec.padding, dimension_numbers=dn,
                                  lhs_dilation=spec.input_dilation,
                                  rhs_dilation=spec.kernel_dilation,
                                  feature_group_count=spec.groups)
    return jax.vjp(conv, jnp.zeros(shape, a.dtype))[1](delta)[0]


def gram_from_taps(specs: Mapping[Path, LayerSpec], inputs: Mapping[Path, jax.Array],
                   deltas: Mapping[Path, jax.Array], *, biases: bool | Collection[Path] = True,
                   scan_offsets: bool = False) -> jax.Array:
    """The decomposition's Gram from one tapped pass, over the layers of ``specs``.

    ``inputs[path]`` is a layer's input (N, ...); ``deltas[path]`` its output cotangents for
    ``outs`` output directions, (outs, N, ...). Rows are ordered sample-major (``i * outs + o``).
    ``biases``: whether the layers' biases count (or the paths of the layers whose bias counts).
    ``scan_offsets``: see :func:`_layer_gram`.
    """
    gram: Any = 0.0  # an array from the first layer on
    for path, spec in specs.items():
        bias = spec.use_bias and (biases if isinstance(biases, bool) else path in biases)
        gram = gram + _layer_gram(spec, inputs[path], deltas[path], bias, scan_offsets)
    return gram


#: Samples per step of :func:`_layer_gram`'s loops over the batch.
GRAM_CHUNK = 2
#: Grouped convolutions: size of one kernel offset's operands (shifted input and cotangents of
#: the whole batch) above which :func:`_layer_gram` works through the batch in chunks of
#: :data:`GRAM_CHUNK` samples.
GRAM_CHUNK_BYTES = 3 * 2**20


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _layer_gram(spec: LayerSpec, a: jax.Array, deltas: jax.Array, bias: bool,
                scan_offsets: bool = False) -> jax.Array:
    """One layer's Gram of per-sample gradients, (N * outs, N * outs), sample-major rows.

    jitted per layer: one compilation per layer shape, shared by every network that has it. The
    same numbers as :func:`per_sample_layer_grads` (up to float32 summation order), without
    building the window-times larger patch tensor:

    * an ungrouped convolution with a window of more than one position takes each sample's
      kernel gradient as the weight-gradient convolution of that sample alone
      (:func:`_conv_rows`), :data:`GRAM_CHUNK` samples per step of a loop over the batch;
    * a grouped or 1x1 convolution takes the per-sample gradient one kernel offset at a time
      (the input shifted by that offset against the output cotangent), over the whole batch, or
      in chunks of :data:`GRAM_CHUNK` samples (``lax.map``) where one offset's operands exceed
      :data:`GRAM_CHUNK_BYTES`, so that every offset of a chunk finds it in cache.

    ``scan_offsets=True`` takes every convolution offset by offset over the whole batch, in a
    ``lax.scan``: inside one jit-compiled network XLA can then no longer hoist the shifted
    copies of any layer input into the forward pass and keep them alive through the backward
    pass (``bench/results/parallel.md``).
    """
    spec, a = _prepad(spec, a)
    n, outs = a.shape[0], deltas.shape[0]
    flat = lambda r: r.reshape(n * outs, -1)  # (n, outs, ...) -> sample-major rows
    gram = jnp.zeros((n * outs, n * outs), deltas.dtype)
    if bias:
        b = deltas.reshape(outs, n, -1, out_channels(spec, deltas)).sum(2)  # (outs, N, C_out)
        gram = gram + _gram_of_rows([flat(jnp.swapaxes(b, 0, 1))])
    if spec.kind == "dense":
        return gram + _dense_gram(spec, a, deltas)
    if any(d != 1 for d in spec.input_dilation):
        kern, _ = jax.vmap(lambda d: per_sample_layer_grads(spec, a, d))(deltas)
        return gram + _gram_of_rows([flat(jnp.swapaxes(kern, 0, 1))])
    offsets = list(np.ndindex(*spec.kernel_size))
    if spec.groups == 1 and len(offsets) > 1 and not scan_offsets:
        return gram + _gram_of_rows([_conv_rows(spec, a, deltas)])
    a, shifted = _shifts(spec, a, deltas.shape[2:-1])
    g = spec.groups
    d = deltas.reshape(outs, n, -1, g, deltas.shape[-1] // g)
    grad = lambda x, d: jnp.einsum("nsgc,onsgk->nogck", x.reshape(*x.shape[:2], g, -1), d)
    offset_gram = lambda o: _gram_of_rows([flat(grad(shifted(a, o), d))])
    if scan_offsets and len(offsets) > 1:
        step = lambda gram, o: (gram + offset_gram(o), None)
        return lax.scan(step, gram, jnp.asarray(offsets))[0]
    chunk = math.gcd(n, GRAM_CHUNK)
    offset_bytes = n * d.shape[2] * (a.shape[-1] + outs * deltas.shape[-1]) * d.dtype.itemsize
    if len(offsets) == 1 or chunk == n or offset_bytes < GRAM_CHUNK_BYTES:
        for o in offsets:
            gram = gram + offset_gram(o)
        return gram

    def chunk_grads(ad):  # (chunk, outs, offsets * g * C_in * C_out)
        ac, dc = ad
        return jnp.stack([grad(shifted(ac, o), dc) for o in offsets], 2).reshape(chunk, outs, -1)

    d = jnp.swapaxes(d.reshape(outs, n // chunk, chunk, *d.shape[2:]), 0, 1)
    rows = lax.map(chunk_grads, (a.reshape(n // chunk, chunk, *a.shape[1:]), d))
    return gram + _gram_of_rows([rows.reshape(n * outs, -1)])


def _dense_gram(spec: LayerSpec, a: jax.Array, deltas: jax.Array) -> jax.Array:
    r"""A dense layer's kernel Gram, (N * outs, N * outs), sample-major rows.

    With the input as S positions of C_in features (:func:`_dense_operands`), sample :math:`i`'s
    kernel gradient for output :math:`o` is :math:`\sum_s x_{is} \otimes \delta_{ios}`, so

    .. math:: \Theta_{(i,o),(j,p)} = \sum_{s,t} (x_{is} \cdot x_{jt})\,
              (\delta_{ios} \cdot \delta_{jpt}),

    which never forms the (C_in x C_out) gradients. Used where it is cheaper than forming them
    (:math:`S^2 (C_{in} + C_{out}) < C_{in} C_{out}`: one position per sample, as in an MLP);
    otherwise the gradients are formed and multiplied.
    """
    n, outs = a.shape[0], deltas.shape[0]
    x, _ = _dense_operands(spec, a, deltas[0])
    d = jax.vmap(lambda dd: _dense_operands(spec, a, dd)[1])(deltas)  # (outs, N, S, C_out)
    positions, c_in, c_out = x.shape[1], x.shape[2], d.shape[-1]
    if positions ** 2 * (c_in + c_out) >= c_in * c_out:
        kern = jnp.einsum("nsi,onsk->noik", x, d)
        return _gram_of_rows([kern.reshape(n * outs, -1)])
    xx = jnp.einsum("isc,jtc->ijst", x, x)
    dd = jnp.einsum("oisc,pjtc->iojpst", d, d)
    return jnp.einsum("ijst,iojpst->iojp", xx, dd).reshape(n * outs, n * outs)


def _conv_rows(spec: LayerSpec, a: jax.Array, deltas: jax.Array) -> jax.Array:
    r"""Per-sample kernel gradients of an ungrouped convolution, (N * outs, window * C_in *
    C_out), sample-major rows, in the order (C_in, window, C_out).

    Sample :math:`i`'s gradient :math:`g_i[c, o, k] = \sum_s \delta_i[s, k]\,
    a_i^{pad}[s \cdot \mathrm{stride} + o \cdot \mathrm{dilation}, c]` is itself a convolution:
    the input's C_in channels as a batch of one-channel images, the output cotangents as the
    filter (dilated by the stride, moved by the kernel dilation), the first ``kernel_size``
    positions of the result. XLA:CPU runs these small convolutions faster than the offset-wise
    products on NB201's 32x32 and 16x16 stages; a loop over the batch, :data:`GRAM_CHUNK`
    samples a step, reads each sample's operands once and keeps no padded copy of the batch.
    """
    n, outs = a.shape[0], deltas.shape[0]
    out_shape = deltas.shape[2:-1]
    pads = _pads(spec, a.shape[1:-1])
    spatial = "HWD"[:a.ndim - 2]
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")

    def one(x, d):  # x (*in, C_in), d (outs, *out, C_out) -> (outs, C_in * window * C_out)
        rhs = jnp.moveaxis(d, 0, -2).reshape(*out_shape, 1, -1)
        lhs = jnp.moveaxis(x, -1, 0)[..., None]  # a's channels as the batch
        g = lax.conv_general_dilated(lhs, rhs, spec.kernel_dilation, "VALID",
                                     rhs_dilation=spec.strides, dimension_numbers=dn)
        g = g[(slice(None), *(slice(k) for k in spec.kernel_size))]
        return jnp.moveaxis(g.reshape(*g.shape[:-1], outs, -1), -2, 0).reshape(outs, -1)

    chunk = math.gcd(n, GRAM_CHUNK)

    def step(i):  # (chunk, outs, D)
        x = lax.dynamic_slice_in_dim(a, i * chunk, chunk, 0)
        # padded here: XLA:CPU runs the convolution with padding several times slower
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                                (0, 0, 0)])
        d = lax.dynamic_slice_in_dim(deltas, i * chunk, chunk, 1)
        return jnp.stack([one(x[j], d[:, j]) for j in range(chunk)])

    return lax.map(step, jnp.arange(n // chunk)).reshape(n * outs, -1)


def _pads(spec: LayerSpec, in_shape: Sequence[int]) -> Sequence[tuple[int, int]]:
    """A convolution's (low, high) zero padding per spatial axis of an input of ``in_shape``."""
    if not isinstance(spec.padding, str):
        return spec.padding
    window = [(k - 1) * r + 1 for k, r in zip(spec.kernel_size, spec.kernel_dilation)]
    return lax.padtype_to_pads(in_shape, window, spec.strides, spec.padding)


def _shifts(spec: LayerSpec, a: jax.Array, out_shape: Sequence[int]
            ) -> tuple[jax.Array, Callable[[jax.Array, Any], jax.Array]]:
    """A convolution's zero-padded input and ``shifted(a, offset)``: the padded input ``a``
    (n, ...) at the positions that kernel offset ``offset`` meets, (n, prod(out_shape), C_in).
    ``offset`` may be traced (``lax.scan``)."""
    pads = _pads(spec, a.shape[1:-1])
    sizes = [(m - 1) * s + 1 for m, s in zip(out_shape, spec.strides)]

    def shifted(a, offset):
        start = [o * r for o, r in zip(offset, spec.kernel_dilation)]
        if isinstance(offset, tuple):
            limit = [st + size for st, size in zip(start, sizes)]
            x = lax.slice(a, (0, *start, 0), (a.shape[0], *limit, a.shape[-1]),
                          (1, *spec.strides, 1))
        else:
            x = lax.dynamic_slice(a, (0, *start, 0), (a.shape[0], *sizes, a.shape[-1]))
            x = x[(slice(None), *(slice(None, None, s) for s in spec.strides))]
        return x.reshape(a.shape[0], -1, a.shape[-1])

    return jnp.pad(a, ((0, 0), *pads, (0, 0))), shifted


def output_cotangents(logits: jax.Array, y: jax.Array | None, output: str) -> jax.Array:
    """Cotangents (outs, N, K) of the logits whose VJPs give the NTK outputs' gradients."""
    n, k = logits.shape
    if output == "all":
        return jnp.broadcast_to(jnp.eye(k, dtype=logits.dtype)[:, None, :], (k, n, k))
    if output == "label":
        if y is None:
            raise ValueError("output='label' needs the labels y")
        if not isinstance(y, jax.core.Tracer):
            check_labels(y, k)
        # under a trace only the values know: a label out of range gives rows of NaN
        valid = ((y >= 0) & (y < k))[:, None]
        return jnp.where(valid, jax.nn.one_hot(y, k, dtype=logits.dtype), jnp.nan)[None]
    if output == "sum":
        return ones_like(logits)[None]
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def ones_like(a: jax.Array) -> jax.Array:
    """Ones shaped like ``a`` (NaN where ``a`` is not finite), computed from ``a``.

    ``1 + 0 * a``: the same ones as ``jnp.ones_like(a)``, but not a constant that XLA could fold
    (IEEE ``0 * inf`` is NaN, so ``0 * a`` is not folded for floats). The NTK's ``output="sum"``
    cotangent is built with it: folded constant ones met an XLA:CPU miscompilation in jaxlib
    0.10.2 to 0.12.0.1 (the design notes of the documentation; ``bench/xla_ynn_bug.py``).

    Examples:
      >>> import jax.numpy as jnp
      >>> ones_like(jnp.array([2.0, -3.0, jnp.inf]))
      Array([ 1.,  1., nan], dtype=float32)
    """
    return 1 + 0 * lax.stop_gradient(a)


def check_decomposable(specs: Mapping[Path, LayerSpec], params: Params, which: ParamChoice,
                       fix: str = "use implementation='jacobian' or 'per_sample'"
                       ) -> set[tuple[Any, ...]]:
    """The paths of the parameters ``which`` selects; ``ValueError`` (ending in ``fix``) unless
    the taps give the per-sample gradient of each: it is the kernel, or the bias together with
    the kernel, of a tapped layer (:data:`jhnas.net.TAPPED`) whose kernel and bias reach its
    convolution or matmul unchanged (``LayerSpec.direct``)."""
    name = lambda p: "/".join(map(str, p))  # noqa: E731
    bad = [name(p) for p, s in specs.items() if not s.direct]
    if bad:
        raise ValueError(f"the decomposition cannot take per-sample gradients of layer(s) "
                         f"{', '.join(bad)}: the kernel or bias is transformed before the "
                         f"convolution/matmul uses it, or reaches it through a transformation "
                         f"jhnas does not follow (a mask, weight standardisation, a parameter "
                         f"used twice, nn.scan, nn.remat); {fix}")
    covered = {p + (leaf,) for p, s in specs.items()
               for leaf in (("kernel", "bias") if s.use_bias else ("kernel",))}
    chosen = {p for p, keep in zip(leaf_paths(params),
                                   jax.tree.leaves(_checked_mask(params, which))) if keep}
    missing = [name(p) for p in leaf_paths(params) if p in chosen and p not in covered]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"the decomposition takes the kernels and biases of the nn.Conv, "
                         f"nn.Dense and nn.DenseGeneral layers it taps; params={which!r} also "
                         f"selects {', '.join(missing[:5])}{more}; {fix}")
    orphans = [name(p) for p in specs if p + ("bias",) in chosen and p + ("kernel",) not in chosen]
    if orphans:
        raise ValueError(f"the decomposition takes a layer's bias only with its kernel; "
                         f"params={which!r} selects the bias alone of {', '.join(orphans)}; {fix}")
    return chosen


def _decomposition_gram(net: Net, params: Params, x: jax.Array, y: jax.Array | None, *,
                        output: str, which: ParamChoice, scan_offsets: bool = False) -> jax.Array:
    if net.tapped is None or net.layers is None:
        raise ValueError("the decomposition needs a tappable net: build it with "
                         "jhnas.net.from_flax(module); plain functions support 'jacobian' and "
                         "'per_sample'")
    specs, dy0 = net.layers(params, x)
    chosen = check_decomposable(specs, params, which)
    logits, pull, (taps, _) = net_vjp(net, params, x, dy0)
    deltas = jax.vmap(lambda c: pull(c, ("dy",))["dy"])(output_cotangents(logits, y, output))
    return gram_from_taps({p: s for p, s in specs.items() if p + ("kernel",) in chosen},
                          taps.inputs, deltas, biases={p for p in specs if p + ("bias",) in chosen},
                          scan_offsets=scan_offsets)


def empirical_ntk_fn(f: Net | Apply, *,
                     implementation: Implementation | str = "decomposition",
                     output: str = "label", params: ParamChoice = "layers",
                     chunk_size: int | None = None,
                     backend: str = "jhnas", nt_implementation: str = "structured_derivatives",
                     scan_offsets: bool = False) -> NTKFn:
    """Returns ``ntk(params, x, y=None) -> Theta`` (float32, (M, M)), jit-compiled.

    ``Theta = J J^T``, ``J`` the Jacobian of the outputs chosen by ``output`` with respect to the
    parameters chosen by ``params`` (module docstring). M = N for ``output="label"`` and
    ``"sum"``, N * K for ``"all"`` (rows sample-major, ``i * K + k``). The returned function is
    jit-compiled, except for a net of compiled blocks (:func:`jhnas.net.from_blocks`), whose
    glue runs eagerly.

    Args:
      f: a :class:`jhnas.net.Net` or a plain ``apply(params, x) -> logits`` (N, K).
      implementation: see :class:`Implementation`.
      output: ``"label"``, ``"sum"`` or ``"all"``.
      params: ``"layers"``, ``"kernels"``, ``"all"``, a predicate ``(path, leaf) -> bool`` or a
        boolean pytree (:func:`param_mask`; :func:`selected` lists what it selects). Selecting
        nothing is an error.
      chunk_size: samples (PER_SAMPLE, and JACOBIAN without coupling) or reverse passes
        (JACOBIAN with coupling) vectorised at once; bounds the memory of the passes to about
        ``chunk_size`` of them. None: every sample at once, and :data:`JACOBIAN_CHUNK` reverse
        passes.
      backend: ``"jhnas"`` or ``"neural_tangents"`` (JACOBIAN and PER_SAMPLE only; optional
        dependency, see the module docstring).
      nt_implementation: neural-tangents' algorithm, one of :data:`NT_IMPLEMENTATIONS`.
      scan_offsets: DECOMPOSITION only: loop over convolution kernel offsets with ``lax.scan``
        (same values, lower peak memory of a jit-compiled network).

    Returns:
      ``ntk(params, x, y=None)``: ``x`` the batch (N, ...), ``y`` int labels (N,) in
      ``0..K-1`` (needed by ``output="label"``); returns the symmetric Gram (M, M).

    Raises:
      ValueError: an unknown ``implementation``, ``output``, ``params`` or ``backend`` (here),
        and, when ``ntk`` is called: a choice that selects no parameter, ``output="label"``
        without labels, labels out of range, or a parameter the decomposition cannot take
        (the message names it and suggests ``implementation="jacobian"``).

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from jhnas.net import from_flax
      >>> net = from_flax(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)]))
      >>> x, y = jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])
      >>> params = net.init(jax.random.key(0), x)
      >>> empirical_ntk_fn(net, output="all")(params, x, y).shape   # N * K rows
      (12, 12)
      >>> label = empirical_ntk_fn(net)(params, x, y)               # decomposition, label logits
      >>> exact = empirical_ntk_fn(net, implementation="jacobian")(params, x, y)
      >>> bool(jnp.allclose(label, exact, rtol=1e-4, atol=1e-5))   # no batch coupling here
      True
    """
    impl = Implementation(implementation)
    net = f if isinstance(f, Net) else from_apply(f)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if isinstance(params, str) and params not in PARAM_SETS:
        raise ValueError(f"params must be one of {PARAM_SETS}, a predicate (path, leaf) -> bool "
                         f"or a boolean pytree, got {params!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "neural_tangents":
        return _nt_ntk_fn(net, impl, output=output, which=params,
                          nt_implementation=nt_implementation)

    def ntk(p: Params, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        if output == "label" and y is None:
            raise ValueError("output='label' needs the labels y")
        if impl is Implementation.DECOMPOSITION:
            return _decomposition_gram(net, p, x, y, output=output, which=params,
                                       scan_offsets=scan_offsets)
        exact_rows = impl is Implementation.JACOBIAN and (net.coupled is None
                                                          or net.coupled(p, x))
        fn = _jacobian_gram if exact_rows else _per_sample_gram
        return fn(net.apply, p, x, y, output=output, mask=_checked_mask(p, params),
                  chunk_size=chunk_size)

    # a net of compiled blocks runs the glue eagerly (an outer jit would compile it whole again)
    return ntk if net.compiled else jax.jit(ntk)


def _nt_ntk_fn(net: Net, impl: Implementation, *, output: str, which: ParamChoice,
               nt_implementation: str) -> NTKFn:
    """The NTK by neural-tangents' ``empirical_ntk_fn`` (jit-compiled whole)."""
    if impl is Implementation.DECOMPOSITION:
        raise ValueError("neural-tangents has no per-layer decomposition: use "
                         "implementation='jacobian' (the batched function) or 'per_sample'")
    if nt_implementation not in NT_IMPLEMENTATIONS:
        raise ValueError(f"nt_implementation must be one of {NT_IMPLEMENTATIONS}, got "
                         f"{nt_implementation!r}")
    nt = _nt_compat.load()
    nt_impl = nt.NtkImplementation[nt_implementation.upper()]
    per_sample = impl is Implementation.PER_SAMPLE

    def ntk(p: Params, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        if output == "label" and y is None:
            raise ValueError("output='label' needs the labels y")
        selected, merge = split_params(p, _checked_mask(p, which))

        def f(s, xx, y):  # (N, outs); with vmap_axes NT calls it on one sample at a time
            return select_outputs(net.apply(merge(s), xx), y, output).reshape(xx.shape[0], -1)

        ys = y if y is not None else jnp.zeros(x.shape[0], jnp.int32)
        kernel = nt.empirical_ntk_fn(f, trace_axes=(), implementation=nt_impl,
                                     vmap_axes=(0, 0, {"y": 0}) if per_sample else None)
        k = kernel(x, None, selected, y=ys)  # (N, N, outs, outs)
        n, outs = k.shape[0], k.shape[-1]
        return jnp.transpose(k, (0, 2, 1, 3)).reshape(n * outs, n * outs)

    return jax.jit(ntk)


# ----------------------------------------------------------------------------- spectrum (host)

def _checked(gram: ArrayLike) -> np.ndarray:
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"NTK Gram must be square, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise FloatingPointError(f"NTK Gram has {np.size(g) - np.isfinite(g).sum()} non-finite "
                                 "entries (the network's outputs or gradients overflowed)")
    return (g + g.T) / 2


def eigenvalues(gram: ArrayLike) -> np.ndarray:
    """Eigenvalues of the Gram in float64, ascending, (M,).

    The Gram (M, M) is symmetrised, ``(G + G^T) / 2``, on the host. Raises ``ValueError`` if it
    is not square and ``FloatingPointError`` if it has non-finite entries.

    Examples:
      >>> eigenvalues([[2.0, 1.0], [1.0, 2.0]])
      array([1., 3.])
    """
    return np.linalg.eigvalsh(_checked(gram))


def trace_norm(gram: ArrayLike) -> float:
    """The NASI/HNAS metric M = sqrt(tr(Theta) / M_rows), in float64 on the host.

    Raises ``ValueError`` for a Gram that is not square and ``FloatingPointError`` for one with
    non-finite entries.

    Examples:
      >>> trace_norm([[3.0, 1.0], [1.0, 5.0]])   # sqrt(8 / 2)
      2.0
    """
    g = _checked(gram)
    return math.sqrt(max(np.trace(g), 0.0) / g.shape[0])


def cond_floor(n: int) -> float:
    """Relative eigenvalue floor n * eps(float32): below it a float32 Gram's eigenvalues are
    rounding noise. The condition number is therefore at most 1 / cond_floor(n).

    Examples:
      >>> round(1 / cond_floor(64))   # the cap of the condition number at N = 64
      131072
    """
    return n * float(np.finfo(np.float32).eps)


def condition_number(gram: ArrayLike) -> float:
    r"""kappa = lambda_max / max(lambda_min, floor * lambda_max), floor = :func:`cond_floor` (N).

    Guarded, unlike the official code: a singular or indefinite (rounding) Gram gives the cap
    1/floor (1.3e5 for N = 64) instead of a negative or huge value, and an all-zero Gram (e.g. a
    network whose output ignores its parameters) also gives the cap. Always finite, >= 1.
    Computed in float64 on the host; raises ``ValueError`` for a Gram that is not square and
    ``FloatingPointError`` for one with non-finite entries.

    Examples:
      >>> condition_number([[4.0, 0.0], [0.0, 1.0]])
      4.0
      >>> condition_number([[1.0, 1.0], [1.0, 1.0]]) == 1 / cond_floor(2)   # singular: the cap
      True
    """
    lam = eigenvalues(gram)
    floor = cond_floor(lam.shape[0])
    if lam[-1] <= 0.0:
        return 1.0 / floor
    return float(lam[-1] / max(lam[0], floor * lam[-1]))
