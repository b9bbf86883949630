r"""Short trainings with optax: HNAS's training signal.

A Flax classifier ``module(x) -> logits`` (NHWC float32 images, as :mod:`jhnas.data` gives) is
trained from scratch with SGD + momentum, a cosine learning-rate schedule, weight decay and
gradient clipping on the mean (optionally label-smoothed) cross-entropy; its ``nn.BatchNorm``
layers use batch statistics while training and their running averages at evaluation. Augmentation
is the standard CIFAR one, done in JAX with keys: a random 32 x 32 crop of the image padded by 4
pixels of zeros, and a horizontal flip with probability 1/2.

Everything random comes from the key given to :func:`train`: ``init, data = split(key)``; epoch
``e`` shuffles with ``fold_in(data, e)`` and augments step ``i`` with ``fold_in(fold_in(data, e),
i)``. Same key, same weights, same history.

Example::

  >>> import jax
  >>> from jhnas import data, train
  >>> from jhnas.spaces import nb201
  >>> x, y = data.normalize(data.default_images()[0]), data.default_images()[1]
  >>> module = nb201.NB201Net(nb201.arch_at(0), C=8, N=1, preset="nb201")
  >>> cfg = train.TrainConfig(epochs=1, batch_size=64)
  >>> state, hist = train.train(jax.random.key(0), module, (x[:192], y[:192]),
  ...                           (x[192:], y[192:]), cfg, progress=False)
  >>> len(hist.val_acc)
  1
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jhnas.net import bn_mode
from jhnas.progress import bar

Arrays = tuple[np.ndarray, np.ndarray]  # (x NHWC float32, y int32)


class TrainConfig(NamedTuple):
    """Settings of one training (defaults: a short CPU run on a few hundred images)."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    clip_norm: float = 5.0
    label_smoothing: float = 0.0
    augment: bool = True


class TrainState(NamedTuple):
    """Parameters, BatchNorm running statistics, optimiser state, step count."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: int


class History(NamedTuple):
    """Per epoch: mean training loss and accuracy, validation loss and accuracy (%)."""

    train_loss: tuple[float, ...] = ()
    train_acc: tuple[float, ...] = ()
    val_loss: tuple[float, ...] = ()
    val_acc: tuple[float, ...] = ()
    seconds: float = 0.0


def _check(config: TrainConfig, n_train: int) -> None:
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {config.epochs}, "
                         f"{config.batch_size}")
    if n_train < config.batch_size:
        raise ValueError(f"{n_train} training images, fewer than batch_size {config.batch_size}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")


def optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """clip(global norm) -> + weight_decay * w -> SGD(momentum) with a cosine schedule to 0."""
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
    return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                       optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))


def augment(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """Random crop of the zero-padded image and random horizontal flip: (B, H, W, C) -> same."""
    b, h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (b,))
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, off, flip):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def cross_entropy(logits: jax.Array, y: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy against one-hot labels smoothed by ``smoothing``."""
    target = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, target).mean()


def init_state(key: jax.Array, module: nn.Module, x: jax.Array,
               tx: optax.GradientTransformation) -> TrainState:
    variables = module.init(key, x[:1])
    params = variables["params"]
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params), 0)


def make_step(module: nn.Module, tx: optax.GradientTransformation, config: TrainConfig):
    """The jit-compiled ``step(state, key, x, y) -> (state, loss, correct)``."""

    def loss_fn(params, batch_stats, x, y, key):
        with bn_mode("train"):
            logits, upd = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                       mutable=["batch_stats"], rngs={"drop_path": key})
        return cross_entropy(logits, y, config.label_smoothing), (logits, upd)

    @jax.jit
    def step(state: TrainState, key, x, y):
        aug_key, drop_key = jax.random.split(key)
        if config.augment:
            x = augment(aug_key, x)
        (loss, (logits, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y, drop_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = (logits.argmax(-1) == y).sum()
        return TrainState(params, upd.get("batch_stats", {}), opt_state, state.step + 1), loss, \
            correct

    return step


def make_eval(module: nn.Module):
    """The jit-compiled ``eval(params, batch_stats, x, y) -> (summed loss, correct)``, BatchNorm
    with its running statistics."""

    @jax.jit
    def evaluate(params, batch_stats, x, y):
        with bn_mode("eval"):
            logits, _ = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                     mutable=["batch_stats"])
        return cross_entropy(logits, y) * y.shape[0], (logits.argmax(-1) == y).sum()

    return evaluate


def evaluate(module: nn.Module, state: TrainState, data: Arrays, batch_size: int = 256,
             _fn=None) -> tuple[float, float]:
    """(mean loss, accuracy %) of ``state`` on ``data``, in batches of ``batch_size``."""
    fn = _fn or make_eval(module)
    x, y = data
    loss = correct = 0.0
    for i in range(0, len(y), batch_size):
        l, c = fn(state.params, state.batch_stats, jnp.asarray(x[i:i + batch_size]),
                  jnp.asarray(y[i:i + batch_size], jnp.int32))
        loss, correct = loss + float(l), correct + float(c)
    return loss / len(y), 100.0 * correct / len(y)


def train(key: jax.Array, module: nn.Module, train_data: Arrays, val_data: Arrays | None = None,
          config: TrainConfig = TrainConfig(), *, progress: bool = True
          ) -> tuple[TrainState, History]:
    """Trains ``module`` from scratch; returns the final state and the per-epoch history.

    Each epoch visits ``len(train) // batch_size`` batches of a fresh permutation (the remainder
    is dropped, so every step has the same shape and one compilation serves all).
    """
    x, y = np.asarray(train_data[0], np.float32), np.asarray(train_data[1], np.int32)
    _check(config, len(y))
    steps = len(y) // config.batch_size
    tx = optimizer(config, steps * config.epochs)
    init_key, data_key = jax.random.split(key)
    state = init_state(init_key, module, jnp.asarray(x[:1]), tx)
    step, ev = make_step(module, tx, config), make_eval(module)
    hist = History()
    t0 = time.perf_counter()
    progress_bar = bar(enabled=progress, total=config.epochs, desc="training", unit="epoch",
                       leave=False)
    for epoch in range(config.epochs):
        ek = jax.random.fold_in(data_key, epoch)
        order = np.asarray(jax.random.permutation(ek, len(y)))
        loss_sum = correct = 0.0
        for i in range(steps):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            state, loss, c = step(state, jax.random.fold_in(ek, i), jnp.asarray(x[idx]),
                                  jnp.asarray(y[idx]))
            loss_sum, correct = loss_sum + float(loss), correct + float(c)
        val = evaluate(module, state, val_data, _fn=ev) if val_data is not None else (np.nan,
                                                                                       np.nan)
        hist = History(hist.train_loss + (loss_sum / steps,),
                       hist.train_acc + (100.0 * correct / (steps * config.batch_size),),
                       hist.val_loss + (val[0],), hist.val_acc + (val[1],), 0.0)
        progress_bar.set_postfix_str(f"loss {loss_sum / steps:.3f} val {val[1]:.1f}%",
                                     refresh=False)
        progress_bar.update()
    progress_bar.close()
    return state, hist._replace(seconds=time.perf_counter() - t0)
