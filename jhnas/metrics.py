r"""Training-free metrics with the official (zero-cost / HNAS) definitions.

Every metric is a function ``metric(net, params, batch, key) -> float`` of a :class:`jhnas.net.Net`,
its ``params``, a :class:`jhnas.data.Batch` ``(x NHWC, y)`` and a typed PRNG key, looked up by name
in :data:`METRICS`. To compute several at once, sharing passes, use :func:`metrics_fn`.

Protocol (the official zero-cost / HNAS code): BatchNorm as the net was built
(``from_flax(..., bn="train")``: batch statistics), loss L = mean cross-entropy with the true
labels, only Conv/Dense layers count, per-layer arrays summed to one scalar. With W the kernels
of the Conv/Dense layers:

=========== ===============================================================================
metric      definition
=========== ===============================================================================
grad_norm   sum over layers of ||dL/dW_l||_F
snip        sum |W * dL/dW|
grasp       sum -W * (H g), g = dL/dW held fixed, H g = d<g, dL/dW>/dW (signed)
fisher      per output channel c of each layer output a: F_c = 0.5 mean_i (sum_spatial a dL/da)^2;
            the official code copies F_c to each of the fan_in weights of channel c and sums, so
            a layer counts fan_in * sum_c F_c (fan_in = C_in / groups * prod(kernel size))
synflow     float64, BN off, |all params|, input all-ones (1, H, W, 3), R = sum logits:
            sum |W * dR/dW| (can exceed 1e30)
jacob_cov   J = d(sum logits)/dx per sample, C = corrcoef(J), -sum(log(l + 1e-5) + 1/(l + 1e-5))
            over the eigenvalues l of C; NaN when a row of J is constant (output ignores input)
naswot      binary codes c of every ReLU input, K = c c^T + (1-c)(1-c)^T, log|det K| (Mellor et
            al.; -inf when K is singular)
zico        batch split into ``zico_splits`` parts, per layer sum over weights of
            mean|g| / std(g) across the parts (std > 0 only), log, summed over layers
ntk_trace   M = sqrt(tr Theta / N), Theta the NTK of the true-label logit over Conv/Dense kernels
            and biases, official decomposition (:mod:`jhnas.ntk`)
ntk_cond    kappa = lambda_max / lambda_min of the same Theta, guarded
            (:func:`jhnas.ntk.condition_number`)
=========== ===============================================================================

The metrics are deterministic given params and batch; ``key`` is accepted so every metric has
the same signature (none of the built-in ones draws random numbers).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from jhnas import ntk as ntk_lib
from jhnas.data import check_labels
from jhnas.net import Apply, LayerSpec, Net, Params, from_apply
from jhnas.net import vjp as net_vjp


class BatchLike(Protocol):
    """What the metrics read of a batch (e.g. :class:`jhnas.data.Batch`): ``x`` (N, ...) and
    integer labels ``y`` (N,)."""

    @property
    def x(self) -> ArrayLike: ...

    @property
    def y(self) -> ArrayLike: ...


class MetricsFn(Protocol):
    """``fn(params, batch, key=None) -> {name: value}``, as :func:`metrics_fn` returns it."""

    def __call__(self, params: Params, batch: BatchLike, key: jax.Array | None = None, /
                 ) -> dict[str, float]: ...


class Metric(NamedTuple):
    """A registered metric: the passes it needs and how to finish it on the host."""

    passes: frozenset[str]
    finish: Callable[[Mapping[str, Any]], float]
    needs_taps: bool = False


def _jacob_cov(jac: np.ndarray) -> float:
    jac = np.asarray(jac, np.float64).reshape(jac.shape[0], -1)
    if np.any(np.std(jac, axis=1) == 0):
        return float("nan")
    lam = np.clip(np.linalg.eigvalsh(np.corrcoef(jac)), 0.0, None)
    k = 1e-5
    return float(-np.sum(np.log(lam + k) + 1.0 / (lam + k)))


def _logdet(k: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(np.asarray(k, np.float64))
    return float(logdet) if sign != 0 else float("-inf")


def _zico(ratio_sums: np.ndarray) -> float:
    s = np.asarray(ratio_sums, np.float64)
    return float(np.sum(np.log(s[s != 0])))


METRICS: dict[str, Metric] = {
    "grad_norm": Metric(frozenset({"loss"}), lambda r: float(r["grad_norm"])),
    "snip": Metric(frozenset({"loss"}), lambda r: float(r["snip"])),
    "grasp": Metric(frozenset({"grasp"}), lambda r: float(r["grasp"])),
    "fisher": Metric(frozenset({"fisher"}), lambda r: float(r["fisher"]), needs_taps=True),
    "synflow": Metric(frozenset({"synflow"}), lambda r: float(r["synflow"])),
    "jacob_cov": Metric(frozenset({"jacob"}), lambda r: _jacob_cov(r["jacob"])),
    "naswot": Metric(frozenset({"naswot"}), lambda r: _logdet(r["naswot_k"]), needs_taps=True),
    "zico": Metric(frozenset({"zico"}), lambda r: _zico(r["zico"])),
    "ntk_trace": Metric(frozenset({"ntk"}), lambda r: ntk_lib.trace_norm(r["gram"]),
                        needs_taps=True),
    "ntk_cond": Metric(frozenset({"ntk"}), lambda r: ntk_lib.condition_number(r["gram"]),
                       needs_taps=True),
}


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


#: dL/dlogits, jitted: the glue of a net of compiled blocks runs eagerly.
_loss_cotangent = jax.jit(jax.grad(cross_entropy))
# Jitted for the same reason: GraSP's Hessian-vector product through compiled blocks then compiles
# each derivative of the loss as one program, not one per array operation.
_cross_entropy = jax.jit(cross_entropy)


def _loss_grad(net: Net, merge: Callable[[Iterable[Any]], Params], kernels: Sequence[Any],
               x: jax.Array, y: jax.Array) -> Any:
    """dL/dW for the Conv/Dense kernels (a list aligned with ``kernels``)."""
    return jax.grad(lambda w: _cross_entropy(net.apply(merge(w), x), y))(kernels)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fisher(fan_in: int, channels: int, a: jax.Array, g: jax.Array) -> jax.Array:
    """One layer with output a and dL/da: fan_in * sum_c 0.5 mean_i (sum_spatial a g)^2.

    The fan_in factor is the official code's broadcast of each channel's value over the
    channel's kernel slice (``reshape_elements`` in the zero-cost code) before everything is
    summed; without it 3x3 convolutions and the classifier are under-weighted.
    """
    n = a.shape[0]
    return fan_in * (0.5 * ((a * g).reshape(n, -1, channels).sum(1) ** 2).mean(0)).sum()


def _fan_in(spec: LayerSpec, x: jax.Array) -> int:
    if spec.kind == "dense":
        return math.prod(x.shape[i] for i in spec.contract)
    return x.shape[-1] // spec.groups * math.prod(spec.kernel_size)


@jax.jit
def _grasp_layer(total: jax.Array, w: jax.Array, hg: jax.Array) -> jax.Array:
    """``total`` - sum(w * Hg) of one layer."""
    return total - (w * hg).sum()


@jax.jit
def _grad_stats_layer(total: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
    """``total`` + (||g||_F, sum |w * g|) of one layer."""
    return total + jnp.stack([jnp.sqrt((g ** 2).sum()), jnp.abs(w * g).sum()])


def _layer_sum(layer_fn: Callable[[Any, Any, Any], Any], kernels: Sequence[Any],
               grads: Sequence[Any], shape: tuple[int, ...] = ()) -> Any:
    """``layer_fn(total, w, g)`` accumulated over the layers from zeros of ``shape``.

    One jitted call per layer (not per array operation): a net of compiled blocks runs this glue
    eagerly, and the jitted layer function is shared by every layer of the same shape.
    """
    total = np.zeros(shape, jnp.result_type(*grads))
    for w, g in zip(kernels, grads):
        total = layer_fn(total, w, g)
    return total


_NTK_FIX = ("for such a network compute the Gram with jhnas.empirical_ntk_fn(net, "
            "implementation='jacobian') and take jhnas.trace_norm / jhnas.condition_number of it")


def _device_passes(net: Net, passes: frozenset[str], zico_splits: int
                   ) -> Callable[[Params, jax.Array, jax.Array], dict[str, Any]]:
    """The jit-able part: every needed quantity from as few forward/backward passes as possible.

    The tapped forward pass (layer inputs, outputs and output cotangents) is used only when a
    quantity needs it (fisher, the NTK, naswot); otherwise the loss gradient and jacob_cov share
    a plain forward pass.
    """
    loss_pass = passes & {"loss", "grasp", "fisher"}

    def run(params: Params, x: jax.Array, y: jax.Array) -> dict[str, Any]:
        out = {}
        mask = ntk_lib.param_mask(params, "kernels")
        kernels, merge = ntk_lib.split_params(params, mask)
        kernels_of = lambda tree: ntk_lib.split_params(tree, mask)[0]  # noqa: E731
        if passes & {"fisher", "ntk", "naswot"} and net.tapped is not None \
                and net.layers is not None:
            # One tapped forward pass serves the loss gradient, Fisher, the NTK, jacob_cov and
            # NASWOT. Its backward passes go to the layers' output perturbations (and the input
            # for jacob_cov), not to the kernels: the kernel gradient follows from each layer's
            # input and output cotangent (ntk.layer_weight_grad), so the NTK's backward pass
            # computes no weight gradients.
            specs, dy0 = net.layers(params, x)
            need_w = bool(passes & {"loss", "grasp"})
            # each kernel's module path, in the order of `kernels` (param_mask's "kernels" rule)
            paths = [p[:-1] for p in ntk_lib.leaf_paths(params) if p[-1] == "kernel"]
            # a kernel without taps, or transformed before use, needs the parameters' cotangent
            tapped = all(p in specs and specs[p].direct for p in paths)
            wrt = ("dy", "params") if need_w and not tapped else ("dy",)
            logits, pull, (taps, relus) = net_vjp(net, params, x, dy0)
            n = logits.shape[0]
            if loss_pass:
                g = pull(_loss_cotangent(logits, y), wrt)
                if need_w:
                    g_w = kernels_of(g["params"]) if "params" in g else [
                        ntk_lib.layer_weight_grad(specs[p], taps.inputs[p], g["dy"][p])
                        for p in paths]
            if "fisher" in passes:
                out["fisher"] = sum(_fisher(_fan_in(s, taps.inputs[p]),
                                            ntk_lib.out_channels(s, taps.outputs[p]),
                                            taps.outputs[p], g["dy"][p])
                                    for p, s in specs.items())
            if "ntk" in passes:
                ntk_lib.check_decomposable(specs, params, "layers", _NTK_FIX)
                ct = ntk_lib.output_cotangents(logits, y, "label")
                if ct.shape[0] == 1:  # no vmap: reuse the backward blocks the loss pass compiled
                    deltas = jax.tree.map(lambda d: d[None], pull(ct[0], ("dy",))["dy"])
                else:
                    deltas = jax.vmap(lambda c: pull(c, ("dy",))["dy"])(ct)
                out["gram"] = ntk_lib.gram_from_taps(specs, taps.inputs, deltas)
            if "jacob" in passes:
                out["jacob"] = pull(ntk_lib.ones_like(logits), ("x",))["x"]
            if "naswot" in passes:
                if not relus:
                    raise ValueError("naswot needs ReLU inputs: call jhnas.nn.relu(module, x) for "
                                     "the network's ReLUs")
                c = jnp.concatenate([(r > 0).reshape(n, -1).astype(jnp.float32) for r in relus], 1)
                out["naswot_k"] = c @ c.T + (1 - c) @ (1 - c).T
        elif loss_pass or "jacob" in passes:
            logits, pull, _ = net_vjp(net, params, x)
            if loss_pass:
                g_w = kernels_of(pull(_loss_cotangent(logits, y))["params"])
            if "jacob" in passes:
                out["jacob"] = pull(ntk_lib.ones_like(logits), ("x",))["x"]
        if "loss" in passes:
            stats = _layer_sum(_grad_stats_layer, kernels, g_w, (2,))
            out.update(grad_norm=stats[0], snip=stats[1])
        if "grasp" in passes:  # H g by forward-over-reverse, g from the loss pass
            _, hg = jax.jvp(lambda w: _loss_grad(net, merge, w, x, y), (kernels,), (list(g_w),))
            out["grasp"] = _layer_sum(_grasp_layer, kernels, hg)
        if "zico" in passes:
            n = x.shape[0] // zico_splits * zico_splits
            xs = x[:n].reshape((zico_splits, -1) + x.shape[1:])
            ys = y[:n].reshape(zico_splits, -1)
            grads = jax.vmap(lambda xx, yy: _loss_grad(net, merge, kernels, xx, yy))(xs, ys)
            ratios = []
            for g in grads:  # (splits, *shape)
                std, mean_abs = g.std(0), jnp.abs(g).mean(0)
                ratios.append(jnp.where(std > 0, mean_abs / jnp.where(std > 0, std, 1.0), 0.0).sum())
            out["zico"] = jnp.stack(ratios)
        return out

    return run


def _synflow_fn(net: Net) -> Callable[[Params, jax.Array], jax.Array | int]:
    """SynFlow in float64 (needs ``jax.enable_x64`` while tracing and running)."""
    apply_nobn = net.apply_nobn
    if apply_nobn is None:
        raise ValueError("synflow needs the net's apply_nobn (apply without BatchNorm): build the "
                         "net with jhnas.net.from_flax or from_apply")

    def run(params: Params, x_shape_one: jax.Array) -> jax.Array | int:  # 0: no kernel
        p = jax.tree.map(lambda a: jnp.abs(a.astype(jnp.float64)), params)
        selected, merge = ntk_lib.split_params(p, ntk_lib.param_mask(p, "kernels"))
        g = jax.grad(lambda w: apply_nobn(merge(w), x_shape_one).sum())(selected)
        return sum(jnp.abs(w * gw).sum() for w, gw in zip(selected, g))

    return run


def metrics_fn(f: Net | Apply, names: Sequence[str], *,
               zico_splits: int = 2) -> MetricsFn:
    """Returns ``fn(params, batch, key) -> {name: value}`` computing ``names`` with shared passes.

    The device work is one jit-compiled function (plus a float64 one for synflow), compiled on
    the first call (for a net of compiled blocks, :func:`jhnas.net.from_blocks`, the blocks are
    compiled and the glue runs eagerly); spectra, log-determinants and correlations are finished
    on the host in float64.

    Args:
      f: a :class:`jhnas.net.Net` or a plain ``apply(params, x) -> logits`` (N, K); fisher,
        naswot, ntk_trace and ntk_cond need a tappable net (:func:`jhnas.net.from_flax`).
      names: metric names, keys of :data:`METRICS` (duplicates are dropped).
      zico_splits: parts of the batch zico compares (at least 2).

    Returns:
      ``fn(params, batch, key=None) -> {name: float}`` in the order of ``names``; ``batch`` a
      :class:`jhnas.data.Batch` (x NHWC float32 (N, H, W, C), y int labels (N,)); ``key`` is
      unused by the built-in metrics. A non-finite NTK Gram gives NaN with a ``RuntimeWarning``.

    Raises:
      ValueError: an unknown metric name, a metric that needs taps on a net without them,
        ``zico_splits < 2``; from ``fn``: labels out of ``0..K-1``, or a batch smaller than
        ``zico_splits`` for zico.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from jhnas.data import Batch
      >>> from jhnas.net import from_flax
      >>> net = from_flax(nn.Sequential([nn.Conv(4, (3, 3)), nn.relu,
      ...                                lambda h: h.mean((1, 2)), nn.Dense(3)]))
      >>> batch = Batch(jax.random.normal(jax.random.key(0), (6, 4, 4, 3)),
      ...               jnp.array([0, 1, 2, 0, 1, 2]))
      >>> params = net.init(jax.random.key(1), batch.x[:1])
      >>> scores = metrics_fn(net, ["ntk_trace", "ntk_cond", "snip"])(params, batch)
      >>> list(scores), all(v > 0 for v in scores.values())
      (['ntk_trace', 'ntk_cond', 'snip'], True)
      >>> metrics_fn(net, ["flops"])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: unknown metric(s) flops; known: grad_norm, snip, grasp, ...
    """
    net = f if isinstance(f, Net) else from_apply(f)
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if net.tapped is None:
        bad = [n for n in names if METRICS[n].needs_taps]
        if bad:
            raise ValueError(f"{', '.join(bad)} need(s) a tappable net: build it with "
                             "jhnas.net.from_flax(module)")
    if zico_splits < 2:
        raise ValueError("zico needs at least 2 splits of the batch")
    passes = frozenset().union(*(METRICS[n].passes for n in names))
    # A net of compiled blocks runs the glue eagerly: an outer jit would compile it whole again.
    jit = (lambda f: f) if net.compiled else jax.jit
    device = jit(_device_passes(net, passes - {"synflow"}, zico_splits))
    synflow = jit(_synflow_fn(net)) if "synflow" in passes else None

    def fn(params: Params, batch: BatchLike, key: jax.Array | None = None) -> dict[str, float]:
        del key  # the built-in metrics are deterministic
        x = jnp.asarray(batch.x)
        if "zico" in passes and x.shape[0] < zico_splits:
            raise ValueError(f"zico needs a batch of at least {zico_splits} samples")
        if passes - {"synflow"}:  # all but synflow use the labels
            check_labels(batch.y, jax.eval_shape(net.apply, params, x[:1]).shape[-1], "batch.y")
        y = jnp.asarray(batch.y, jnp.int32)
        res = jax.device_get(device(params, x, y)) if passes - {"synflow"} else {}
        if synflow is not None:
            with jax.enable_x64(True):
                ones = jnp.ones((1,) + x.shape[1:], jnp.float64)
                res["synflow"] = float(synflow(params, ones))
        return {n: _finish(n, res) for n in names}

    return fn


def _finish(name: str, res: Mapping[str, Any]) -> float:
    """Host-side finish; a non-finite NTK Gram (overflowing network) gives NaN and a warning, so
    one bad architecture does not stop a long scoring job."""
    try:
        return METRICS[name].finish(res)
    except FloatingPointError as e:
        warnings.warn(f"{name}: {e}; recorded as NaN", RuntimeWarning, stacklevel=3)
        return float("nan")


def _single(name: str):
    def metric(net: Net | Apply, params: Params,
               batch: BatchLike, key: jax.Array | None = None) -> float:
        return metrics_fn(net, [name])(params, batch, key)[name]

    metric.__name__ = name
    metric.__doc__ = f"The ``{name}`` metric (see the module docstring for its definition)."
    return metric


grad_norm = _single("grad_norm")
snip = _single("snip")
grasp = _single("grasp")
fisher = _single("fisher")
synflow = _single("synflow")
jacob_cov = _single("jacob_cov")
naswot = _single("naswot")
zico = _single("zico")
ntk_trace = _single("ntk_trace")
ntk_cond = _single("ntk_cond")
