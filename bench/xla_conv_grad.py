"""Where XLA:CPU loses to PyTorch on the NB201 gradient step: one 3x3 convolution, split into its
forward, input gradient and weight gradient, and reformulations of the weight gradient.

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python bench/xla_conv_grad.py

The three NB201 stage shapes at batch 64 (C=16 at 32x32, 32 at 16x16, 64 at 8x8), float32, one
core. Per shape, the best of 7 runs (after one warm-up call) of:

* ``fwd``: ``lax.conv_general_dilated`` (NHWC/HWIO); ``dx``: the input VJP alone; ``dw``: the
  weight VJP alone (what ``jax.grad`` emits);
* ``dw chunked``: the weight VJP of :func:`jhnas.nn.chunked_conv` (the convolution of jhnas's
  search spaces: a sum of per-chunk weight gradients, ``CONV_CHUNK`` samples each), and the
  same with chunks of each size in ``CHUNKS`` (how the default was chosen; by default inputs of
  at most ``UNCHUNKED_POSITIONS`` positions, the 8x8 stage, are not chunked);
* ``dw`` reformulated: ``im2col`` (the 9 shifted copies concatenated, one matmul), ``shifted``
  (9 matmuls ``x_shift^T dy``), ``as_conv`` (the weight gradient written as a VALID convolution
  with the batch as the contracted feature);
* ``torch``: the same convolution's forward + backward (input and weight gradients) in PyTorch
  with one thread, when torch is installed.

And the whole gradient step: ``jit(grad)`` of the mean cross-entropy of the NB201 network (5
cells, batch 64, train-mode BN, one monolithic compilation) with plain
``lax.conv_general_dilated`` (chunk = batch), with ``chunked_conv`` at chunks of 16 and
``CONV_CHUNK`` samples at every stage, and with ``chunked_conv``'s default (``CONV_CHUNK``, no
chunks at 8x8), alternated, best of 14 runs each, compile time apart.

Writes bench/results/xla_conv_grad.{json,md} (``--out PREFIX``: PREFIX.{json,md}); the CPU's
model name goes into both, since the results differ between CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jhnas.nn import CONV_CHUNK, chunked_conv
from jhnas.experiments.results import cpu_name, write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(16, 32), (32, 16), (64, 8)]  # (channels, spatial size) of the NB201 stages
BATCH, REPEAT = 64, 7
CHUNKS = (4, 8, 16, 32)
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def _shifts(x):
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


def dw_im2col(x, dy):
    cols = jnp.concatenate(_shifts(x), -1)
    return jnp.einsum("bhwk,bhwo->ko", cols, dy).reshape(3, 3, x.shape[-1], dy.shape[-1])


def dw_shifted(x, dy):
    return jnp.stack([jnp.einsum("bhwc,bhwo->co", s, dy) for s in _shifts(x)]).reshape(
        3, 3, x.shape[-1], dy.shape[-1])


def dw_as_conv(x, dy):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = lax.conv_general_dilated(jnp.transpose(xp, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)),
                                   (1, 1), "VALID", dimension_numbers=DN)  # (ci, 3, 3, co)
    return jnp.transpose(out, (1, 2, 0, 3))


def best_ms(f, *args) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def torch_ms(c: int, h: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    x = torch.randn(BATCH, c, h, h, requires_grad=True)
    w = (0.1 * torch.randn(c, c, 3, 3)).requires_grad_()

    def step():
        torch.nn.functional.conv2d(x, w, padding=1).square().sum().backward()

    step()
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def network_steps(arch: str) -> dict:
    """jit(grad(mean CE)) of the NB201 net with plain convolutions (chunk = batch) and with
    ``chunked_conv``: compile seconds of each, then the two alternated ``2 * REPEAT`` times (so
    that machine load hits both alike), best run of each, and their gradients' difference."""
    import functools

    import jhnas.nn
    from jhnas import data
    from jhnas.metrics import cross_entropy
    from jhnas.spaces import nb201

    x, y = data.default_batch(BATCH)
    saved, steps, out = jhnas.nn.chunked_conv, {}, {"arch": arch}
    for name, chunk in (("plain", BATCH), ("chunked_16", 16), ("chunked", CONV_CHUNK),
                        ("default", None)):
        # the search spaces read jhnas.nn.chunked_conv when their modules are built
        jhnas.nn.chunked_conv = functools.partial(saved, chunk=chunk)
        try:
            net = nb201.make_net(arch, compile="network")
            params = net.init(jax.random.key(0), x)
            step = jax.jit(jax.grad(lambda p, net=net: cross_entropy(net.apply(p, x), y)))
            t = time.perf_counter()
            jax.block_until_ready(step(params))
        finally:
            jhnas.nn.chunked_conv = saved
        out[f"compile_s_{name}"] = time.perf_counter() - t
        steps[name] = functools.partial(step, params)
    times = {name: [] for name in steps}
    for _ in range(2 * REPEAT):
        for name, step in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(step())
            times[name].append(time.perf_counter() - t)
    out.update({f"run_s_{name}": min(v) for name, v in times.items()})
    g = {name: np.concatenate([np.ravel(a) for a in jax.tree.leaves(step())])
         for name, step in steps.items()}
    out["rel_err"] = max(float(np.abs(g["plain"] - g[k]).max() / np.abs(g["plain"]).max())
                         for k in g if k != "plain")
    return out


def main() -> None:
    from jhnas.spaces import nb201
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "xla_conv_grad"), help="output prefix")
    out = Path(p.parse_args().out)

    # the best NB201 architecture by 200-epoch CIFAR-10 test accuracy
    network = network_steps(nb201.arch_at(6111))
    print(network, flush=True)
    rows = []
    for c, h in SHAPES:
        kx, kw, ky = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (BATCH, h, h, c))
        w = 0.1 * jax.random.normal(kw, (3, 3, c, c))
        dy = jax.random.normal(ky, (BATCH, h, h, c))
        ref = jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        row = {"channels": c, "size": h,
               "fwd": best_ms(jax.jit(conv), x, w),
               "dx": best_ms(jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
                             w, dy),
               "dw": best_ms(ref, x, dy)}
        want = np.asarray(ref(x, dy))
        chunked = lambda x, dy: jax.vjp(lambda w: chunked_conv(
            x, w, (1, 1), "SAME", dimension_numbers=DN, chunk=CONV_CHUNK), w)[1](dy)[0]
        sweep = [(f"dw_chunk{k}", lambda x, dy, k=k: jax.vjp(lambda w: chunked_conv(
            x, w, (1, 1), "SAME", dimension_numbers=DN, chunk=k), w)[1](dy)[0]) for k in CHUNKS]
        for name, f in [("dw_chunked", chunked), ("dw_im2col", dw_im2col), ("dw_shifted", dw_shifted),
                        ("dw_as_conv", dw_as_conv), *sweep]:
            f = jax.jit(f)
            row[name] = best_ms(f, x, dy)
            got = np.asarray(f(x, dy))
            row[name + "_rel_err"] = float(np.abs(got - want).max() / np.abs(want).max())
        row["torch_fwd_bwd"] = torch_ms(c, h)
        rows.append(row)
        print(row, flush=True)
    env = {"jax": jax.__version__, "python": platform.python_version(),
           "cpu": cpu_name(),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(f"{out}.json"), json.dumps({"env": env, "rows": rows, "network": network},
                                              indent=1))
    lines = [f"# One 3x3 convolution on XLA:CPU, split (batch {BATCH}, float32, one core, best of "
             f"{REPEAT})", "",
             f"{env['cpu']}, jax {env['jax']}, XLA_FLAGS `{env['xla_flags']}`.", "",
             "| C, size | fwd ms | dx ms | dw ms | fwd+dx+dw ms | torch fwd+bwd ms | "
             f"dw chunked ({CONV_CHUNK}) ms | fwd+dx+dw chunked ms | dw im2col ms | "
             "dw shifted ms | dw as conv ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tt = "" if r["torch_fwd_bwd"] is None else f"{r['torch_fwd_bwd']:.1f}"
        lines.append(f"| {r['channels']}, {r['size']}x{r['size']} | {r['fwd']:.1f} | {r['dx']:.1f} "
                     f"| {r['dw']:.1f} | {r['fwd'] + r['dx'] + r['dw']:.1f} | {tt} | "
                     f"{r['dw_chunked']:.1f} | {r['fwd'] + r['dx'] + r['dw_chunked']:.1f} | "
                     f"{r['dw_im2col']:.1f} | {r['dw_shifted']:.1f} | {r['dw_as_conv']:.1f} |")
    lines += ["", "The reformulated weight gradients agree with XLA's to "
              f"{max(r[k] for r in rows for k in r if k.endswith('_rel_err')):.1e} (max relative "
              "difference).", "",
              "Weight gradient (ms) by chunk size, the sweep behind the default `CONV_CHUNK` = "
              f"{CONV_CHUNK}:", "",
              "| C, size | " + " | ".join(f"chunk {k}" for k in CHUNKS) + " |",
              "|---|" + "---|" * len(CHUNKS),
              *(f"| {r['channels']}, {r['size']}x{r['size']} | " + " | ".join(
                  f"{r[f'dw_chunk{k}']:.1f}" for k in CHUNKS) + " |" for r in rows), "",
              f"## The NB201 gradient step (jit(grad) of the mean cross-entropy, 5 cells, batch "
              f"{BATCH}, train-mode BN)", "",
              f"| convolution | compile s | run s (best of {2 * REPEAT}, alternated) |",
              "|---|---|---|",
              f"| lax.conv_general_dilated | {network['compile_s_plain']:.1f} | "
              f"{network['run_s_plain']:.2f} |",
              f"| jhnas.nn.chunked_conv (16 samples) | {network['compile_s_chunked_16']:.1f} "
              f"| {network['run_s_chunked_16']:.2f} |",
              f"| jhnas.nn.chunked_conv ({CONV_CHUNK} samples at every stage) | "
              f"{network['compile_s_chunked']:.1f} | {network['run_s_chunked']:.2f} |",
              f"| jhnas.nn.chunked_conv (the default: {CONV_CHUNK} samples, none at 8x8) | "
              f"{network['compile_s_default']:.1f} | {network['run_s_default']:.2f} |", "",
              f"Speed-up of the default {network['run_s_plain'] / network['run_s_default']:.2f}x; "
              f"gradients agree to {network['rel_err']:.1e} (max relative difference). "
              f"Architecture `{network['arch']}`.", ""]
    write_atomic(Path(f"{out}.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
