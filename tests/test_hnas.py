"""jhnas.hnas and jhnas.baselines on a synthetic problem, and the tabular NB201 problem."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jhnas import baselines, cli, hnas
from jhnas.spaces import nb201
from jhnas.experiments import problems, runners

N = 500


def synthetic(seed: int = 0, unscorable: int = 50) -> hnas.Problem:
    rng = np.random.default_rng(seed)
    metric = rng.uniform(1.0, 100.0, N)
    kappa = rng.uniform(1.0, 1e3, N)
    metric[:unscorable] = np.nan  # e.g. not yet scored
    acc = 50 + 0.3 * metric - 0.01 * kappa + rng.normal(0, 1, N)
    acc[:unscorable] = rng.uniform(0, 100, unscorable)
    calls = []

    def signal(key, i):
        calls.append(i)
        return float(acc[i]), 10.0 + i

    p = hnas.Problem(metric, kappa, signal, lambda i: {"index": int(i), "acc": float(acc[i])})
    return p


def test_objective_formula():
    m, k = np.array([1.0, 10.0, 50.0]), np.array([5.0, 20.0, 2.0])
    got = hnas.objective(m, k, t=0.5, c=-1.0, s=40.0)
    want = 0.1 * np.abs(m ** 2 - 400.0) + k / (m + 1e-6)
    np.testing.assert_allclose(got, want)
    # log scale: sqrt(nu) = s**t = 40**0.5
    got = hnas.objective(m, k, t=0.5, c=-1.0, s=40.0, nu_scale="log")
    np.testing.assert_allclose(got, 0.1 * np.abs(m ** 2 - 40.0) + k / (m + 1e-6))
    with pytest.raises(ValueError, match="nu_scale"):
        hnas.objective(m, k, 0.5, -1.0, 40.0, "sqrt")


def test_positive_metric():
    v = np.array([-3.0, 1.0, 7.0, np.nan])
    out = hnas.positive_metric(v)
    assert np.nanmin(out) > 0 and np.isnan(out[3])
    np.testing.assert_allclose(np.diff(out[:3]), np.diff(v[:3]))  # a shift keeps the order
    for pos in (np.array([0.5, 2.0]), np.array([0.0, 2.0])):  # zero: no shift (synflow)
        np.testing.assert_array_equal(hnas.positive_metric(pos), pos)


def test_pool_is_cumulative_deduplicated_and_excludes_evaluated_and_unscorable():
    p = synthetic()
    s = hnas.init(p)
    s1 = hnas.grow_pool(jax.random.key(0), s, p, 100)
    assert 0 < s1.pool.sum() <= 100 and not s1.pool[:50].any()
    s2 = hnas.evaluate(jax.random.key(1), s1, p, int(np.flatnonzero(s1.pool)[0]))
    s3 = hnas.grow_pool(jax.random.key(2), s2, p, 100)
    assert not s3.pool[s2.evaluated].any()
    assert (s3.pool[s1.pool & ~np.isin(np.arange(N), s2.evaluated)]).all()  # cumulative


def test_search_probes_then_optimises_and_is_reproducible():
    p = synthetic()
    cfg = hnas.Config(budget=7, s=100.0, pool_step=200, n_random=500)
    a = hnas.search(jax.random.key(0), p, cfg)
    b = hnas.search(jax.random.key(0), p, cfg)
    c = hnas.search(jax.random.key(1), p, cfg)
    assert a.history == b.history and np.array_equal(a.pool, b.pool)
    assert [r.t for r in a.history[:5]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(r.c == -2.0 for r in a.history[:5])
    for r in a.history[5:]:
        assert 0.0 <= r.t <= 1.0 and -4.0 <= r.c <= 0.0
    idx = a.evaluated
    assert len(set(idx.tolist())) == 7 and np.isfinite(p.metric[idx]).all()
    assert [r.index for r in a.history] != [r.index for r in c.history]
    assert a.best().signal == max(r.signal for r in a.history)
    assert a.cost == sum(10.0 + i for i in idx)


def test_log_scale_search_picks_the_log_scale_argmin():
    """Replaying the search: every evaluated architecture is the argmin of the log-scale
    objective over the pool as it was at that step."""
    p = synthetic()
    cfg = hnas.Config(budget=6, s=100.0, pool_step=100, n_random=500, nu_scale="log")
    key = jax.random.key(0)
    done = hnas.search(key, p, cfg)
    state, differs = hnas.init(p), 0
    for i, rec in enumerate(done.history):
        pool_key, _, _ = jax.random.split(jax.random.fold_in(key, i), 3)
        state = hnas.grow_pool(pool_key, state, p, cfg.pool_step)
        pool = np.flatnonzero(state.pool)
        f = hnas.objective(p.metric[pool], p.kappa[pool], rec.t, rec.c, cfg.s, "log")
        assert rec.index == pool[np.argmin(f)]
        differs += rec.index != hnas.select(state, p, rec.t, rec.c, cfg.s)  # linear scale
        state = hnas.evaluate(jax.random.key(0), state, p, rec.index, rec.t, rec.c)
    assert differs > 0  # the option changes the choices
    with pytest.raises(ValueError, match="s > 1"):
        hnas.search(key, p, cfg._replace(s=0.5))


def test_select_is_the_argmin_over_the_pool():
    p = synthetic()
    s = hnas.grow_pool(jax.random.key(0), hnas.init(p), p, 300)
    i = hnas.select(s, p, 0.3, -1.0, 100.0)
    pool = np.flatnonzero(s.pool)
    scores = hnas.objective(p.metric[pool], p.kappa[pool], 0.3, -1.0, 100.0)
    assert i == pool[np.argmin(scores)]



def ring(i):  # neighbours on the synthetic problem: a ring of N architectures
    return np.array([(i - 2) % N, (i - 1) % N, (i + 1) % N, (i + 2) % N])


def test_trust_region_searches_the_incumbents_neighbours_after_the_probes():
    p = synthetic()._replace(neighbours=ring)
    cfg = hnas.Config(budget=9, pool_step=100, trust_region=True, s=100.0, n_random=500)
    st = hnas.search(jax.random.key(0), p, cfg)
    assert len(set(st.evaluated.tolist())) == 9
    for k in range(len(cfg.init_t), 9):  # each local step picks the argmin among the neighbours
        before = hnas.State(st.pool, st.history[:k])
        best = before.best().index
        near = [j for j in ring(best) if p.scorable[j] and j not in before.evaluated.tolist()]
        rec = st.history[k]
        if near:
            assert rec.index in near
            f = hnas.objective(p.metric[near], p.kappa[near], rec.t, rec.c, cfg.s)
            assert rec.index == near[int(np.argmin(f))]
    probes = hnas.State(st.pool, st.history[:3])  # during the probes: the whole pool
    np.testing.assert_array_equal(hnas.candidates(probes, p, cfg), np.flatnonzero(st.pool))
    again = hnas.search(jax.random.key(0), p, cfg)
    assert [r.index for r in st.history] == [r.index for r in again.history]
    with pytest.raises(ValueError, match="neighbours"):
        hnas.search(jax.random.key(0), synthetic(), cfg)
    # every neighbour evaluated: back to the pool
    full = hnas.State(st.pool, st.history)
    p_all = p._replace(neighbours=lambda i: st.evaluated[:2])
    np.testing.assert_array_equal(hnas.candidates(full, p_all, cfg), np.flatnonzero(st.pool))

def test_baselines():
    p = synthetic()
    cfg = hnas.Config(budget=8, pool_step=50)
    rs = baselines.random_search(jax.random.key(0), p, cfg)
    assert len(set(rs.evaluated.tolist())) == 8
    mo = baselines.metric_order(jax.random.key(0), p, cfg)
    assert np.all(np.diff(p.metric[mo.evaluated]) <= 0)
    am = baselines.argmax_metric(jax.random.key(0), p, cfg)
    ak = baselines.argmin_kappa(jax.random.key(0), p, cfg)
    assert am.cost == 0.0 and ak.cost == 0.0
    assert p.metric[am.best().index] == np.nanmax(p.metric[am.pool])
    assert p.kappa[ak.best().index] == np.nanmin(p.kappa[ak.pool])

    def mutate(key, i):
        return int((i + 1 + jax.random.randint(key, (), 0, 5)) % N)

    rea = baselines.regularized_evolution(jax.random.key(0), p, cfg, mutate=mutate)
    assert len(set(rea.evaluated.tolist())) == 8
    again = baselines.regularized_evolution(jax.random.key(0), p, cfg, mutate=mutate)
    assert [r.index for r in rea.history] == [r.index for r in again.history]


def test_nb201_mutate_changes_one_edge():
    for i in range(5):
        j = nb201.mutate(jax.random.key(i), 1234)
        a, b = nb201.parse(nb201.arch_at(1234)), nb201.parse(nb201.arch_at(j))
        assert sum(x != y for x, y in zip(a, b)) == 1


def test_nb201_problem_uses_the_shipped_tables():
    p = problems.nb201_problem("ntk_trace", "cifar100")
    bench, table = nb201.benchmark(), nb201.metric_table()
    value, cost = p.signal(jax.random.key(0), 6111)
    assert value == pytest.approx(float(bench.val12[6111, 1]))
    assert cost == pytest.approx(12 * float(bench.epoch_seconds[6111]))
    np.testing.assert_array_equal(p.kappa, table.values["ntk_cond"])
    np.testing.assert_array_equal(p.neighbours(6111), nb201.neighbours(6111))
    rep = p.report(6111)
    assert rep["test200_cifar10"] == pytest.approx(94.3733, abs=1e-3)
    with pytest.raises(ValueError, match="dataset"):
        problems.nb201_problem("ntk_trace", "mnist")
    with pytest.raises(ValueError, match="not in the metric table"):
        problems.nb201_problem("no_such_metric")


@pytest.mark.smoke
def test_cli_search_writes_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["search", "--method", "random", "--budget", "5", "--seeds", "2",
                     "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 2 and res["protocol"]["method"] == "random"
    for run in res["runs"]:
        assert set(run) >= {"arch", "val12_cifar10", "test200_cifar10", "test200_cifar100",
                            "test200_ImageNet16-120", "cost", "seed"}
        assert len(run["history"]) == 5
    assert res["mean"]["test200_cifar10"] == pytest.approx(
        np.mean([r["test200_cifar10"] for r in res["runs"]]))
    assert cli.main(["search", "--method", "hnas", "--nu-scale", "log", "--budget", "6",
                     "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"]["config"]["nu_scale"] == "log"
    assert len(res["runs"][0]["history"]) == 6
    assert cli.main(["search", "--metric", "synflow", "--trust-region", "--budget", "7",
                     "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    hist = json.loads(out.read_text())["runs"][0]["history"]
    best = max(hist[:5], key=lambda h: h["signal"])["index"]
    assert hist[5]["index"] in nb201.neighbours(best)
    assert cli.main(["search", "--method", "random", "--trust-region", "--out", str(out)]) == 2
    assert cli.main(["search", "--budget", "0", "--out", str(out)]) == 2
    assert cli.main(["search", "--out", str(tmp_path / "no" / "r.json")]) == 2
    assert "error" in capsys.readouterr().err


def test_nb201_search_is_identical_when_repeated_on_one_machine():
    """What must not move on one machine and jax version (issue 34: the README's numbers move
    between CPUs and jax versions, bench/results/search_spread.md): every evaluated
    architecture, signal and (t, c) of a repeated search; and the five probes (fixed t, no GP)
    replayed one step at a time."""
    runs = [runners.run_nb201("hnas", "ntk_trace", budget=7, seeds=[3, 8]) for _ in range(2)]
    assert runs[0]["runs"] == runs[1]["runs"]
    problem = problems.nb201_problem("ntk_trace")
    for run, seed in zip(runs[0]["runs"], (3, 8)):
        state = hnas.init(problem)
        key = jax.random.key(seed)
        for i, (t, rec) in enumerate(zip((0.0, 0.25, 0.5, 0.75, 1.0), run["history"])):
            assert (rec["t"], rec["c"]) == (t, -2.0)
            state = hnas.step(jax.random.fold_in(key, i), state, problem, hnas.Config(budget=7))
            assert state.history[-1].index == rec["index"]
