"""jhnas.parallel: sharded batches and pools over devices give the one-device values.

The multi-device checks run in a subprocess with four host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): the flag must be set before jax starts.
"""
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import nn as jnn
from jhnas import ntk
from jhnas.net import from_flax

SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jhnas import data, metrics, ntk, parallel
    from jhnas import nn as jnn
    from jhnas.net import from_flax
    assert len(jax.devices()) == 4, jax.devices()

    class Net(nn.Module):  # conv, train-mode BatchNorm (couples the samples), pooling, dense
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=False)(jnn.Conv(3, 4, 3, padding=1)(x))
            x = jnn.Conv(4, 4, 3, strides=2, padding=1, use_bias=True)(jnn.relu(self, x))
            return jnn.Dense(4, 3)(jnn.relu(self, x).mean((1, 2)))

    net = from_flax(Net())
    b = data.default_batch(8)
    b = data.Batch(b.x[:, ::4, ::4], b.y % 3)  # 8 x 8 images, labels of the 3-class head
    p = net.init(jax.random.key(0), b.x)
    x, y = jnp.asarray(b.x), jnp.asarray(b.y)
    one = ntk.empirical_ntk_fn(net)(p, x, y)
    fn = parallel.sharded_ntk_fn(net)
    four = fn(p, b.x, b.y)
    names = ["grad_norm", "ntk_trace", "ntk_cond"]
    m1 = metrics.metrics_fn(net, names)(p, b)
    m4 = parallel.sharded_metrics_fn(net, names)(p, b)
    grad = jax.jit(jax.grad(lambda p: metrics.cross_entropy(net.apply(p, x), y)))

    def score(seed):  # a pool item: one initialisation, scored on the current default device
        q = net.init(jax.random.key(seed), x)
        g = grad(q)
        return (str(list(jax.tree.leaves(g)[0].devices())[0]),
                [np.asarray(v).tobytes() for v in jax.tree.leaves(g)])

    pool = parallel.map_devices(score, range(6))
    seq = [score(s) for s in range(6)]
    try:
        fn(p, b.x[:6], b.y[:6])
        uneven = "no error"
    except ValueError as e:
        uneven = str(e)
    print(json.dumps({
        "ntk_rel": float(jnp.abs(four - one).max() / jnp.abs(one).max()),
        "gram_devices": len(four.sharding.device_set),
        "metric_rel": {k: abs(m1[k] - m4[k]) / abs(m1[k]) for k in names},
        "pool_devices": [d for d, _ in pool],
        "pool_equal": [v for _, v in pool] == [v for _, v in seq], "uneven": uneven}))
""")


@pytest.fixture(scope="module")
def four_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sharded_ntk_matches_one_device(four_devices):
    assert four_devices["ntk_rel"] < 1e-5
    assert four_devices["gram_devices"] == 4  # replicated result


def test_sharded_metrics_match_one_device(four_devices):
    assert max(four_devices["metric_rel"].values()) < 1e-5


def test_pool_is_spread_and_bit_identical_to_sequential(four_devices):
    assert four_devices["pool_devices"] == [f"TFRT_CPU_{i % 4}" for i in range(6)] or \
        four_devices["pool_devices"] == [f"cpu:{i % 4}" for i in range(6)]
    assert four_devices["pool_equal"] is True


def test_uneven_batch_is_refused(four_devices):
    assert "divisible by 4" in four_devices["uneven"]


class CNN(nn.Module):
    """Strided, grouped, dilated and 1x1 convolutions, train-mode BatchNorm."""

    @nn.compact
    def __call__(self, x):
        x = jnn.Conv(3, 6, 3, padding=1, use_bias=True)(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        x = jnn.relu(self, x)
        x = jnn.Conv(6, 6, 3, strides=2, padding=1, groups=3, use_bias=True)(x)
        x = nn.Conv(4, (2, 2), padding="SAME", kernel_dilation=2)(x)
        x = jnn.Conv(4, 4, 1)(jnn.relu(self, x))
        return jnn.Dense(4, 3)(x.mean((1, 2)))


def test_scan_offsets_gives_the_same_gram(output="all"):
    net = from_flax(CNN())
    x = jax.random.normal(jax.random.key(1), (4, 7, 7, 3))
    y = jnp.arange(4) % 3
    p = net.init(jax.random.key(0), x)
    ref = ntk.empirical_ntk_fn(net, output=output)(p, x, y)
    got = ntk.empirical_ntk_fn(net, output=output, scan_offsets=True)(p, x, y)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * float(jnp.abs(ref).max()))
