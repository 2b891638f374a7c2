"""The exact tests and intervals the findings use: sign test, Clopper–Pearson, power, Holm — against direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from implicit_it.stats import (
    clopper_pearson,
    cluster_ratio_with_ci,
    fisher_exact,
    holm,
    mcnemar_exact,
    paired_comparison,
    pairs_for_power,
    sign_test,
    sign_test_power,
)


def brute_sign_test(w: int, l: int) -> float:
    n = w + l
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(w, l) + 1)) / 2**n)


@pytest.mark.parametrize("w,l", [(0, 0), (3, 0), (7, 3), (30, 12), (50, 50), (1, 19)])
def test_sign_test_is_the_exact_binomial_and_mcnemars(w, l):
    assert sign_test(w, l) == pytest.approx(1.0 if w + l == 0 else brute_sign_test(w, l), rel=1e-9)
    a = np.array([True] * w + [False] * l, dtype=bool)
    assert sign_test(w, l) == pytest.approx(mcnemar_exact(a, ~a), rel=1e-9)


@pytest.mark.parametrize("n", [5, 12, 40, 101])
def test_clopper_pearson_excludes_one_half_exactly_when_the_sign_test_rejects(n):
    for k in range(n + 1):
        lo, hi = clopper_pearson(k, n)
        assert 0 <= lo <= k / n <= hi <= 1
        assert (not lo <= 0.5 <= hi) == (sign_test(k, n - k) < 0.05), (k, n)


@pytest.mark.parametrize("n", [8, 30, 97])
def test_the_paired_interval_excludes_zero_exactly_when_mcnemar_rejects(n):
    """The interval of a paired difference inverts the exact test (a bootstrap interval could exclude 0 at p > 0.05)."""
    rng = np.random.default_rng(n)
    for _ in range(60):
        a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        c = paired_comparison(a, b)
        assert c.ci[0] <= c.difference <= c.ci[1]
        assert (not c.ci[0] <= 0 <= c.ci[1]) == (c.p_value < 0.05), (a, b)
        assert c.difference == pytest.approx(a.mean() - b.mean())


def test_fisher_exact_against_a_hand_computation():
    # 3/3 vs 0/3: one table at least as extreme each way; p = 2 / C(6, 3)
    assert fisher_exact(3, 3, 0, 3) == pytest.approx(2 / 20)
    assert fisher_exact(5, 10, 5, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fisher_exact(4, 3, 0, 3)


def test_power_is_the_probability_of_rejection_by_simulation():
    rng = np.random.default_rng(0)
    n, rate = 60, 0.7
    wins = rng.binomial(n, rate, 20000)
    simulated = np.mean([sign_test(int(k), n - int(k)) < 0.05 for k in wins])
    assert sign_test_power(n, rate) == pytest.approx(simulated, abs=0.01)
    assert sign_test_power(5, 0.9) == 0.0  # 5 pairs can never reject at 0.05 (2 / 32 > 0.05)
    n80 = pairs_for_power(0.7)
    assert sign_test_power(n80, 0.7) >= 0.8 and sign_test_power(n80 - 1, 0.7) < 0.8 or n80 > 64
    assert pairs_for_power(0.5) is None


def test_holm_adjusts_step_down_and_keeps_order():
    raw = [0.01, 0.04, 0.03, 0.5]
    assert holm(raw) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert all(a >= r for a, r in zip(holm(raw), raw, strict=True))


def test_cluster_ratio_counts_fractional_outcomes():
    value, (lo, hi) = cluster_ratio_with_ci(np.array([1.5, 0.0, 2.0]), np.array([2, 1, 2]))
    assert value == pytest.approx(3.5 / 5) and lo <= value <= hi
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        cluster_ratio_with_ci(np.array([1.0]), np.array([1, 2]))


def test_cluster_ratio_takes_weights_below_one_as_counts():
    """Counts may be real weights (a text's summed KL): a ratio of small sums is not clipped at a count of 1."""
    rng = np.random.default_rng(0)
    counts = rng.uniform(1e-4, 1e-3, size=40)
    sums = counts * rng.uniform(0.2, 0.4, size=40)
    value, (lo, hi) = cluster_ratio_with_ci(sums, counts)
    assert value == pytest.approx(sums.sum() / counts.sum()) and 0.2 < lo <= value <= hi < 0.4
    scaled, (slo, shi) = cluster_ratio_with_ci(sums * 1e6, counts * 1e6)
    assert (scaled, slo, shi) == pytest.approx((value, lo, hi))
