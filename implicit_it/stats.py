"""Uncertainty and paired tests for accuracies that every room reports.

Items that share a cluster are not independent (one easy instruction wins all its ranking
pairs; one IFEval prompt carries up to three instructions), so intervals come from a cluster
bootstrap: resample clusters, recompute accuracy over all their items, take the percentile
2.5–97.5%. Two systems scored on the same prompts are compared *paired*: an exact McNemar test
on the discordant prompts, and a paired bootstrap interval of the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def accuracy_with_ci(
    wins: np.ndarray, valid: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """``wins`` (clusters, items) bool; ``valid`` masks absent items. Returns accuracy and its 95% CI."""
    wins = np.asarray(wins, dtype=bool)
    if wins.ndim == 1:
        wins = wins[:, None]
    valid = np.ones_like(wins) if valid is None else np.asarray(valid, dtype=bool).reshape(wins.shape)
    return cluster_ratio_with_ci((wins & valid).sum(axis=1), valid.sum(axis=1), n_boot=n_boot, seed=seed)


def cluster_ratio_with_ci(sums: np.ndarray, counts: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Σ sums / Σ counts over clusters (per cluster: the summed outcome of its items and how many items it has; an
    outcome may be fractional, e.g. a tie counted as half; a count may be any non-negative weight, e.g. a text's summed
    KL) and its cluster-bootstrap percentile 95% CI (a resample whose counts sum to 0 has no ratio and is left out)."""
    w = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if w.shape != n.shape or w.ndim != 1:
        raise ValueError(f"sums and counts need equal 1-D shapes, got {w.shape} and {n.shape}")
    if n.sum() == 0:
        raise ValueError("no items to score")
    value = float(w.sum() / n.sum())
    idx = np.random.default_rng(seed).integers(0, len(w), size=(n_boot, len(w)))
    totals = n[idx].sum(axis=1)
    boot = w[idx].sum(axis=1)[totals > 0] / totals[totals > 0]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return value, (float(lo), float(hi))


def mean_with_ci(values: np.ndarray | list[float], *, n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean and percentile-bootstrap 95% CI of independent real values (one per item; accuracies: :func:`accuracy_with_ci`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to average")
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(values.mean()), (float(lo), float(hi))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: :func:`sign_test` on the discordant pairs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need equal shapes, got {a.shape} and {b.shape}")
    return sign_test(int((a & ~b).sum()), int((~a & b).sum()))


@dataclass(frozen=True)
class PairedComparison:
    """System A against system B on the same prompts: accuracies, their difference with a paired
    bootstrap 95% CI, the discordant counts and the exact McNemar p-value (prompt-level)."""

    accuracy_a: float
    accuracy_b: float
    difference: float  # a - b
    ci: tuple[float, float]
    a_only: int  # prompts A passes and B fails
    b_only: int
    p_value: float
    n: int

    def to_json(self) -> dict:
        return {
            "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b,
            "difference": self.difference,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "a_only": self.a_only,
            "b_only": self.b_only,
            "p_value": self.p_value,
            "n": self.n,
            "test": "exact McNemar (two-sided); its inverted interval (Clopper–Pearson on the discordant prompts)",
        }


def paired_comparison(a: np.ndarray, b: np.ndarray) -> PairedComparison:
    """Compare two systems' per-prompt pass/fail outcomes (same prompts, same order): exact McNemar, and an interval of
    the difference that inverts it. Given the D discordant prompts, the difference is (D/n)·(2θ − 1) with θ the share of
    them A wins; the Clopper–Pearson interval of θ maps onto an interval of the difference that excludes 0 exactly when
    the test rejects, so the interval and the p-value never disagree (a bootstrap interval can)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired outcomes need two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    a_only, b_only, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
    discordant = a_only + b_only
    lo, hi = clopper_pearson(a_only, discordant) if discordant else (0.5, 0.5)
    scale = discordant / n
    return PairedComparison(
        float(a.mean()),
        float(b.mean()),
        (a_only - b_only) / n,
        (scale * (2 * lo - 1), scale * (2 * hi - 1)),
        a_only,
        b_only,
        sign_test(a_only, b_only),
        n,
    )


def wilson_interval(k: int, n: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ``k / n``: unlike the normal interval it stays inside [0, 1]
    and does not collapse to a point at 0% or 100%, which small suites (13 prompts) hit often."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))  # exact at the ends


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties left out): twice the smaller binomial tail at 1/2,
    capped at 1 (McNemar's exact test is this test on the discordant pairs)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be ≥ 0, got {wins} and {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(min(wins, losses), n, 0.5)))


def clopper_pearson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a binomial proportion: it inverts the exact binomial test, so it excludes 1/2
    exactly when :func:`sign_test` rejects at 1 − ``level`` (the interval and the test never disagree)."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def sign_test_power(n: int, rate: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided exact sign test on ``n`` decided pairs when the true win rate among them is ``rate``: the
    probability of a win count in the test's rejection region (``k ≤ c`` or ``k ≥ n − c``, the region being symmetric)."""
    from scipy.stats import binom

    if n <= 0:
        return 0.0
    c = int(binom.ppf(alpha / 2, n, 0.5))
    while c >= 0 and sign_test(c, n - c) >= alpha:
        c -= 1
    if c < 0:
        return 0.0  # too few pairs: no outcome rejects
    return float(binom.cdf(c, n, rate) + binom.sf(n - c - 1, n, rate))


def pairs_for_power(rate: float, *, power: float = 0.8, alpha: float = 0.05, limit: int = 100_000) -> int | None:
    """The fewest decided pairs at which the exact sign test reaches ``power`` against a true win rate ``rate`` (None when
    ``rate`` is 1/2, or beyond ``limit``)."""
    if rate == 0.5:
        return None
    n = 1
    while n <= limit:
        if sign_test_power(n, rate, alpha=alpha) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.05) + 1
    return None


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher's exact p-value of two independent proportions ``k1 / n1`` and ``k2 / n2`` (e.g. two models'
    instruction-like shares among their own samples)."""
    from scipy.stats import fisher_exact as _fisher

    for k, n in ((k1, n1), (k2, n2)):
        if n <= 0 or not 0 <= k <= n:
            raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return float(_fisher([[k1, n1 - k1], [k2, n2 - k2]])[1])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given; each adjusted p ≥ its raw p)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
