"""NAS-Bench-201: architecture strings, the benchmark's index, isomorphism classes, the network.

An architecture is a cell of 4 nodes; node ``i`` is the sum over ``j < i`` of ``op_{j->i}(node j)``
and node 3 is the cell's output. Its string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` lists in block
``i`` the edges into node ``i+1``, ``op~j`` coming from node ``j``; :func:`parse` returns the six
ops in :data:`EDGES` order.

The network (:class:`NB201Net`) is the official PyTorch one: stem conv 3x3 + BN, three stages of
``N`` cells at C, 2C, 4C with residual reduction blocks between them, BN + ReLU + global average
pool + linear head. Ops are ReLU-Conv-BN (1x1, 3x3), 3x3 average pooling (padding excluded from
the average), identity and ``none`` (multiplication by 0). Two presets set the cells' ReLU-Conv-BN:

* ``"hnas"``: the HNAS / zero-cost-proxy code's network (the metric parity target): cell convs
  carry a bias, cell BatchNorms have no affine scale/bias and no running statistics;
* ``"nb201"``: the benchmark's own network: no conv bias, affine BatchNorm. Its parameter count
  equals the benchmark's.

Initialisation is PyTorch's default (:mod:`jhnas.nn`).
"""
from __future__ import annotations

import functools
import gzip
from importlib import resources
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhnas import nn as jnn

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (target node, source node) of the six edges, in the order of the string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_ARCHS = len(OPS) ** len(EDGES)  # 15,625
PRESETS = ("hnas", "nb201")


class ArchError(ValueError):
    """A malformed NB201 architecture string."""


# ----------------------------------------------------------------------------- strings

def parse(arch: str) -> tuple[str, ...]:
    """The six op names of ``arch``, in :data:`EDGES` order; :class:`ArchError` names the problem."""
    if not isinstance(arch, str):
        raise ArchError(f"an NB201 architecture must be a string, got {type(arch).__name__}")
    s = arch.strip()
    blocks = s.split("+")
    if len(blocks) != 3:
        raise ArchError(f"{s!r}: expected 3 blocks separated by '+', found {len(blocks)}")
    ops = []
    for i, block in enumerate(blocks):
        if len(block) < 2 or block[0] != "|" or block[-1] != "|":
            raise ArchError(f"{s!r}: block {i + 1} {block!r} must start and end with '|'")
        tokens = block[1:-1].split("|")
        if len(tokens) != i + 1:
            raise ArchError(f"{s!r}: block {i + 1} must list {i + 1} edge(s) into node {i + 1}, "
                            f"found {len(tokens)}")
        for j, token in enumerate(tokens):
            op, sep, src = token.partition("~")
            if not sep:
                raise ArchError(f"{s!r}: edge {token!r} must look like 'op~{j}'")
            if src != str(j):
                raise ArchError(f"{s!r}: edge {token!r} in block {i + 1} must come from node {j}")
            if op not in OPS:
                raise ArchError(f"{s!r}: unknown op {op!r}; valid ops: {', '.join(OPS)}")
            ops.append(op)
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The string of six ops in :data:`EDGES` order (inverse of :func:`parse`)."""
    ops = tuple(ops)
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise ArchError(f"expected {len(EDGES)} ops from {', '.join(OPS)}, got {ops!r}")
    blocks = [[f"{op}~{j}" for (i, j), op in zip(EDGES, ops) if i == node] for node in (1, 2, 3)]
    return "+".join("|" + "|".join(b) + "|" for b in blocks)


# ----------------------------------------------------------------------------- the index

@functools.lru_cache(maxsize=1)
def all_archs() -> tuple[str, ...]:
    """All 15,625 strings in NB201 index order (shipped table, see ``jhnas/_data/PROVENANCE.md``)."""
    raw = resources.files("jhnas").joinpath("_data/nb201_archs.txt.gz").read_bytes()
    return tuple(format_arch([OPS[int(c)] for c in line])
                 for line in gzip.decompress(raw).decode().split())


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {a: i for i, a in enumerate(all_archs())}


def index_of(arch: str) -> int:
    """The NB201 index of ``arch`` (any valid spelling: whitespace is stripped)."""
    return _index()[format_arch(parse(arch))]


def arch_at(index: int) -> str:
    """The string of NB201 index ``index``."""
    if not 0 <= int(index) < NUM_ARCHS:
        raise IndexError(f"NB201 index must be in 0..{NUM_ARCHS - 1}, got {index}")
    return all_archs()[int(index)]


def sample_indices(key: jax.Array, n: int, *, replace: bool = False) -> np.ndarray:
    """``n`` NB201 indices drawn uniformly with a typed PRNG key."""
    if n < 0 or (not replace and n > NUM_ARCHS):
        raise ValueError(f"cannot draw {n} of {NUM_ARCHS} architectures "
                         f"{'with' if replace else 'without'} replacement")
    return np.asarray(jax.random.choice(key, NUM_ARCHS, (n,), replace=replace))


def sample(key: jax.Array, n: int, *, replace: bool = False) -> list[str]:
    """``n`` architecture strings drawn uniformly with a typed PRNG key."""
    return [arch_at(i) for i in sample_indices(key, n, replace=replace)]


# ----------------------------------------------------------------------------- isomorphism

def canonical(arch: str) -> str:
    """A string shared by isomorphic architectures: NATS-Bench's notion, 6,466 classes.

    Node 0 is ``0``; every edge into a node gives one item: ``#`` for a ``none`` edge or a source
    that is exactly ``#``, the source's string for ``skip_connect``, ``(source)@op`` otherwise;
    a node is its items sorted and joined with ``+``. Sorting makes the form invariant to the
    order of summands and to swapping isomorphic nodes. As in NATS-Bench, zero terms are kept
    and a skip inserts its source as one item, so some architectures computing the same function
    stay in different classes.
    """
    ops = parse(arch)
    nodes = ["0"]
    for node in (1, 2, 3):
        items = []
        for (i, j), op in zip(EDGES, ops):
            if i != node:
                continue
            if op == "none" or nodes[j] == "#":
                items.append("#")
            else:
                items.append(nodes[j] if op == "skip_connect" else f"({nodes[j]})@{op}")
        nodes.append("+".join(sorted(items)))
    return nodes[3]


# ----------------------------------------------------------------------------- the network

def _bn(affine: bool = True) -> nn.BatchNorm:
    # torch: momentum 0.1 (flax 0.9), eps 1e-5; the mode is set by jhnas.net.from_flax.
    return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                        use_bias=affine, use_scale=affine)


class ReLUConvBN(nn.Module):
    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    conv_bias: bool = False
    affine: bool = True
    use_bn: bool = True

    @nn.compact
    def __call__(self, x):
        x = jnn.relu(self, x)
        x = jnn.Conv(self.c_in, self.c_out, self.kernel, strides=self.stride,
                     padding=(self.kernel - 1) // 2, use_bias=self.conv_bias, name="conv")(x)
        return _bn(self.affine)(x) if self.use_bn else x


def _avg_pool3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


class Cell(nn.Module):
    ops: tuple[str, ...]
    channels: int
    preset: str = "hnas"
    use_bn: bool = True

    @nn.compact
    def __call__(self, x):
        nodes = [x]
        hnas = self.preset == "hnas"
        for node in (1, 2, 3):
            total = 0.0
            for (i, j), op in zip(EDGES, self.ops):
                if i != node:
                    continue
                h = nodes[j]
                if op == "none":
                    h = h * 0.0  # not zeros_like: XLA would constant-fold the dead branch slowly
                elif op == "avg_pool_3x3":
                    h = _avg_pool3(h)
                elif op in ("nor_conv_1x1", "nor_conv_3x3"):
                    h = ReLUConvBN(self.channels, self.channels, 1 if op == "nor_conv_1x1" else 3,
                                   conv_bias=hnas, affine=not hnas, use_bn=self.use_bn,
                                   name=f"edge_{i}_{j}")(h)
                total = total + h
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """The ResNet basic block between stages: stride 2, channels doubled."""
    c_in: int
    c_out: int
    use_bn: bool = True

    @nn.compact
    def __call__(self, x):
        b = ReLUConvBN(self.c_in, self.c_out, 3, 2, use_bn=self.use_bn, name="conv_a")(x)
        b = ReLUConvBN(self.c_out, self.c_out, 3, 1, use_bn=self.use_bn, name="conv_b")(b)
        r = nn.avg_pool(x, (2, 2), strides=(2, 2))
        r = jnn.Conv(self.c_in, self.c_out, 1, name="shortcut")(r)
        return r + b


class NB201Net(nn.Module):
    """The NB201 network; ``x`` NHWC (B, H, W, 3) -> logits (B, num_classes)."""
    arch: str
    num_classes: int = 10
    C: int = 16
    N: int = 5
    preset: str = "hnas"
    use_bn: bool = True

    @nn.compact
    def __call__(self, x):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        ops = parse(self.arch)
        c = self.C
        x = jnn.Conv(x.shape[-1], c, 3, padding=1, name="stem_conv")(x)
        x = _bn()(x) if self.use_bn else x
        for stage in range(3):
            if stage:
                x = ResidualReduction(c, 2 * c, self.use_bn, name=f"reduce{stage}")(x)
                c *= 2
            for k in range(self.N):
                x = Cell(ops, c, self.preset, self.use_bn, name=f"cell{stage + 1}_{k}")(x)
        x = _bn()(x) if self.use_bn else x
        x = jnn.relu(self, x).mean(axis=(1, 2))
        return jnn.Dense(c, self.num_classes, name="classifier")(x)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def param_shapes(model: nn.Module, image_size: int = 32):
    """Parameter shapes of ``model`` without computing anything (``jax.eval_shape``)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]
