"""Every percentage with its 95% CI, and paired tests that tell real differences from noise.

The stages store the raw material (counts, per-prompt outcomes); the intervals and tests here are
cheap functions of it, computed when the report is drawn:

* IFEval: the step's own CI for one seed (Wilson at prompt level, cluster bootstrap at instruction
  level); with several seeds, mean ± std over seeds plus a CI pooled over them (each prompt one cluster holding its outcomes in every seed);
* the IF suite, EOS and template-echo rates: a Wilson interval of the count (pooled over seeds);
* AlpacaEval win rates: ± 1.96 standard errors (alpaca_eval's), of the mean over seeds;
* paired tests: two systems on the same IFEval prompts (seed s against seed s; a seedless system
  against every seed of the other, each pair of seeds its own test), exact McNemar p and the interval of the difference
  that inverts it (:func:`implicit_it.stats.paired_comparison`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from implicit_it.stats import accuracy_with_ci, paired_comparison, wilson_interval

from .collect import RunData, StepRecord, finite, mean_std

Z95 = 1.959963984540054
IFEVAL_METRICS = {"prompt_strict": "strict", "prompt_loose": "loose", "instruction_loose": "instruction_loose"}


def interval(lo: float, hi: float, *, scale: float = 100.0, digits: int = 1) -> str:
    return f"[{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def binomial_cell(records: list[StepRecord], key: str, n_key: str = "n") -> str:
    """A rate stored as a fraction of ``n``: mean ± std over seeds (or the value) and the Wilson 95% CI of the pooled count."""
    pairs = [(r.summary.get(key), r.summary.get(n_key)) for r in records]
    pairs = [(float(v), int(n)) for v, n in pairs if finite([v]) and isinstance(n, int) and n > 0]
    if not pairs:
        return "–"
    k, n = sum(round(v * n) for v, n in pairs), sum(n for _, n in pairs)
    return f"{mean_std([v for v, _ in pairs], scale=100)} {interval(*wilson_interval(k, n))}"


def share_cell(share: Any, n: Any) -> str:
    """One stored fraction of ``n`` items with its Wilson 95% CI (``–`` when undefined)."""
    if not finite([share]) or not isinstance(n, int) or n <= 0:
        return "–"
    return f"{share * 100:.1f} {interval(*wilson_interval(round(share * n), n))}"


def normal_cell(records: list[StepRecord], key: str, se_key: str) -> str:
    """A percentage with a standard error (AlpacaEval): mean ± std over seeds and mean ± 1.96 SE of that mean."""
    pairs = [(r.summary.get(key), r.summary.get(se_key)) for r in records]
    values = finite(v for v, _ in pairs)
    if not values:
        return "–"
    ses = finite(se for v, se in pairs if finite([v]))
    if len(ses) != len(values):
        return mean_std(values)
    mean, half = sum(values) / len(values), Z95 * math.sqrt(sum(se * se for se in ses)) / len(values)
    return f"{mean_std(values)} {interval(mean - half, mean + half, scale=1)}"


# -- IFEval ----------------------------------------------------------------------------------


def ifeval_outcomes(run: RunData) -> dict[str, dict[int | None, dict[int, dict[str, Any]]]]:
    """label -> seed (None: seedless) -> prompt key -> per-prompt row of ``ifeval.json``."""
    out: dict[str, dict[int | None, dict[int, dict[str, Any]]]] = {}
    for label, recs in run.by_label("eval", set_name="ifeval").items():
        for r in recs:
            rows = [row for entry in r.results("ifeval.json") for row in entry.get("per_prompt") or []]
            if rows:
                out.setdefault(label, {})[r.meta.get("seed")] = {row["key"]: row for row in rows}
    return out


def _pooled(by_seed: dict[int | None, dict[int, dict[str, Any]]], metric: str) -> tuple[float, tuple[float, float]]:
    """Accuracy and CI over every seed's outcomes, one cluster per prompt (its outcomes in all seeds)."""
    keys = sorted(set.intersection(*(set(rows) for rows in by_seed.values())))
    if metric == "instruction_loose":
        blocks = [[row[k]["instruction_loose"] for row in by_seed.values()] for k in keys]
        width = max(sum(len(x) for x in b) for b in blocks)
        wins, valid = np.zeros((len(keys), width), bool), np.zeros((len(keys), width), bool)
        for i, b in enumerate(blocks):
            flat = [bool(x) for seed_row in b for x in seed_row]
            wins[i, : len(flat)], valid[i, : len(flat)] = flat, True
        return accuracy_with_ci(wins, valid)
    return accuracy_with_ci(np.array([[bool(rows[k][metric]) for rows in by_seed.values()] for k in keys]))


def ifeval_cells(records: list[StepRecord], by_seed: dict[int | None, dict[int, dict[str, Any]]] | None) -> list[str]:
    """Prompt strict, prompt loose, instruction loose: ``xx.x [lo, hi]`` (one seed: the step's own CI) or
    ``mean ± std [lo, hi]`` (several: the CI pooled over seeds)."""
    cells = []
    for metric, field in IFEVAL_METRICS.items():
        stored = [r.summary.get(metric) or {} for r in records]
        values = finite(s.get("accuracy") for s in stored)
        if not values:
            cells.append("–")
        elif len(records) == 1:
            cells.append(f"{values[0] * 100:.1f} {interval(stored[0]['ci_low'], stored[0]['ci_high'])}")
        elif by_seed and len(by_seed) == len(records):
            cells.append(f"{mean_std(values, scale=100)} {interval(*_pooled(by_seed, field)[1])}")
        else:
            cells.append(mean_std(values, scale=100))
    return cells


def _pairs(
    a: dict[int | None, dict[int, Any]], b: dict[int | None, dict[int, Any]]
) -> list[tuple[int | None, int | None, dict[int, Any], dict[int, Any]]]:
    """(seed of a, seed of b, outcomes): seed s against seed s; a seedless side against every seed of the other."""
    if None in a or None in b:
        return [(sa, sb, ra, rb) for sa, ra in a.items() for sb, rb in b.items()]
    return [(s, s, a[s], b[s]) for s in sorted(set(a) & set(b))]


def paired_test(a: dict[int, Any], b: dict[int, Any], field: str) -> dict[str, Any] | None:
    """One seed of ``a`` against one seed of ``b`` on their shared prompts: :class:`PairedComparison` as JSON. Seeds are
    seeds: each pair of seeds is its own test, never pooled into more pairs."""
    keys = sorted(set(a) & set(b))
    xs, ys = [bool(a[k][field]) for k in keys], [bool(b[k][field]) for k in keys]
    return paired_comparison(np.array(xs), np.array(ys)).to_json() if xs else None


def p_text(p: float) -> str:
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return f"{text} *" if p < 0.05 else text


def paired_rows(outcomes: dict[str, dict[int | None, dict[int, Any]]], comparisons: Iterable[tuple[str, str]]) -> list[list[str]]:
    rows = []
    for a, b in comparisons:
        if a not in outcomes or b not in outcomes or a == b:
            continue
        for sa, sb, ra, rb in _pairs(outcomes[a], outcomes[b]):
            row = _paired_row(_seeded(a, sa, outcomes[a]), _seeded(b, sb, outcomes[b]), ra, rb)
            if row:
                rows.append(row)
    return rows


def _seeded(label: str, seed: int | None, by_seed: dict[int | None, Any]) -> str:
    return label if seed is None or len(by_seed) == 1 else f"{label}.s{seed}"


def _paired_row(a: str, b: str, ra: dict[int, Any], rb: dict[int, Any]) -> list[str] | None:
    loose, strict = paired_test(ra, rb, "loose"), paired_test(ra, rb, "strict")
    if loose is None or strict is None:
        return None

    def diff(t: dict[str, Any]) -> str:
        return f"{t['difference'] * 100:+.1f} {interval(t['ci_low'], t['ci_high'])}"

    return [
        a,
        b,
        str(loose["n"]),
        diff(loose),
        f"{loose['a_only']} / {loose['b_only']}",
        p_text(loose["p_value"]),
        diff(strict),
        p_text(strict["p_value"]),
    ]


PAIRED_COLUMNS = [
    "system",
    "versus",
    "paired prompts",
    "Δ IFEval prompt loose, points [95% CI]",
    "loose: only system / only versus",
    "McNemar p (loose)",
    "Δ IFEval prompt strict, points [95% CI]",
    "McNemar p (strict)",
]
PAIRED_CAPTION = (
    "Paired tests on the same IFEval prompts: Δ = system − versus in accuracy points, with the 95% interval that inverts "
    "McNemar's exact test; "
    "p: exact two-sided McNemar test on the prompts only one of the two passes; * p < 0.05 (no correction for the "
    "number of tests). Several seeds: seed s against seed s, a seedless system against every seed; each pair of seeds is its own "
    "row (seeds are never pooled as extra pairs)."
)
