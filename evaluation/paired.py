"""Paired tests on lm-evaluation-harness's per-sample logs (``lm_eval ... --log_samples``) of two systems.

lm-eval compares systems with unpaired standard errors; two systems run on the same documents are paired, and a paired
test is the one a reviewer accepts (lm-evaluation-harness #3831). For every metric both logs carry:

* a 0/1 metric per document (``prompt_level_strict_acc``, ``acc``, ``exact_match``): the exact McNemar test on the
  discordant documents and the interval of the difference that inverts it (:func:`implicit_it.stats.paired_comparison`);
* a list of 0/1 outcomes per document (IFEval's ``inst_level_*``: a document's instructions are not independent), or a
  real-valued metric: the pooled difference with a bootstrap CI over documents, and a two-sided sign-flip randomisation
  test of the per-document differences (10,000 seeded flips), both clustered by document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from implicit_it.errors import DataFormatError
from implicit_it.io import read_input_bytes
from implicit_it.stats import paired_comparison

SAMPLE_FIELDS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
}


@dataclass(frozen=True)
class SampleLog:
    """One system's per-document metric values from one lm-eval samples file, keyed by (filter, doc_id)."""

    path: Path
    values: dict[tuple[str, int], dict[str, Any]]
    doc_hashes: dict[tuple[str, int], str | None]


def read_sample_log(path: str | Path) -> SampleLog:
    """Read ``samples_<task>_<time>.jsonl``; a malformed line is one error naming the file and line."""
    path = Path(path)
    text = read_input_bytes(path).decode("utf-8")
    values: dict[tuple[str, int], dict[str, Any]] = {}
    hashes: dict[tuple[str, int], str | None] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("doc_id"), int):
            raise DataFormatError(path, lineno, "an lm-eval sample needs an integer 'doc_id' (is this a --log_samples file?)")
        metrics = rec.get("metrics") or [k for k in rec if k not in SAMPLE_FIELDS]
        key = (str(rec.get("filter", "none")), rec["doc_id"])
        if key in values:
            raise DataFormatError(path, lineno, f"doc_id {rec['doc_id']} (filter {key[0]}) appears twice")
        values[key] = {m: rec[m] for m in metrics if m in rec}
        hashes[key] = rec.get("doc_hash")
    if not values:
        raise DataFormatError(path, None, "no samples")
    return SampleLog(path, values, hashes)


def _outcomes(log: SampleLog, keys: Sequence[tuple[str, int]], metric: str) -> list[Any]:
    return [log.values[k].get(metric) for k in keys]


def _is_binary(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (bool, int, float)) and float(v) in (0.0, 1.0) for v in values)


def _is_binary_lists(values: Sequence[Any]) -> bool:
    return all(isinstance(v, list) and _is_binary(v) for v in values)


def sign_flip_p(differences: np.ndarray, *, n_flips: int = 10_000, seed: int = 0) -> float:
    """Two-sided randomisation p-value of the mean of paired differences (signs flipped at random, one per cluster)."""
    d = np.asarray(differences, dtype=np.float64)
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_flips, len(d)))
    extreme = (np.abs(signs @ d) >= observed - 1e-12).sum()
    return float((extreme + 1) / (n_flips + 1))


@dataclass
class PairedMetric:
    metric: str
    filter: str
    kind: str  # "binary" (McNemar) or "clustered" (sign-flip over documents)
    n_docs: int
    value_a: float
    value_b: float
    difference: float
    ci: tuple[float, float]
    p_value: float
    test: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "filter": self.filter,
            "kind": self.kind,
            "n_docs": self.n_docs,
            "value_a": self.value_a,
            "value_b": self.value_b,
            "difference": self.difference,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "p_value": self.p_value,
            "test": self.test,
            **self.extra,
        }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _clustered(
    a: Sequence[Any], b: Sequence[Any], *, n_boot: int, seed: int
) -> tuple[float, float, float, tuple[float, float], float] | None:
    """Pooled values of A and B, their difference, a bootstrap CI over documents and the sign-flip p-value (None: the
    metric is not a number or a list of 0/1 outcomes per document)."""
    if _is_binary_lists(a) and _is_binary_lists(b):
        sa = np.array([sum(map(float, v)) for v in a])
        sb = np.array([sum(map(float, v)) for v in b])
        n = np.array([len(v) for v in a], dtype=np.float64)
        if not np.array_equal(n, [len(v) for v in b]):
            raise DataFormatError("--log_samples", None, "the two logs list different numbers of outcomes for one document")
    elif all(map(_is_number, a)) and all(map(_is_number, b)):
        sa, sb = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
        n = np.ones_like(sa)
    else:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sa), size=(n_boot, len(sa)))
    boot = (sa[idx].sum(1) - sb[idx].sum(1)) / np.maximum(n[idx].sum(1), 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    va, vb = float(sa.sum() / n.sum()), float(sb.sum() / n.sum())
    return va, vb, va - vb, (float(lo), float(hi)), sign_flip_p(sa - sb, seed=seed)


def paired_tests(
    a: SampleLog, b: SampleLog, *, metrics: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0
) -> list[PairedMetric]:
    """Every metric both logs carry (or ``metrics``), on the documents both logged, tested paired."""
    shared = sorted(set(a.values) & set(b.values))
    if not shared:
        raise DataFormatError(b.path, None, f"shares no (filter, doc_id) with {a.path}: are they the same task?")
    for k in shared:
        if a.doc_hashes[k] and b.doc_hashes[k] and a.doc_hashes[k] != b.doc_hashes[k]:
            raise DataFormatError(
                b.path, None, f"doc_id {k[1]} is another document than in {a.path} (doc_hash differs): not the same task data"
            )
    out = []
    for filt in sorted({k[0] for k in shared}):
        keys = [k for k in shared if k[0] == filt]
        names = sorted(set.intersection(*(set(a.values[k]) & set(b.values[k]) for k in keys)))
        if metrics:
            missing = [m for m in metrics if m not in names]
            if missing:
                raise DataFormatError(b.path, None, f"metric(s) {missing} not in both logs; they share {names}")
            names = list(metrics)
        for m in names:
            va, vb = _outcomes(a, keys, m), _outcomes(b, keys, m)
            if _is_binary(va) and _is_binary(vb):
                c = paired_comparison(np.array(va, dtype=float) > 0.5, np.array(vb, dtype=float) > 0.5)
                out.append(
                    PairedMetric(
                        m,
                        filt,
                        "binary",
                        len(keys),
                        c.accuracy_a,
                        c.accuracy_b,
                        c.difference,
                        c.ci,
                        c.p_value,
                        "exact McNemar (two-sided); its inverted interval (Clopper–Pearson on the discordant documents)",
                        {"a_only": c.a_only, "b_only": c.b_only},
                    )
                )
            else:
                r = _clustered(va, vb, n_boot=n_boot, seed=seed)
                if r is None:
                    continue  # not a number per document (a string metric): nothing to test
                out.append(
                    PairedMetric(
                        m,
                        filt,
                        "clustered",
                        len(keys),
                        *r,
                        "sign-flip randomisation over documents (10,000 flips); bootstrap CI over documents",
                    )
                )
    return out
