"""NB201 strings, index, isomorphism classes, sampling and the Flax network."""
import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas.net import from_flax
from jhnas.spaces import nb201

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def nats():
    path = DATA / "nats-bench-landscape" / "nats_bench.csv"
    if not path.exists():
        pytest.skip("../shared/data is not available")
    with open(path) as f:
        return list(csv.DictReader(f))


def test_round_trip_on_every_arch():
    archs = nb201.all_archs()
    assert len(archs) == nb201.NUM_ARCHS == len(set(archs))
    for i, a in enumerate(archs):
        assert nb201.format_arch(nb201.parse(a)) == a
    assert nb201.index_of(BEST) == archs.index(BEST)
    assert nb201.arch_at(nb201.index_of("  " + BEST + "\n")) == BEST


@pytest.mark.parametrize("bad, fragment", [
    ("|nor_conv_3x3~0|+|none~0|none~1|", "expected 3 blocks"),
    ("nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "must start and end with '|'"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "must list 2 edge(s)"),
    ("|nor_conv_3x3~0|+|none~0|none~2|+|none~0|none~1|none~2|", "must come from node 1"),
    ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_5x5'"),
    ("|nor_conv_3x3|+|none~0|none~1|+|none~0|none~1|none~2|", "must look like 'op~0'"),
    ("", "expected 3 blocks"),
])
def test_malformed_strings(bad, fragment):
    with pytest.raises(nb201.ArchError, match=None) as e:
        nb201.parse(bad)
    assert fragment in str(e.value)
    with pytest.raises(nb201.ArchError):
        nb201.NB201Net(bad).init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))


def test_index_errors():
    with pytest.raises(IndexError, match="0..15624"):
        nb201.arch_at(15625)
    with pytest.raises(nb201.ArchError):
        nb201.format_arch(["none"] * 5)


def test_table_equals_benchmark_and_classes(nats):
    assert [r["ArchitectureString"] for r in nats] == list(nb201.all_archs())
    ours = [nb201.canonical(r["ArchitectureString"]) for r in nats]
    theirs = [r["UniqueString"] for r in nats]
    assert len(set(ours)) == len(set(theirs)) == 6466
    # the same partition: each of our classes maps to one of theirs and back
    assert len(set(zip(ours, theirs))) == 6466


def test_canonical_examples():
    """Unique strings of NATS-Bench (nats_bench.csv rows 0 and 1) and two hand-checked cases."""
    assert nb201.canonical(nb201.arch_at(0)) == (
        "(0)@avg_pool_3x3+(0)@avg_pool_3x3+(0)@nor_conv_1x1+(0)@nor_conv_1x1")
    assert nb201.canonical(nb201.arch_at(1)) == (
        "((0)@nor_conv_3x3)@avg_pool_3x3+(0)@nor_conv_3x3+((0)@nor_conv_3x3)@nor_conv_3x3+0")
    assert nb201.canonical(ALL_NONE) == "#+#+#"
    skips = "|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
    assert nb201.canonical(skips) == "#+#+#+0"  # a skip inserts its source as one item


def test_sample():
    k = jax.random.key(3)
    assert nb201.sample(k, 50) == nb201.sample(k, 50)
    assert nb201.sample(k, 50) != nb201.sample(jax.random.key(4), 50)
    assert len(set(nb201.sample(k, 500))) == 500
    assert len(nb201.sample(k, 5, replace=True)) == 5
    with pytest.raises(ValueError, match="without replacement"):
        nb201.sample(k, nb201.NUM_ARCHS + 1)


def test_param_counts_equal_the_benchmark():
    pd = pytest.importorskip("pandas")
    path = DATA / "nas-without-training" / "results" / "arch_score_acc.pd"
    if not path.exists():
        pytest.skip("../shared/data is not available")
    table = pd.read_pickle(path)
    rng = np.random.default_rng(0)
    idx = sorted({nb201.index_of(ALL_NONE), nb201.index_of(ALL_CONV), nb201.index_of(BEST),
                  *rng.choice(nb201.NUM_ARCHS, 30, replace=False).tolist()})
    for i in idx:
        shapes = nb201.param_shapes(nb201.NB201Net(nb201.arch_at(i), preset="nb201"))
        assert table.cellstr[i] == nb201.arch_at(i)
        assert nb201.count_params(shapes) == round(table.params[i] * 1e6), nb201.arch_at(i)


def test_presets_differ_only_in_cell_conv_bias_and_bn_affine():
    hnas = nb201.param_shapes(nb201.NB201Net(ALL_CONV, preset="hnas", N=1))
    bench = nb201.param_shapes(nb201.NB201Net(ALL_CONV, preset="nb201", N=1))
    assert set(hnas["cell1_0"]["edge_1_0"]) == {"conv"}
    assert set(hnas["cell1_0"]["edge_1_0"]["conv"]) == {"kernel", "bias"}
    assert set(bench["cell1_0"]["edge_1_0"]) == {"conv", "BatchNorm_0"}
    with pytest.raises(ValueError, match="preset"):
        nb201.param_shapes(nb201.NB201Net(ALL_CONV, preset="foresight"))


def test_network_runs_and_is_deterministic():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    for arch in (BEST, ALL_NONE):
        for bn in ("train", "eval", "none"):
            net = from_flax(nb201.NB201Net(arch, C=4, N=1), bn=bn)
            p = net.init(jax.random.key(1), x)
            out = net.apply(p, x)
            assert out.shape == (4, 10) and bool(jnp.all(jnp.isfinite(out)))
            np.testing.assert_array_equal(out, net.apply(net.init(jax.random.key(1), x), x))
    # the all-none cell ignores its input: the logits are the same for every image
    net = from_flax(nb201.NB201Net(ALL_NONE, C=4, N=1))
    out = net.apply(net.init(jax.random.key(1), x), x)
    np.testing.assert_allclose(out, jnp.broadcast_to(out[:1], out.shape), atol=1e-5)
    nobn = nb201.NB201Net(BEST, C=4, N=1, use_bn=False)
    assert "BatchNorm_0" not in nb201.param_shapes(nobn, 8)
