"""Scoring past one device: a batch sharded over devices, a pool of architectures over devices.

Two kinds of parallelism, both giving the values of a single-device run:

* **One network, the batch sharded** (:func:`sharded_ntk_fn`, :func:`sharded_metrics_fn`): the
  images and labels are split along the batch axis of a :class:`jax.sharding.Mesh` (``NamedSharding``
  with ``PartitionSpec("batch")``), the parameters are replicated, and the function is jit-compiled
  with these shardings. XLA partitions the computation: each device runs the network on its share
  of the samples, train-mode BatchNorm statistics and the NTK Gram are combined across devices by
  collectives. Per-device activation memory falls with the number of devices, which is what makes
  large batches fit. Sums are taken in a different order than on one device, so values agree to
  float32 rounding (about 1e-6 relative), not bit for bit.
* **A pool of architectures** (:func:`map_devices`; for NB201 :func:`jhnas.experiments.score.score_pool`): every architecture is a
  different program, so the pool is dealt round-robin to the devices and each device scores its
  share in its own thread (``jax.default_device``), everything of one architecture staying on one
  device. Values are bit-identical to :func:`jhnas.experiments.score.score_arch` on one device.

Memory: the NTK uses :func:`jhnas.ntk.empirical_ntk_fn` with ``scan_offsets=True`` (the per-layer
Gram loops over convolution kernel offsets instead of unrolling them), which lowers the peak
memory of a jit-compiled network: the NB201 network (5 cells, C = 16) needs 2.1 GB of XLA
temporaries at batch 256 instead of 2.9 GB (``bench/results/parallel.md``).

Example (four host CPU devices stand in for accelerators)::

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -c "
  import jax, jax.numpy as jnp, numpy as np
  from jhnas import data, parallel
  from jhnas.spaces import nb201
  net = nb201.make_net(nb201.arch_at(0), compile='network')
  b = data.default_batch(256)
  p = net.init(jax.random.key(0), np.asarray(b.x[:1]))
  print(parallel.sharded_ntk_fn(net)(p, b.x, b.y).shape)"
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jhnas.data import Batch
from jhnas.metrics import metrics_fn
from jhnas.net import Net, from_apply
from jhnas.ntk import empirical_ntk_fn

#: A JAX device (``jax.Device``, which type checkers read as a variable, not a type).
Device = Any

AXIS = "batch"


def batch_mesh(devices: Sequence[Device] | None = None, axis: str = AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: all devices of the default backend)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices")
    return Mesh(np.array(devices), (axis,))


def _check_batch(n: int, mesh: Mesh, axis: str) -> None:
    d = mesh.shape[axis]
    if n % d:
        raise ValueError(f"batch of {n} samples cannot be split evenly over {d} devices: use a "
                         f"batch size divisible by {d}")


def shard_batch(batch: Batch, mesh: Mesh, axis: str = AXIS) -> Batch:
    """``batch`` as device arrays split along the batch axis over ``mesh``."""
    x, y = np.asarray(batch.x), np.asarray(batch.y, np.int32)
    _check_batch(x.shape[0], mesh, axis)
    s = NamedSharding(mesh, PartitionSpec(axis))
    return Batch(jax.device_put(x, s), jax.device_put(y, s))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` as device arrays replicated on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def sharded_ntk_fn(f: Net | Callable, mesh: Mesh | None = None, *, axis: str = AXIS,
                   scan_offsets: bool = True, **ntk_kw
                   ) -> Callable[[Any, Any, Any], jax.Array]:
    """:func:`jhnas.ntk.empirical_ntk_fn` with the batch sharded over ``mesh``.

    Returns ``ntk(params, x, y=None)``: ``x``/``y`` split along ``axis``, ``params`` replicated,
    the Gram (M, M) replicated on every device. A net of compiled blocks is compiled whole here
    (one program has to be partitioned). ``ntk_kw`` go to ``empirical_ntk_fn`` (implementation,
    output, params, ...); the batch size must be divisible by the number of devices.
    """
    mesh = batch_mesh(axis=axis) if mesh is None else mesh
    net = f if isinstance(f, Net) else from_apply(f)
    if ntk_kw.get("backend", "jhnas") != "jhnas":
        raise ValueError("the sharded NTK uses the jhnas backend")
    if ntk_kw.get("implementation", "decomposition") == "decomposition":
        ntk_kw["scan_offsets"] = scan_offsets
    inner = empirical_ntk_fn(net, **ntk_kw)
    rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis))
    with_y = jax.jit(lambda p, x, y: inner(p, x, y), in_shardings=(rep, data, data),
                     out_shardings=rep)
    without_y = jax.jit(lambda p, x: inner(p, x), in_shardings=(rep, data), out_shardings=rep)

    def ntk(params, x, y=None):
        _check_batch(np.shape(x)[0], mesh, axis)
        if y is None:
            return without_y(params, x)
        return with_y(params, x, jnp.asarray(y, jnp.int32))

    ntk.lower = lambda params, x, y=None: (  # for memory analysis: ntk.lower(...).compile()
        without_y.lower(params, x) if y is None else with_y.lower(params, x, y))
    return ntk


def sharded_metrics_fn(f: Net | Callable, names: Sequence[str], mesh: Mesh | None = None, *,
                       axis: str = AXIS, **kw) -> Callable[[Any, Batch, Any], dict[str, float]]:
    """:func:`jhnas.metrics.metrics_fn` with the batch sharded over ``mesh``.

    The batch is placed split along ``axis`` and the parameters replicated; the jit-compiled
    metric passes follow these shardings (computation follows data). Use a network compiled
    whole (``nb201.make_net(..., compile="network")``): a net of compiled blocks would run its
    glue eagerly. zico splits the batch into parts: each part must itself divide evenly.
    """
    mesh = batch_mesh(axis=axis) if mesh is None else mesh
    net = f if isinstance(f, Net) else from_apply(f)
    if net.compiled:
        raise ValueError("sharded_metrics_fn needs a network compiled whole: build it with "
                         "compile='network'")
    fn = metrics_fn(net, names, **kw)

    def sharded(params, batch: Batch, key=None) -> dict[str, float]:
        return fn(replicate(params, mesh), shard_batch(batch, mesh, axis), key)

    return sharded


def map_devices(fn: Callable[[Any], Any], items: Sequence[Any], *,
                devices: Sequence[Device] | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, the items dealt round-robin to ``devices``.

    Each device works through its items one after another in its own thread, inside
    ``jax.default_device(device)``, so everything ``fn`` creates for one item stays on one
    device and the values equal a one-device run bit for bit. Results in the order of ``items``.
    """
    devices = list(jax.devices() if devices is None else devices)
    items = list(items)
    results: list[Any] = [None] * len(items)

    def work(device, indices):
        with jax.default_device(device):
            for i in indices:
                results[i] = fn(items[i])

    shares = [(d, list(range(k, len(items), len(devices)))) for k, d in enumerate(devices)]
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
        for fut in [pool.submit(work, d, idx) for d, idx in shares if idx]:
            fut.result()
    return results

