"""Uncertainty for ranking accuracies: the core's cluster bootstrap (instructions are the clusters).

Pairs that share an instruction are not independent (one easy instruction wins all its k
pairs), so the bootstrap resamples *instructions* and recomputes accuracy over all their pairs;
see :mod:`implicit_it.stats`.
"""

from implicit_it.stats import accuracy_with_ci

__all__ = ["accuracy_with_ci"]
