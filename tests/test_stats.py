"""experiments/stats.py: the paired tests every study reports (issue 14).

Closed forms first (a McNemar table whose exact p is a ratio of integers), then scipy.stats as the
independent implementation of the binomial test, the Student-t quantiles and the paired / Welch
t-tests, and a simulation for the power formula.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments import stats  # noqa: E402


def _pair(b: int, c: int, both: int = 0, neither: int = 0, seed: int = 0):
    """Per-example correctness arrays with b images right only under A, c only under B."""
    a = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    bb = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    perm = np.random.default_rng(seed).permutation(a.size)
    return a[perm], bb[perm]


def test_mcnemar_exact_closed_form():
    # b = 1, c = 9: p = 2 (C(10,0) + C(10,1)) / 2^10 = 22 / 1024.
    a, b = _pair(1, 9, both=40, neither=50)
    r = stats.mcnemar(a, b)
    assert (r["b"], r["c"], r["n"]) == (1, 9, 100)
    assert r["p"] == 22 / 1024
    assert r["difference"] == pytest.approx((1 - 9) / 100)
    assert r["accuracy_a"] == pytest.approx(0.41) and r["accuracy_b"] == pytest.approx(0.49)
    # Swapping A and B swaps b and c, not p; no discordant pair gives p = 1.
    assert stats.mcnemar(b, a)["p"] == r["p"] and stats.mcnemar(b, a)["b"] == 9
    assert stats.mcnemar(a, a)["p"] == 1.0
    # 0/1 integers are accepted as booleans.
    assert stats.mcnemar(a.astype(int), b.astype(np.int8))["p"] == r["p"]


def test_mcnemar_matches_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(0, 5), (2, 16), (14, 2), (7, 7), (8, 9), (30, 55), (130, 7), (480, 560),
                 (4000, 4100)]:
        a, bb = _pair(b, c, both=100, neither=100)
        want = scipy_stats.binomtest(b, b + c, 0.5).pvalue
        assert stats.mcnemar(a, bb)["p"] == pytest.approx(want, rel=1e-9, abs=1e-300), (b, c)


def test_mcnemar_many_discordant_pairs_uses_the_continuity_corrected_chi_square():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = _pair(25_000, 26_000)
    r = stats.mcnemar(a, b)
    want = scipy_stats.chi2.sf((abs(25_000 - 26_000) - 1) ** 2 / 51_000, 1)
    assert r["method"].startswith("chi-square") and r["p"] == pytest.approx(want, rel=1e-9)
    assert r["p"] == pytest.approx(scipy_stats.binomtest(25_000, 51_000).pvalue, rel=2e-2)


def test_mcnemar_rejects_unpaired_or_non_boolean_input():
    a, b = _pair(3, 4)
    with pytest.raises(ValueError, match="correct_a and correct_b"):
        stats.mcnemar(a, b[:-1])
    with pytest.raises(ValueError, match="correct_b must be boolean"):
        stats.mcnemar(a, b * 0.5)
    with pytest.raises(ValueError, match="correct_a must be a 1-D"):
        stats.mcnemar(a.reshape(1, -1), b)


def test_student_t_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 2.7, 4, 9, 29, 250):
        assert stats.t_ppf(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)
        assert stats.t_ppf(0.1, df) == pytest.approx(scipy_stats.t.ppf(0.1, df), rel=1e-10)
        for t in (-3.0, -0.4, 0.0, 1.3, 8.0):
            assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)


def test_seed_difference_paired_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = {0: 0.612, 1: 0.598, 2: 0.631, 3: 0.605}
    b = {3: 0.590, 0: 0.589, 2: 0.611, 1: 0.600}  # same seeds, another order: paired by seed
    r = stats.seed_difference(a, b)
    d = np.array([a[s] - b[s] for s in range(4)])
    assert r["paired"] and r["mean"] == pytest.approx(d.mean())
    lo, hi = scipy_stats.t.interval(0.95, 3, loc=d.mean(), scale=scipy_stats.sem(d))
    assert r["ci95"] == pytest.approx((lo, hi), rel=1e-9)
    want = scipy_stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)])
    assert r["t"] == pytest.approx(want.statistic) and r["p"] == pytest.approx(want.pvalue)
    # Sequences are seeds 0, 1, ...: the same test.
    seq = stats.seed_difference([a[s] for s in range(4)], [b[s] for s in range(4)])
    assert seq["ci95"] == pytest.approx(r["ci95"])


def test_seed_difference_welch_when_seeds_differ():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = {0: 0.61, 1: 0.60, 2: 0.64}
    b = {3: 0.58, 4: 0.59, 5: 0.57, 6: 0.60}
    r = stats.seed_difference(a, b)
    want = scipy_stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert not r["paired"]
    assert r["t"] == pytest.approx(want.statistic) and r["p"] == pytest.approx(want.pvalue)
    half = scipy_stats.t.ppf(0.975, r["df"]) * r["se"]
    assert r["ci95"] == pytest.approx((r["mean"] - half, r["mean"] + half))
    with pytest.raises(ValueError, match="paired=True needs the same seeds"):
        stats.seed_difference(a, b, paired=True)


def test_seed_difference_degenerate_cases_say_so():
    one = stats.seed_difference([0.7], [0.6])
    assert one["mean"] == pytest.approx(0.1) and all(math.isnan(v) for v in one["ci95"])
    assert "one seed" in one["note"]
    flat = stats.seed_difference([0.7, 0.8], [0.6, 0.7])
    assert flat["ci95"] == pytest.approx((0.1, 0.1)) and math.isnan(flat["p"])
    assert "zero spread" in flat["note"]
    with pytest.raises(ValueError, match="values_b is empty"):
        stats.seed_difference([0.5], [])


def test_detectable_difference_has_the_stated_power():
    """Simulated McNemar tests at the returned difference reject about `power` of the time."""
    n, psi = 2000, 0.08
    delta = stats.detectable_difference(n, psi)
    assert 0 < delta < psi
    rng = np.random.default_rng(0)
    p_b, p_c = (psi + delta) / 2, (psi - delta) / 2
    rejections = 0
    trials = 400
    for _ in range(trials):
        b, c, rest = rng.multinomial(n, [p_b, p_c, 1 - psi])
        rejections += stats.mcnemar(*_pair(int(b), int(c), both=int(rest)))["p"] < 0.05
    assert abs(rejections / trials - 0.8) < 0.07
    # More images resolve smaller differences; higher power needs larger ones.
    assert stats.detectable_difference(8000, psi) < delta / 1.8
    assert stats.detectable_difference(n, psi, power=0.95) > delta
    # Undetectable settings say so instead of returning a number.
    assert math.isnan(stats.detectable_difference(10, 0.01))
    assert math.isnan(stats.detectable_difference(1000, 0.0))
    with pytest.raises(ValueError, match="p_discordant"):
        stats.detectable_difference(100, 1.5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        stats.detectable_difference(0, 0.1)


def test_compare_per_seed_pooled_and_table():
    rng = np.random.default_rng(1)
    truth = rng.random((3, 500))
    ca = {s: truth[s] < 0.62 for s in range(3)}
    cb = {s: truth[s] < 0.55 for s in range(3)}  # B is right on a subset of A's images
    row = stats.compare("A", "B", ca, cb)
    assert row["mcnemar_scope"].startswith("per seed (3 seeds)")
    assert set(row["mcnemar"]) == {0, 1, 2}
    for s in range(3):
        assert row["mcnemar"][s]["c"] == 0 and row["mcnemar"][s]["b"] == int((ca[s] & ~cb[s]).sum())
    assert row["seeds"]["paired"] and row["seeds"]["mean"] > 0
    assert row["accuracy_a"] == pytest.approx(np.mean([v.mean() for v in ca.values()]))
    pooled = stats.compare("A", "B", ca, cb, pooled=True)
    assert list(pooled["mcnemar"]) == ["pooled"] and pooled["mcnemar"]["pooled"]["n"] == 1500
    assert "pooled over 3 seeds" in pooled["mcnemar_scope"]
    single = stats.compare("A", "B", ca[0], cb[0])
    assert single["mcnemar_scope"].startswith("one seed") and "one seed" in single["seeds"]["note"]
    text = stats.table([row, single])
    assert text.count("\n") == 4 and "per seed (3 seeds)" in text and "| A | B |" in text
    with pytest.raises(ValueError, match="share no seed"):
        stats.compare("A", "B", {0: ca[0]}, {1: cb[1]})
