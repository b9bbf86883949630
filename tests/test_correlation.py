"""jhnas.experiments.correlation against explicit loops."""
import itertools

import numpy as np
import pytest

from jhnas.experiments import correlation


def _ranks(a):
    return np.argsort(np.argsort(a)).astype(float)  # no ties in the data below


def test_agreement_equals_explicit_formulas():
    rng = np.random.default_rng(0)
    acc = rng.normal(size=200)
    score = acc + rng.normal(size=200)
    score[[3, 17]] = np.nan
    r = correlation.agreement(score, acc, quantiles=(0.05, 0.1))
    ok = np.isfinite(score)
    s, a = score[ok], acc[ok]
    assert r["n"] == 198
    np.testing.assert_allclose(r["spearman"], np.corrcoef(_ranks(s), _ranks(a))[0, 1], rtol=1e-12)
    pairs = list(itertools.combinations(range(len(a)), 2))
    conc = sum(np.sign(s[i] - s[j]) * np.sign(a[i] - a[j]) for i, j in pairs)
    np.testing.assert_allclose(r["kendall"], conc / len(pairs), rtol=1e-12)
    for q in (0.05, 0.1):
        k = round(q * 198)
        hits = len(set(np.argsort(-s)[:k]) & set(np.argsort(-a)[:k]))
        assert r[f"top{q * 100:g}%"] == hits / k
    # smaller-is-better negates only the hit rates
    neg = correlation.agreement(-score, acc, smaller_is_better=True, quantiles=(0.05,))
    assert neg["top5%"] == r["top5%"]
    assert neg["spearman"] == pytest.approx(-r["spearman"])


def test_table_and_matrix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    vals = {"ntk_trace": x, "ntk_cond": -2 * x}
    tab = correlation.agreement_table(vals, {"acc": x})
    assert tab["ntk_trace"]["acc"]["spearman"] == pytest.approx(1.0)
    assert tab["ntk_cond"]["acc"]["top1%"] == 1.0  # negated before ranking
    m = correlation.rank_matrix(vals)
    assert m["ntk_trace"]["ntk_trace"] == pytest.approx(1.0)
    assert m["ntk_trace"]["ntk_cond"] == m["ntk_cond"]["ntk_trace"] == pytest.approx(-1.0)
