"""The DARTS cell search space (Liu et al. 2019) as Flax modules.

A :class:`Genotype` lists, for the normal and the reduction cell, two ``(op, input)`` pairs per
intermediate node (4 nodes): node ``i`` (numbered 2..5; 0 and 1 are the outputs of the two
previous cells) sums ``op(state[input])`` over its two pairs, ``input < i``. The cell outputs the
concatenation of nodes 2..5 (4 C channels). :class:`NetworkCIFAR` is the evaluation network: a
3 x 3 stem to 3 C channels, ``layers`` cells with reduction cells (stride 2, C doubled) at
``layers // 3`` and ``2 * layers // 3``, global average pooling and a linear classifier. Convs and
the classifier are ``jhnas.nn`` layers (PyTorch's default initialisation), so the NTK engine and
the metrics (:func:`jhnas.net.from_flax`) work on it unchanged.

Primitives (:data:`PRIMITIVES`, all eight of DARTS): ``none`` (zero), ``max_pool_3x3``,
``avg_pool_3x3``, ``skip_connect`` (identity; factorised 1x1 reduction at stride 2),
``sep_conv_{3x3,5x5}`` (twice ReLU - depthwise - pointwise - BN), ``dil_conv_{3x3,5x5}`` (ReLU -
depthwise with dilation 2 - pointwise - BN).

:func:`sample` draws every op uniformly from ``ops`` (default: the seven primitives other than
``none``, which never appears in a derived DARTS genotype; pass ``ops=PRIMITIVES`` to draw it too)
and the two inputs of node ``i`` as two distinct states among ``0..i-1``. Unlike the official
random sampler it can draw ``dil_conv_5x5``.
"""
from __future__ import annotations

import ast
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import nn as jnn

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NODES = 4


class GenotypeError(ValueError):
    """An invalid DARTS genotype."""


class Genotype(NamedTuple):
    """A DARTS genotype: per cell type, two ``(op, input)`` pairs per intermediate node (8 pairs,
    nodes 2..5 in order) and the nodes whose outputs are concatenated (module docstring)."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...] = (2, 3, 4, 5)
    reduce: tuple[tuple[str, int], ...] = ()
    reduce_concat: tuple[int, ...] = (2, 3, 4, 5)


def validate(g: Genotype) -> Genotype:
    """``g`` with tuples throughout; raises :class:`GenotypeError` naming the problem (a cell
    without 8 pairs, an unknown op, an input that is not an earlier node, a bad concat list).

    Examples:
      >>> pairs = [("sep_conv_3x3", 0), ("skip_connect", 1)] * 4
      >>> validate(Genotype(pairs, [2, 3, 4, 5], pairs, [2, 3, 4, 5])).normal_concat
      (2, 3, 4, 5)
      >>> validate(Genotype(pairs[:2], reduce=pairs))
      Traceback (most recent call last):
      ...
      jhnas.spaces.darts.GenotypeError: normal cell needs 8 (op, input) pairs (2 per node), got 2
    """
    out = {}
    for cell in ("normal", "reduce"):
        pairs = tuple((str(op), int(j)) for op, j in getattr(g, cell))
        if len(pairs) != 2 * NODES:
            raise GenotypeError(f"{cell} cell needs {2 * NODES} (op, input) pairs (2 per node), "
                                f"got {len(pairs)}")
        for k, (op, j) in enumerate(pairs):
            node = 2 + k // 2
            if op not in PRIMITIVES:
                raise GenotypeError(f"{cell} cell: unknown op {op!r}; ops are "
                                    f"{', '.join(PRIMITIVES)}")
            if not 0 <= j < node:
                raise GenotypeError(f"{cell} cell: node {node} takes input {j}, which must be in "
                                    f"0..{node - 1}")
        concat = tuple(int(c) for c in getattr(g, f"{cell}_concat"))
        if not concat or any(not 2 <= c < 2 + NODES for c in concat):
            raise GenotypeError(f"{cell}_concat must list nodes in 2..{NODES + 1}, got {concat}")
        out[cell], out[f"{cell}_concat"] = pairs, concat
    return Genotype(**out)


def parse(text: str) -> Genotype:
    """A genotype from its repr, e.g. ``"Genotype(normal=[('sep_conv_3x3', 0), ...], ...)"``;
    validated (:func:`validate`). Raises :class:`GenotypeError` for text that is not a
    ``Genotype(...)`` call of literals, or an invalid genotype.

    Examples:
      >>> import jax
      >>> g = sample(jax.random.key(0))
      >>> parse(repr(g)) == g
      True
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", "") == "Genotype"):
            raise ValueError
        # a None key (``**d`` in the text) makes Genotype(**...) raise TypeError, caught below
        kw: dict[Any, Any] = {k.arg: ast.literal_eval(k.value) for k in tree.keywords}
        g = Genotype(**{k: tuple(v) for k, v in kw.items()})
    except (SyntaxError, ValueError, TypeError) as e:
        raise GenotypeError(f"not a DARTS genotype: {text[:80]!r} ({e or 'expected Genotype(...)'})"
                            ) from None
    return validate(g)


def sample(key: jax.Array, ops: Sequence[str] = PRIMITIVES[1:]) -> Genotype:
    """A random genotype (see the module docstring); ``ops`` the primitives to draw from.
    Raises :class:`GenotypeError` for an unknown or empty ``ops``.

    Examples:
      >>> import jax
      >>> g = sample(jax.random.key(0))
      >>> len(g.normal), len(g.reduce), all(j < 2 + k // 2 for k, (_, j) in enumerate(g.normal))
      (8, 8, True)
    """
    bad = [o for o in ops if o not in PRIMITIVES]
    if bad or not ops:
        raise GenotypeError(f"unknown op(s) {bad} (ops are {', '.join(PRIMITIVES)})")
    cells = []
    for cell_key in jax.random.split(key, 2):
        k_ops, k_in = jax.random.split(cell_key)
        op_idx = np.asarray(jax.random.randint(k_ops, (2 * NODES,), 0, len(ops)))
        pairs = []
        for n in range(NODES):
            node = 2 + n
            inputs = np.asarray(jax.random.choice(jax.random.fold_in(k_in, n), node, (2,),
                                                  replace=False))
            pairs += [(ops[int(op_idx[2 * n + s])], int(inputs[s])) for s in range(2)]
        cells.append(tuple(pairs))
    return Genotype(cells[0], (2, 3, 4, 5), cells[1], (2, 3, 4, 5))


# ----------------------------------------------------------------------------- operations

def _bn(name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, name=name)


class ReLUConvBN(nn.Module):
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnn.Conv(self.c_in, self.c_out, self.kernel, strides=self.stride,
                     padding=(self.kernel - 1) // 2, name="conv")(jnn.relu(self, x))
        return _bn("bn")(x)


class FactorizedReduce(nn.Module):
    """Halves the resolution: two 1x1 stride-2 convs on x and x shifted by one pixel, concat."""
    c_in: int
    c_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnn.relu(self, x)
        a = jnn.Conv(self.c_in, self.c_out // 2, 1, strides=2, name="conv_1")(x)
        b = jnn.Conv(self.c_in, self.c_out - self.c_out // 2, 1, strides=2,
                     name="conv_2")(jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0))))
        return _bn("bn")(jnp.concatenate([a, b], -1))


class DilConv(nn.Module):
    """ReLU - depthwise k x k (dilation d) - pointwise - BN."""
    c_in: int
    c_out: int
    kernel: int
    stride: int
    dilation: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.dilation * (self.kernel - 1) // 2
        x = jnn.Conv(self.c_in, self.c_in, self.kernel, strides=self.stride, padding=pad,
                     groups=self.c_in, dilation=self.dilation, name="depthwise")(jnn.relu(self, x))
        return _bn("bn")(jnn.Conv(self.c_in, self.c_out, 1, name="pointwise")(x))


class SepConv(nn.Module):
    """Two :class:`DilConv` with dilation 1, the first with the stride."""
    c_in: int
    c_out: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = DilConv(self.c_in, self.c_in, self.kernel, self.stride, 1, name="op1")(x)
        return DilConv(self.c_in, self.c_out, self.kernel, 1, 1, name="op2")(x)


def _pool(x: jax.Array, kind: str, stride: int) -> jax.Array:
    if kind == "max":
        # flax leaves max_pool's padding unannotated (typed str from its default); it takes pairs
        return nn.max_pool(x, (3, 3), (stride, stride),
                           ((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
    return jnn.avg_pool_3x3(x, stride)


def apply_op(module: nn.Module, op: str, x: jax.Array, c: int, stride: int, name: str
             ) -> jax.Array:
    """``op`` on ``x`` (c channels in and out), created as a submodule ``name`` of ``module``."""
    if op == "none":
        return x[:, ::stride, ::stride] * 0.0
    if op in ("max_pool_3x3", "avg_pool_3x3"):
        return _pool(x, op[:3], stride)
    if op == "skip_connect":
        return x if stride == 1 else FactorizedReduce(c, c, name=name)(x)
    k = int(op[-1])
    if op.startswith("sep_conv"):
        return SepConv(c, c, k, stride, name=name)(x)
    return DilConv(c, c, k, stride, 2, name=name)(x)


class Cell(nn.Module):
    genotype: Genotype
    c_prev_prev: int
    c_prev: int
    c: int
    reduction: bool
    reduction_prev: bool
    drop_path_prob: float = 0.0

    @nn.compact
    def __call__(self, s0: jax.Array, s1: jax.Array) -> jax.Array:
        pairs = self.genotype.reduce if self.reduction else self.genotype.normal
        concat = self.genotype.reduce_concat if self.reduction else self.genotype.normal_concat
        s0 = (FactorizedReduce(self.c_prev_prev, self.c, name="pre0")(s0) if self.reduction_prev
              else ReLUConvBN(self.c_prev_prev, self.c, name="pre0")(s0))
        s1 = ReLUConvBN(self.c_prev, self.c, name="pre1")(s1)
        states = [s0, s1]
        for n in range(NODES):
            total: Any = 0.0  # an array from the first op on
            for s in range(2):
                op, j = pairs[2 * n + s]
                stride = 2 if self.reduction and j < 2 else 1
                h = apply_op(self, op, states[j], self.c, stride, f"node{n + 2}_{s}")
                if self.drop_path_prob > 0 and op != "skip_connect" and self.has_rng("drop_path"):
                    keep = 1.0 - self.drop_path_prob
                    mask = jax.random.bernoulli(self.make_rng("drop_path"), keep,
                                                (h.shape[0], 1, 1, 1))
                    h = h * mask / keep
                total = total + h
            states.append(total)
        return jnp.concatenate([states[i] for i in concat], -1)


class NetworkCIFAR(nn.Module):
    """The DARTS evaluation network for 32 x 32 images: (B, 32, 32, 3) -> (B, num_classes).

    ``drop_path_prob`` > 0 drops each non-identity op's output per sample while training, when
    ``apply`` is given a ``"drop_path"`` rng (``jhnas.train`` does); without one it is off.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = NetworkCIFAR(sample(jax.random.key(0)), C=2, layers=1)   # one reduction cell
      >>> shapes = jax.eval_shape(net.init, jax.random.key(1), jnp.ones((1, 32, 32, 3)))
      >>> shapes["params"]["classifier"]["kernel"].shape   # 4 nodes x 2 C x 2 channels
      (16, 10)
    """
    genotype: Genotype
    C: int = 16
    layers: int = 8
    num_classes: int = 10
    drop_path_prob: float = 0.0
    stem_multiplier: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = validate(self.genotype)
        c_curr = self.stem_multiplier * self.C
        s = _bn("stem_bn")(jnn.Conv(x.shape[-1], c_curr, 3, padding=1, name="stem_conv")(x))
        s0 = s1 = s
        c_pp, c_p, c = c_curr, c_curr, self.C
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                c *= 2
            cell = Cell(g, c_pp, c_p, c, reduction, reduction_prev, self.drop_path_prob,
                        name=f"cell{i}")
            s0, s1 = s1, cell(s0, s1)
            reduction_prev = reduction
            c_pp, c_p = c_p, len(g.normal_concat if not reduction else g.reduce_concat) * c
        return jnn.Dense(c_p, self.num_classes, name="classifier")(s1.mean(axis=(1, 2)))
