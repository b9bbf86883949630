"""The PyTorch reference of the official metrics on NB201 (tests/test_torch_parity.py,
bench/torch_reference.py): written the way the official HNAS / zero-cost-proxy code computes
them, not the way jhnas does.

* the NB201 network as a ``torch.nn.Module`` (preset "hnas": cell convs with bias, non-affine cell
  BatchNorm without running statistics; affine BatchNorm elsewhere), in train mode, its weights
  copied from a jhnas parameter tree (:func:`load_flax_params`);
* ``ntk_trace`` (M) and ``ntk_cond`` (kappa) each on a fresh copy of the network: forward hooks on
  every Conv2d/Linear record the layer input and put a tensor hook on its output, one backward of
  S = sum_i f_{y_i}(x_i), per-sample gradients = backprop signal (x) unfolded input, Gram G G^T.
  M = sqrt(sum of eigenvalues / N); kappa = lambda_max / lambda_min, NaN -> 1e5. Eigenvalues are
  taken in float64 here (the official code used float32 ``symeig``), as jhnas does;
* ``grad_norm`` (sum of per-layer ||dL/dW||), ``snip`` (gradient w.r.t. a ones mask multiplying
  each weight), ``grasp`` (two passes: g = dL/dW, then the gradient of <g, dL/dW> with
  create_graph, -W * Hg), ``fisher``, each on a fresh copy;
* a ``torch.func`` variant (:func:`func_gram`): ``vmap(grad)`` of the single-sample true-label
  logit, the counterpart of jhnas's ``per_sample`` implementation.

Only torch and numpy are imported, so processes that measure torch alone do not load JAX.
"""
from __future__ import annotations

import copy
import math
import types

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
TORCH_METRICS = ("grad_norm", "snip", "grasp", "fisher", "ntk_trace", "ntk_cond")
NAN_KAPPA = 1e5  # what the official code returns for a NaN condition number


def _flatten(tree, prefix=()) -> dict:
    """A nested mapping of arrays as ``{path tuple: array}``."""
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


# ----------------------------------------------------------------------------- the network

class ReLUConvBN(tnn.Module):
    """relu -> conv k x k (padding (k-1)//2) -> BatchNorm; names mirror jhnas's Flax module."""

    def __init__(self, c_in, c_out, k, stride=1, conv_bias=False, affine=True, track=True):
        super().__init__()
        self.conv = tnn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, bias=conv_bias)
        self.bn = tnn.BatchNorm2d(c_out, affine=affine, track_running_stats=track)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class Cell(tnn.Module):
    """x_i = sum_{j<i} op_{j->i}(x_j); dead edges are computed (none = multiply by 0)."""

    def __init__(self, ops, c):
        super().__init__()
        self.ops = tuple(ops)
        for (i, j), op in zip(EDGES, self.ops):
            if op in ("nor_conv_1x1", "nor_conv_3x3"):
                k = 1 if op == "nor_conv_1x1" else 3
                self.add_module(f"edge_{i}_{j}", ReLUConvBN(c, c, k, conv_bias=True, affine=False,
                                                            track=False))

    def forward(self, x):
        nodes = [x]
        for node in (1, 2, 3):
            terms = []
            for (i, j), op in zip(EDGES, self.ops):
                if i != node:
                    continue
                h = nodes[j]
                if op == "none":
                    h = h * 0.0
                elif op == "avg_pool_3x3":
                    h = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
                elif op != "skip_connect":
                    h = getattr(self, f"edge_{i}_{j}")(h)
                terms.append(h)
            nodes.append(sum(terms[1:], terms[0]))
        return nodes[3]


class Reduction(tnn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = tnn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        return self.shortcut(F.avg_pool2d(x, 2, 2)) + self.conv_b(self.conv_a(x))


class NB201(tnn.Module):
    """The NB201 network of the official zero-cost / HNAS code (NCHW)."""

    def __init__(self, arch: str, C: int = 16, N: int = 5, num_classes: int = 10):
        super().__init__()
        from jhnas.spaces.nb201 import parse  # the string grammar is shared
        ops = parse(arch)
        self.stem_conv = tnn.Conv2d(3, C, 3, padding=1, bias=False)
        self.stem_bn = tnn.BatchNorm2d(C)
        self.order = []
        c = C
        for stage in (1, 2, 3):
            if stage > 1:
                self.add_module(f"reduce{stage - 1}", Reduction(c, 2 * c))
                self.order.append(f"reduce{stage - 1}")
                c *= 2
            for k in range(N):
                self.add_module(f"cell{stage}_{k}", Cell(ops, c))
                self.order.append(f"cell{stage}_{k}")
        self.head_bn = tnn.BatchNorm2d(c)
        self.classifier = tnn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem_bn(self.stem_conv(x))
        for name in self.order:
            x = getattr(self, name)(x)
        x = F.relu(self.head_bn(x)).mean((2, 3))
        return self.classifier(x)


def load_flax_params(module: tnn.Module, params) -> tnn.Module:
    """Copies a jhnas Flax parameter tree into ``module`` (same module paths): conv kernels
    (kh, kw, in, out) -> (out, in, kh, kw), Dense (in, out) -> (out, in), BatchNorm scale -> weight.
    Every torch parameter must receive a value."""
    flat = _flatten(params)
    named = dict(module.named_parameters())
    seen = set()
    with torch.no_grad():
        for path, value in flat.items():
            value = np.asarray(value)
            leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
            name = ".".join(path[:-1]) + "." + leaf
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.T
            target = named[name]
            if tuple(target.shape) != value.shape:
                raise ValueError(f"{name}: torch {tuple(target.shape)} vs flax {value.shape}")
            target.copy_(torch.from_numpy(np.array(value, copy=True)).to(target.dtype))
            seen.add(name)
    missing = set(named) - seen
    if missing:
        raise ValueError(f"torch parameters without a Flax value: {sorted(missing)}")
    return module


def torch_net(arch: str, params, *, C=16, N=5, num_classes=10, dtype=torch.float32) -> NB201:
    net = NB201(arch, C, N, num_classes).to(dtype)
    return load_flax_params(net, params).train()


def torch_batch(batch, dtype=torch.float32):
    """jhnas Batch (NHWC) -> torch (NCHW) tensors."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(batch.x).transpose(0, 3, 1, 2)))
    return x.to(dtype), torch.from_numpy(np.asarray(batch.y, np.int64))


# ----------------------------------------------------------------------------- metrics (official)

def _layers(net):
    return [m for m in net.modules() if isinstance(m, (tnn.Conv2d, tnn.Linear))]


def hook_gram(net, x, y) -> torch.Tensor:
    """The official per-sample NTK decomposition: hooks, one backward of sum_i f_{y_i}(x_i)."""
    acts, backs, handles = {}, {}, []

    def forward_hook(mod, inputs, out):
        acts[mod] = inputs[0].detach()
        out.register_hook(lambda g: backs.__setitem__(mod, g.detach()))

    for m in _layers(net):
        handles.append(m.register_forward_hook(forward_hook))
    try:
        net.zero_grad()
        out = net(x)
        out[torch.arange(x.shape[0]), y].sum().backward()
    finally:
        for h in handles:
            h.remove()
    n, rows = x.shape[0], []
    for m in _layers(net):
        if m not in backs:
            continue
        a, b = acts[m], backs[m]
        if isinstance(m, tnn.Linear):
            rows.append(torch.einsum("no,ni->noi", b, a).reshape(n, -1))
            bias = b
        else:
            if m.groups != 1:
                raise NotImplementedError("grouped convolutions")
            cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding,
                            stride=m.stride)  # (n, C_in * k * k, L)
            b = b.reshape(n, m.out_channels, -1)
            rows.append(torch.einsum("nol,nil->noi", b, cols).reshape(n, -1))
            bias = b.sum(2)
        if m.bias is not None:
            rows.append(bias)
    g = torch.cat(rows, 1)
    return g @ g.T


def _eig(gram):
    return torch.linalg.eigvalsh(gram.double())


def ntk_trace(net, x, y) -> float:
    net = copy.deepcopy(net)  # the official measure wrapper works on a copy of the network
    lam = _eig(hook_gram(net, x, y))
    return math.sqrt(lam.sum().item() / x.shape[0])


def ntk_cond(net, x, y) -> float:
    net = copy.deepcopy(net)
    lam = _eig(hook_gram(net, x, y))
    return float(np.nan_to_num((lam[-1] / lam[0]).item(), nan=NAN_KAPPA))


def ntk_both(net, x, y) -> tuple[float, float]:
    """M and kappa from one Gram (what jhnas does; the official code computes the Gram twice)."""
    lam = _eig(hook_gram(copy.deepcopy(net), x, y))
    return (math.sqrt(lam.sum().item() / x.shape[0]),
            float(np.nan_to_num((lam[-1] / lam[0]).item(), nan=NAN_KAPPA)))


def grad_norm(net, x, y) -> float:
    net = copy.deepcopy(net)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return float(sum(m.weight.grad.norm() for m in _layers(net)))


def _masked_conv(self, x):
    return F.conv2d(x, self.weight * self.weight_mask, self.bias, self.stride, self.padding,
                    self.dilation, self.groups)


def _masked_linear(self, x):
    return F.linear(x, self.weight * self.weight_mask, self.bias)


def snip(net, x, y) -> float:
    net = copy.deepcopy(net)
    for m in _layers(net):
        m.weight_mask = tnn.Parameter(torch.ones_like(m.weight))
        m.weight.requires_grad_(False)
        m.forward = types.MethodType(_masked_conv if isinstance(m, tnn.Conv2d) else _masked_linear, m)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return float(sum(m.weight_mask.grad.abs().sum() for m in _layers(net)))


def grasp(net, x, y) -> float:
    net = copy.deepcopy(net)
    weights = [m.weight for m in _layers(net)]
    net.zero_grad()
    g = torch.autograd.grad(F.cross_entropy(net(x), y), weights)
    g_f = torch.autograd.grad(F.cross_entropy(net(x), y), weights, create_graph=True)
    z = sum((a.detach() * b).sum() for a, b in zip(g, g_f))
    z.backward()
    return float(sum((-w.detach() * w.grad).sum() for w in weights))


def fisher(net, x, y) -> float:
    """Per output channel c of each Conv2d/Linear output a: F_c = 0.5 mean_i (sum_spatial a dL/da)^2;
    each F_c is copied to the channel's weight[c] slice (weight[0].numel() copies) and summed."""
    net = copy.deepcopy(net)
    acts, backs, handles = {}, {}, []

    def forward_hook(mod, inputs, out):
        acts[mod] = out.detach()
        out.register_hook(lambda g: backs.__setitem__(mod, g.detach()))

    for m in _layers(net):
        handles.append(m.register_forward_hook(forward_hook))
    try:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for m in _layers(net):
        if m in backs:
            g_nc = (acts[m] * backs[m]).flatten(2).sum(2) if acts[m].dim() > 2 else acts[m] * backs[m]
            total += float((0.5 * g_nc.pow(2).mean(0)).sum()) * m.weight[0].numel()
    return total


def func_gram(net, x, y, chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample NTK by torch.func: vmap(grad) of the single-sample true-label logit (each sample
    normalised by its own BatchNorm statistics, like jhnas's ``per_sample``)."""
    from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
    net = replace_all_batch_norm_modules_(copy.deepcopy(net))
    layer_params = {f"{name}.{k}" for name, m in net.named_modules()
                    if isinstance(m, (tnn.Conv2d, tnn.Linear)) for k, _ in m.named_parameters()}
    params = {k: v.detach() for k, v in net.named_parameters() if k in layer_params}
    rest = {k: v.detach() for k, v in net.named_parameters() if k not in layer_params}

    def logit(p, xi, onehot_i):
        return (functional_call(net, {**p, **rest}, (xi[None],))[0] * onehot_i).sum()

    onehot = F.one_hot(y, net.classifier.out_features).to(x.dtype)
    grads = vmap(grad(logit), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, onehot)
    g = torch.cat([v.reshape(x.shape[0], -1) for v in grads.values()], 1)
    return g @ g.T


TORCH_FNS = {"grad_norm": grad_norm, "snip": snip, "grasp": grasp, "fisher": fisher,
             "ntk_trace": ntk_trace, "ntk_cond": ntk_cond}


def torch_metrics(net, x, y) -> dict[str, float]:
    return {name: fn(net, x, y) for name, fn in TORCH_FNS.items()}



def rel(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 when both are 0)."""
    d = max(abs(a), abs(b))
    return abs(a - b) / d if d else 0.0

