"""NAS-Bench-201: architecture strings, the benchmark's index, isomorphism classes, the network.

A cell has 4 nodes: node 0 is the cell's input, node ``i`` is :math:`\\sum_{j<i} o_{j\\to i}(x_j)`
and node 3 is its output. Each of the 6 edges carries one of :data:`OPS`, so the space has
:math:`5^6 = 15625` cells. The string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` lists in block ``i``
the edges into node ``i+1``, ``op~j`` coming from node ``j``; :func:`parse` returns the six ops in
:data:`EDGES` order and :func:`format_arch` inverts it.

The index (:func:`all_archs`, :func:`index_of`, :func:`arch_at`) is the benchmark's order, shipped
in ``jhnas/_data/nb201_archs.txt.gz`` (provenance in ``jhnas/_data/PROVENANCE.md``).

The network (:class:`NB201Net`) is the official PyTorch one: stem conv 3x3 + BN, three stages of
``N`` cells at ``C``, ``2C``, ``4C`` channels with residual reduction blocks between them, then
BN + ReLU + global average pool + linear head. Ops are ReLU-Conv-BN (1x1, 3x3), 3x3 average
pooling (padding excluded from the average), identity and ``none`` (multiplication by 0). Two
presets set the cells' ReLU-Conv-BN:

* ``"hnas"``: the HNAS / zero-cost-proxy code's network (the metric parity target): cell convs
  carry a bias, cell BatchNorms have no affine scale/bias;
* ``"nb201"``: the benchmark's own network: no conv bias, affine BatchNorm. Its parameter count
  is the benchmark's (every edge counts, dead ones included).

Initialisation is PyTorch's default (:mod:`jhnas.nn`).
"""
from __future__ import annotations

import functools
import gzip
import math
import operator
from importlib import resources
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import nn as jnn
from jhnas.net import Block, Net, from_blocks, from_flax

#: The five candidate operations; a digit in the shipped table is an index into this tuple.
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (target node, source node) of the six edges, in the order of the string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
#: Number of cells in the space, ``len(OPS) ** len(EDGES)``.
NUM_ARCHS = 15625
#: Names accepted by :attr:`NB201Net.preset`.
PRESETS = ("hnas", "nb201")

_TABLE = "_data/nb201_archs.txt.gz"


class ArchError(ValueError):
    """A malformed NB201 architecture string (or op list)."""


# ----------------------------------------------------------------------------- strings

def parse(arch: str) -> tuple[str, ...]:
    """The six op names of ``arch``, in :data:`EDGES` order.

    Surrounding whitespace is ignored. Raises :class:`ArchError` naming the problem and quoting
    the string: wrong number of ``+`` blocks, missing ``|`` delimiters, an edge that is not
    ``op~j``, a source node that is not an integer, out of range, duplicated, missing or out of
    order, or an unknown op (the message lists the valid ones).

    Examples:
      >>> parse("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|")
      ('nor_conv_3x3', 'skip_connect', 'none', 'avg_pool_3x3', 'nor_conv_1x1', 'none')
      >>> parse("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jhnas.spaces.nb201.ArchError: ...: unknown op 'conv' in edge 'conv~0'; valid ops: ...
    """
    if not isinstance(arch, str):
        raise ArchError(f"an NB201 architecture must be a str, got {type(arch).__name__}: "
                        f"{arch!r}")
    s = arch.strip()
    blocks = s.split("+")
    if len(blocks) != 3:
        raise ArchError(f"{s!r}: expected 3 blocks separated by '+' (the edges into nodes 1, 2, "
                        f"3), found {len(blocks)}")
    ops: list[str] = []
    for node, block in enumerate(blocks, start=1):
        if len(block) < 2 or block[0] != "|" or block[-1] != "|":
            raise ArchError(f"{s!r}: block {node} {block!r} must start and end with '|'")
        edges: dict[int, str] = {}  # source node -> op, in the order written
        for token in block[1:-1].split("|"):
            op, sep, src = token.partition("~")
            if not sep:
                raise ArchError(f"{s!r}: edge {token!r} in block {node} must look like 'op~j' "
                                f"(op applied to node j)")
            if not (src.isascii() and src.isdecimal() and src == str(int(src))):
                raise ArchError(f"{s!r}: edge {token!r}: source node {src!r} is not an integer")
            j = int(src)
            if j >= node:
                raise ArchError(f"{s!r}: edge {token!r} into node {node} must come from a node "
                                f"in 0..{node - 1}, got {j}")
            if j in edges:
                raise ArchError(f"{s!r}: duplicated edge {j}->{node} in block {node}")
            if op not in OPS:
                raise ArchError(f"{s!r}: unknown op {op!r} in edge {token!r}; valid ops: "
                                f"{', '.join(OPS)}")
            edges[j] = op
        missing = [j for j in range(node) if j not in edges]
        if missing:
            raise ArchError(f"{s!r}: block {node} must list {node} edge(s) into node {node}, "
                            f"missing the edge(s) from node(s) {', '.join(map(str, missing))}")
        if list(edges) != list(range(node)):
            raise ArchError(f"{s!r}: block {node} must list its edges by source node "
                            f"0..{node - 1}, got the order {', '.join(map(str, edges))}")
        ops.extend(edges.values())
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The string of six ops given in :data:`EDGES` order; ``parse(format_arch(ops)) == ops``.
    Raises :class:`ArchError` for a str, a sequence of another length or an unknown op.

    Examples:
      >>> format_arch(["nor_conv_3x3"] * 3 + ["none"] * 3)
      '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|'
    """
    if isinstance(ops, str):
        raise ArchError(f"format_arch takes a sequence of {len(EDGES)} op names, got the str "
                        f"{ops!r} (use parse() to read a string)")
    ops = tuple(ops)
    if len(ops) != len(EDGES):
        raise ArchError(f"expected {len(EDGES)} ops (one per edge of {EDGES}), got {len(ops)}: "
                        f"{ops!r}")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ArchError(f"unknown op(s) {', '.join(map(repr, unknown))} in {ops!r}; valid ops: "
                        f"{', '.join(OPS)}")
    blocks = (("|" + "|".join(f"{op}~{j}" for (i, j), op in zip(EDGES, ops) if i == node) + "|")
              for node in (1, 2, 3))
    return "+".join(blocks)


# ----------------------------------------------------------------------------- the index

@functools.lru_cache(maxsize=1)
def all_archs() -> tuple[str, ...]:
    """All 15,625 strings, entry ``i`` being NB201 index ``i`` (the shipped table)."""
    raw = gzip.decompress(resources.files("jhnas").joinpath(_TABLE).read_bytes())
    archs = tuple(format_arch([OPS[int(d)] for d in line]) for line in raw.decode().split())
    if len(archs) != NUM_ARCHS or len(set(archs)) != NUM_ARCHS:
        raise RuntimeError(f"jhnas/{_TABLE} is corrupt: {len(archs)} lines, "
                           f"{len(set(archs))} distinct, expected {NUM_ARCHS}")
    return archs


@functools.lru_cache(maxsize=1)
def _positions() -> dict[str, int]:
    return {a: i for i, a in enumerate(all_archs())}


def index_of(arch: str) -> int:
    """The NB201 index of ``arch`` (any valid spelling); :class:`ArchError` if invalid.

    Examples:
      >>> arch = "|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"
      >>> i = index_of("  " + arch)   # surrounding whitespace is ignored
      >>> arch_at(i) == arch, all_archs()[i] == arch
      (True, True)
    """
    key = format_arch(parse(arch))
    try:
        return _positions()[key]
    except KeyError:  # unreachable with the complete table, kept for a clear message
        raise ArchError(f"{arch!r} is not in the NB201 table") from None


def arch_at(index: int) -> str:
    """The string of NB201 index ``index`` in ``0..15624`` (no negative indexing); ``TypeError``
    for a non-integer, ``IndexError`` out of range.

    Examples:
      >>> parse(arch_at(0))[:3]
      ('avg_pool_3x3', 'nor_conv_1x1', 'skip_connect')
    """
    if isinstance(index, bool):
        raise TypeError(f"an NB201 index must be an integer, got {index!r}")
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"an NB201 index must be an integer, got {type(index).__name__} "
                        f"{index!r}") from None
    if not 0 <= i < NUM_ARCHS:
        raise IndexError(f"NB201 index must be in 0..{NUM_ARCHS - 1}, got {i}")
    return all_archs()[i]


@functools.lru_cache(maxsize=1)
def _codes() -> tuple[np.ndarray, np.ndarray]:
    """(15625, 6) op ids (into :data:`OPS`) of each index, and the index of each base-5 code
    ``sum_e op_e 5^e``."""
    ops = np.array([[OPS.index(o) for o in parse(a)] for a in all_archs()], np.int64)
    where = np.empty(NUM_ARCHS, np.int64)
    where[ops @ 5 ** np.arange(len(EDGES))] = np.arange(NUM_ARCHS)
    return ops, where


def neighbours(index: int) -> np.ndarray:
    """The 24 indices one edit away from ``index`` (one edge set to one of the 4 other ops),
    sorted, int64 (24,).

    Examples:
      >>> near = neighbours(0)
      >>> near.shape, sum(a != b for a, b in zip(parse(arch_at(0)), parse(arch_at(near[0]))))
      ((24,), 1)
    """
    arch_at(index)  # validates the index
    ops, where = _codes()
    own = ops[index]
    code = own @ 5 ** np.arange(len(EDGES))
    out = [code + (o - own[e]) * 5 ** e
           for e in range(len(EDGES)) for o in range(len(OPS)) if o != own[e]]
    return np.sort(where[np.array(out)])


def mutate(key: jax.Array, index: int) -> int:
    """A random neighbour of ``index`` (REA's mutation, :func:`jhnas.baselines.regularized_evolution`):
    one of the 6 edges, drawn with ``key``, set to one of the 4 other ops."""
    ops = list(parse(arch_at(index)))
    k_edge, k_op = jax.random.split(key)
    e = int(jax.random.randint(k_edge, (), 0, len(ops)))
    others = [o for o in OPS if o != ops[e]]
    ops[e] = others[int(jax.random.randint(k_op, (), 0, len(others)))]
    return index_of(format_arch(ops))


# ----------------------------------------------------------------------------- sampling

def sample_indices(key: jax.Array, n: int, replace: bool = False) -> np.ndarray:
    """``n`` NB201 indices, int64 ``(n,)``, drawn uniformly with the PRNG key ``key``."""
    n = operator.index(n)
    if n < 0 or (not replace and n > NUM_ARCHS):
        raise ValueError(f"cannot draw {n} of the {NUM_ARCHS} architectures "
                         f"{'with' if replace else 'without'} replacement")
    return np.asarray(jax.random.choice(key, NUM_ARCHS, (n,), replace=replace), np.int64)


def sample(key: jax.Array, n: int, *, replace: bool = False) -> list[str]:
    """``n`` architecture strings drawn uniformly (``jax.random.key(seed)`` for ``key``), without
    replacement unless ``replace``; ``ValueError`` if that is impossible.

    Examples:
      >>> import jax
      >>> archs = sample(jax.random.key(0), 3)
      >>> len(archs), archs == sample(jax.random.key(0), 3)   # same key, same draw
      (3, True)
    """
    return [arch_at(i) for i in sample_indices(key, n, replace=replace)]


# ----------------------------------------------------------------------------- isomorphism

_ZERO = "#"


def canonical(arch: str) -> str:
    """The form of ``arch`` up to isomorphism: NATS-Bench's ``UniqueString`` (6,466 classes).

    Build each node's expression from node 0 = ``0``: an edge into node ``i`` gives one term,
    ``#`` (zero) if its op is ``none`` or its source's expression is exactly ``#``; the source's
    expression itself for ``skip_connect`` (an identity); ``(source)@op`` otherwise. A node is
    its terms sorted as strings and joined by ``+``; the cell is node 3. Sorting makes the form
    invariant under reordering summands, so cells that differ only in which of two equal nodes
    (e.g. node 0 and its skip copy node 1) an edge reads from share it.

    This is a syntactic form, and each quirk matters for the benchmark's partition: zero terms
    are kept and counted, and a skip inserts its source's whole sum as *one* term, sorted by its
    string. Dropping zero terms and flattening skipped sums gives 4,930 coarser classes; keeping
    skipped sums as nested multisets gives 6,900 finer ones.

    Examples:
      Two spellings of one cell (node 1 is a copy of node 0, so reading either is the same):

      >>> a = "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_1x1~2|"
      >>> b = "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_1x1~2|"
      >>> canonical(a) == canonical(b), index_of(a) == index_of(b)
      (True, False)
    """
    ops = parse(arch)
    expr = ["0"]
    for node in (1, 2, 3):
        terms = []
        for (i, j), op in zip(EDGES, ops):
            if i != node:
                continue
            if op == "none" or expr[j] == _ZERO:
                terms.append(_ZERO)
            elif op == "skip_connect":
                terms.append(expr[j])
            else:
                terms.append(f"({expr[j]})@{op}")
        expr.append("+".join(sorted(terms)))
    return expr[3]


def dead_edges(arch: str) -> tuple[tuple[int, int], ...]:
    """The (target, source) edges of ``arch`` that are not ``none`` but whose op sees only
    zeros or feeds nothing: their source node is zero (every edge into it is ``none`` or dead),
    or their target node reaches node 3 only through ``none`` edges. A dead ReLU-Conv-BN's kernel
    cannot change the output; its conv bias and BatchNorm shift only add a constant (nothing at
    initialisation with train-mode BatchNorm). The architecture's network still has the dead
    edges' parameters, and its isomorphism class (:func:`canonical`) may be represented by a
    network without them: a convolution of a zero node, with the ``"hnas"`` preset's conv bias
    and train-mode BatchNorm, changes the official per-sample NTK decomposition by orders of
    magnitude (:class:`MetricTable`).

    >>> dead_edges("|none~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|")
    ((2, 0), (2, 1))
    """
    ops = parse(arch)
    live = [True, False, False, False]
    for (i, j), op in zip(EDGES, ops):  # edges come sorted by target node
        live[i] = live[i] or (op != "none" and live[j])
    reach = [False, False, False, True]
    for (i, j), op in reversed(list(zip(EDGES, ops))):  # sorted by source node, descending
        reach[j] = reach[j] or (op != "none" and reach[i])
    return tuple((i, j) for (i, j), op in zip(EDGES, ops)
                 if op != "none" and not (live[j] and reach[i]))


# ----------------------------------------------------------------------------- the network

def _bn(affine: bool = True, name: str | None = None) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d: momentum 0.1 (flax: 0.9), eps 1e-5. jhnas.net.from_flax sets the mode.
    return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                        use_bias=affine, use_scale=affine, name=name)


class ReLUConvBN(nn.Module):
    """``BN(conv_k(relu(x)))``, padding (k-1)//2: (B, H, W, c_in) -> (B, H/s, W/s, c_out)."""
    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    conv_bias: bool = False
    affine: bool = True
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnn.relu(self, x)
        x = jnn.Conv(self.c_in, self.c_out, self.kernel, strides=self.stride,
                     padding=(self.kernel - 1) // 2, use_bias=self.conv_bias, name="conv")(x)
        return _bn(self.affine, name="bn")(x) if self.use_bn else x


class Cell(nn.Module):
    """One cell: ``x_i = sum_{j<i} op_{j->i}(x_j)``, returns ``x_3``; shape-preserving.

    Submodules are named ``edge_{i}_{j}``. Dead edges are kept (the ``none`` op multiplies by 0).
    """
    ops: tuple[str, ...]
    channels: int
    preset: str = "hnas"
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hnas = self.preset == "hnas"
        nodes = [x]
        for node in (1, 2, 3):
            terms = []
            for (i, j), op in zip(EDGES, self.ops):
                if i != node:
                    continue
                h = nodes[j]
                if op == "none":
                    h = h * 0.0  # not zeros_like: XLA constant-folds the dead branch, slowly
                elif op == "avg_pool_3x3":
                    h = jnn.avg_pool_3x3(h)
                elif op in ("nor_conv_1x1", "nor_conv_3x3"):
                    h = ReLUConvBN(self.channels, self.channels, 1 if op == "nor_conv_1x1" else 3,
                                   conv_bias=hnas, affine=not hnas, use_bn=self.use_bn,
                                   name=f"edge_{i}_{j}")(h)
                terms.append(h)
            nodes.append(functools.reduce(operator.add, terms))
        return nodes[3]


class ResidualReduction(nn.Module):
    """ResNet basic block between stages: (B, H, W, c_in) -> (B, H/2, W/2, c_out).

    ``conv_b(conv_a(x)) + shortcut(avg_pool_2x2(x))``; ``conv_a`` has stride 2, ``shortcut`` is a
    bias-free 1x1 conv.
    """
    c_in: int
    c_out: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = ReLUConvBN(self.c_in, self.c_out, 3, 2, use_bn=self.use_bn, name="conv_a")(x)
        b = ReLUConvBN(self.c_out, self.c_out, 3, 1, use_bn=self.use_bn, name="conv_b")(b)
        r = jnn.avg_pool_2x2(x)
        r = jnn.Conv(self.c_in, self.c_out, 1, name="shortcut")(r)
        return r + b


class NB201Net(nn.Module):
    """The NB201 network of ``arch``: NHWC ``x`` (B, H, W, 3) -> logits (B, num_classes).

    Submodules: ``stem_conv``, ``stem_bn``, ``cell{s}_{k}`` (stage s = 1..3, k < N), ``reduce1``,
    ``reduce2``, ``head_bn``, ``classifier``. Raises :class:`ArchError` for a bad ``arch`` and
    ``ValueError`` for an unknown ``preset``.

    Examples:
      >>> net = NB201Net(arch_at(0), preset="nb201")
      >>> count_params(param_shapes(net))   # every edge's parameters count, as in the benchmark
      129306
    """
    arch: str
    num_classes: int = 10
    C: int = 16
    N: int = 5
    preset: str = "hnas"
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        ops = parse(self.arch)
        if x.ndim != 4:
            raise ValueError(f"NB201Net takes NHWC images (B, H, W, C), got shape {x.shape}")
        c = self.C
        x = _stem(x, c, self.use_bn)
        for stage in (1, 2, 3):
            if stage > 1:
                x = ResidualReduction(c, 2 * c, self.use_bn, name=f"reduce{stage - 1}")(x)
                c *= 2
            for k in range(self.N):
                x = Cell(ops, c, self.preset, self.use_bn, name=f"cell{stage}_{k}")(x)
        return _head(self, x, c, self.num_classes, self.use_bn)


def _stem(x: jax.Array, c: int, use_bn: bool) -> jax.Array:
    """``stem_bn(stem_conv(x))``, inside the calling module's scope (shared by the two forms)."""
    x = jnn.Conv(x.shape[-1], c, 3, padding=1, name="stem_conv")(x)
    return _bn(name="stem_bn")(x) if use_bn else x


def _head(module: nn.Module, x: jax.Array, c: int, num_classes: int, use_bn: bool) -> jax.Array:
    """``classifier(mean(relu(head_bn(x))))``, inside ``module``'s scope."""
    x = _bn(name="head_bn")(x) if use_bn else x
    x = jnn.relu(module, x).mean(axis=(1, 2))
    return jnn.Dense(c, num_classes, name="classifier")(x)


class _Stem(nn.Module):
    """``stem_bn(stem_conv(x))`` of :class:`NB201Net`, as one block (same parameter names)."""
    C: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _stem(x, self.C, self.use_bn)


class _Head(nn.Module):
    """``classifier(mean(relu(head_bn(x))))`` of :class:`NB201Net`, as one block."""
    C: int
    num_classes: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _head(self, x, self.C, self.num_classes, self.use_bn)


class _FreeOp(nn.Module):
    """A parameter-free edge op (``none`` or ``avg_pool_3x3``) as one block."""
    op: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * 0.0 if self.op == "none" else jnn.avg_pool_3x3(x)


def blocks(arch: str, *, num_classes: int = 10, C: int = 16, N: int = 5, preset: str = "hnas",
           use_bn: bool = True) -> list[Block]:
    """:class:`NB201Net` as :class:`jhnas.net.Block` s: stem, one block per cell edge, the two
    reductions, head. Node 0 is the image; cell nodes are numbered consecutively.

    ``skip_connect`` is an identity block (no program). A ``none`` edge adds zero, so it is left
    out unless every edge into its node is ``none`` (then one ``none`` block makes the node);
    the values are the network's, except that ``x * 0`` of an infinite or NaN ``x`` is not
    propagated."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    ops, hnas = parse(arch), preset == "hnas"
    out = [Block(_Stem(C, use_bn), (), 0, 1, ("stem_conv", "stem_bn"))]
    node, c = 1, C
    for stage in (1, 2, 3):
        if stage > 1:
            out.append(Block(ResidualReduction(c, 2 * c, use_bn), (f"reduce{stage - 1}",),
                             node, node + 1))
            node, c = node + 1, 2 * c
        for k in range(N):
            for (i, j), op in zip(EDGES, ops):
                if op in ("nor_conv_1x1", "nor_conv_3x3"):
                    mod = ReLUConvBN(c, c, 1 if op == "nor_conv_1x1" else 3, conv_bias=hnas,
                                     affine=not hnas, use_bn=use_bn)
                    out.append(Block(mod, (f"cell{stage}_{k}", f"edge_{i}_{j}"), node + j, node + i))
                elif op == "skip_connect":
                    out.append(Block(None, (), node + j, node + i))
                elif op == "avg_pool_3x3" or j == 0 and all(
                        o == "none" for (t, _), o in zip(EDGES, ops) if t == i):
                    out.append(Block(_FreeOp(op), (), node + j, node + i))
            node += 3
    out.append(Block(_Head(c, num_classes, use_bn), (), node, node + 1, ("head_bn", "classifier")))
    return out


def make_net(arch: str, *, bn: str = "train", compile: str = "blocks", num_classes: int = 10,
             C: int = 16, N: int = 5, preset: str = "hnas", use_bn: bool = True) -> Net:
    """The :class:`jhnas.net.Net` of an NB201 architecture.

    ``compile="blocks"`` (default) composes jit-compiled blocks (:func:`jhnas.net.from_blocks`):
    after the first few architectures nothing is compiled any more, so scoring thousands of
    architectures pays no compilation per architecture. ``compile="network"`` wraps the monolithic
    :class:`NB201Net` (one compilation per architecture, the fastest single evaluation). Both give
    the same parameters (``net.init``) and the same values up to float32 rounding.
    """
    if compile == "network":
        return from_flax(NB201Net(arch, num_classes=num_classes, C=C, N=N, preset=preset,
                                  use_bn=use_bn), bn=bn)
    if compile != "blocks":
        raise ValueError(f"compile must be 'blocks' or 'network', got {compile!r}")
    return from_blocks(blocks(arch, num_classes=num_classes, C=C, N=N, preset=preset,
                              use_bn=use_bn), bn=bn)


def init_params(model: nn.Module, key: jax.Array, x: jax.Array) -> Any:
    """``model.init(key, x)["params"]`` (BatchNorm running statistics are dropped)."""
    return model.init(key, x)["params"]


def param_shapes(model: nn.Module, image_size: int = 32) -> Any:
    """The parameter pytree of ``model`` as ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``:
    nothing is compiled or computed)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- shipped tables

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
_BENCH = "_data/nb201_bench.npz"
_METRICS = "_data/nb201_metrics.csv.gz"


class Benchmark(NamedTuple):
    """NAS-Bench-201 results, row ``i`` = NB201 index ``i``, columns :data:`DATASETS`.

    Attributes:
      val12: (15625, 3) validation accuracy % after 12 epochs (the HNAS search signal; CIFAR-10's
        is the ``cifar10-valid`` split).
      test12: (15625, 3) test accuracy % after 12 epochs.
      test200: (15625, 3) test accuracy % after 200 epochs, mean over seeds (what papers report).
      epoch_seconds: (15625,) seconds per training epoch on ``cifar10-valid``; 12x it is the cost
        HNAS charges for one evaluation.
    """

    val12: np.ndarray
    test12: np.ndarray
    test200: np.ndarray
    epoch_seconds: np.ndarray


@functools.lru_cache(maxsize=1)
def benchmark() -> Benchmark:
    """The shipped NB201 benchmark table (float32; provenance in ``jhnas/_data/PROVENANCE.md``)."""
    with resources.files("jhnas").joinpath(_BENCH).open("rb") as f:
        z = np.load(f)
        return Benchmark(**{k: z[k] for k in Benchmark._fields})


@functools.lru_cache(maxsize=1)
def class_index() -> np.ndarray:
    """(15625,) int: for each NB201 index, the index of its isomorphism class's representative
    (the lowest NB201 index with the same :func:`canonical` form)."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(canonical(a), i) for i, a in enumerate(all_archs())])


class MetricTable(NamedTuple):
    """Training-free metrics of every NB201 architecture, (15625,) float64 arrays in NB201 index
    order, NaN where not computed; ``protocol`` says how they were computed.

    ``values[name]``: per isomorphism class, the value of the class representative's network
    (its lowest index) for every member. ``own[name]``: the value of each architecture's own
    network, where the table has it: every representative, and the architectures with dead edges
    (:func:`dead_edges`) whose own value was scored. It is what ``jhnas score`` gives for that
    architecture; for a dead-edge architecture it can differ from the class value by orders of
    magnitude (the dead edges' parameters are in its network). :meth:`per_architecture` combines
    the two.
    """

    values: dict[str, np.ndarray]
    protocol: dict[str, str]
    own: dict[str, np.ndarray]

    def coverage(self, name: str) -> float:
        """Share of the 15,625 architectures with a value of ``name``."""
        return float(np.mean(np.isfinite(self.values[name])))

    def per_architecture(self, name: str) -> np.ndarray:
        """``own[name]`` where the table has it, else the class value ``values[name]``."""
        own = self.own[name]
        return np.where(np.isfinite(own), own, self.values[name])


@functools.lru_cache(maxsize=1)
def metric_table() -> MetricTable:
    """The shipped metric table (one computation per isomorphism class, copied to every member;
    own values of the dead-edge architectures, see :class:`MetricTable`).

    Made by ``bench/make_metric_table.py`` from ``jhnas score`` shards; the protocol (network,
    batch, init, BatchNorm mode, library versions) is in ``protocol``.
    """
    raw = gzip.decompress(resources.files("jhnas").joinpath(_METRICS).read_bytes()).decode()
    lines = raw.splitlines()
    protocol = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    rows = [line.split(",") for line in lines if line and not line.startswith("#")]
    header, rows = rows[0], rows[1:]
    classes = class_index()
    cols = {name: np.full(NUM_ARCHS, np.nan) for name in header[1:]}
    own = {name: np.full(NUM_ARCHS, np.nan) for name in header[1:]}
    for r in rows:
        i = int(r[0])
        for name, v in zip(header[1:], r[1:]):
            (cols if classes[i] == i else own)[name][i] = float(v) if v else np.nan
    for name in own:  # a representative's own value is its class value
        own[name][classes == np.arange(NUM_ARCHS)] = cols[name][classes == np.arange(NUM_ARCHS)]
    return MetricTable({k: v[classes] for k, v in cols.items()}, protocol, own)
