"""Uncertainty for ranking accuracies.

Pairs that share an instruction are not independent (one easy instruction wins all its k
pairs), so the bootstrap resamples *instructions* and recomputes accuracy over all their pairs
(a cluster bootstrap); the interval is the percentile 2.5-97.5%.
"""

from __future__ import annotations

import numpy as np


def accuracy_with_ci(wins: np.ndarray, valid: np.ndarray | None = None, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """``wins`` (instructions, negatives) bool; ``valid`` masks absent pairs. Returns accuracy and 95% CI."""
    wins = np.asarray(wins, dtype=bool)
    valid = np.ones_like(wins) if valid is None else np.asarray(valid, dtype=bool)
    w = (wins & valid).sum(axis=1).astype(np.float64)
    n = valid.sum(axis=1).astype(np.float64)
    if n.sum() == 0:
        raise ValueError("no pairs to score")
    acc = float(w.sum() / n.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(w), size=(n_boot, len(w)))
    boot = w[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return acc, (float(lo), float(hi))
