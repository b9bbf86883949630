"""jhnas against the PyTorch reference of the official metrics (bench/torch_reference.py).

Skipped when torch is not installed (optional extra ``jhnas[torch]``). Same weights (copied from
the Flax parameters), same images; one small NB201 network (1 cell per stage, batch 8).
"""
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jhnas import data  # noqa: E402
from jhnas.metrics import metrics_fn  # noqa: E402
from jhnas.spaces import nb201  # noqa: E402

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def ref():
    path = Path(__file__).resolve().parents[1] / "bench" / "torch_reference.py"
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_metrics_match_the_torch_reference(ref):
    torch.set_num_threads(1)
    batch = data.default_batch(8)
    net = nb201.make_net(ARCH, compile="network", N=1, C=8)
    # random weights from numpy (compiling jhnas's PyTorch-style init costs more than the test)
    rng = np.random.default_rng(0)
    shapes = nb201.param_shapes(nb201.NB201Net(ARCH, N=1, C=8))
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (1.0 if path[-1].key == "scale" else 0.0)
        + rng.uniform(-0.3, 0.3, s.shape).astype(np.float32), shapes)
    tnet = ref.torch_net(ARCH, params, N=1, C=8)
    x, y = ref.torch_batch(batch)
    got = metrics_fn(net, list(ref.TORCH_METRICS))(params, batch)
    want = ref.torch_metrics(tnet, x, y)
    for name in ref.TORCH_METRICS:
        assert ref.rel(got[name], want[name]) < 1e-4, (name, got[name], want[name])
    m, k = ref.ntk_both(tnet, x, y)  # one Gram gives both
    assert (m, k) == (want["ntk_trace"], want["ntk_cond"])
