"""Pairwise decisions of a metric judge, recomputable from per-instruction scores.

A ``metric:`` judge (:mod:`implicit_it.evaluation.judges`) gives every output one score against the instruction set's
gold answer, and of two outputs the higher score wins (equal scores tie). So any two systems judged in a run can be
compared on the instructions both answered, not only each system against the run's reference: the per-output scores
are the outcomes a study publishes, and every test below recomputes from them.

Each comparison is decided twice: on every instruction, and on the instructions where neither output is a non-answer
(the gated metric's −1: empty, a template continuation, an echo), which separates content from format. The test is the
exact sign test on the decided instructions (ties left out), its interval the Clopper–Pearson interval of the win rate
among them (they agree: the interval excludes 1/2 exactly when p < 0.05), Holm's adjustment runs over one family of
tests, and the power column gives the decided pairs the sign test needs for 80% power at the measured rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from implicit_it.errors import UserError
from implicit_it.stats import clopper_pearson, holm, pairs_for_power, sign_test

NON_ANSWER = -1.0  # the gated metric's score of an empty output, a template continuation or an echo
ALPHA = 0.05
SUBSETS = {
    "all": "every instruction (the gated metric: format and content)",
    "both answered": "the instructions where neither output is a non-answer (closeness to the gold answer: content)",
}


def decide_counts(wins: int, losses: int, ties: int) -> dict[str, Any]:
    """Counts, win rate (ties half), the exact sign test, its Clopper–Pearson interval and the pairs for 80% power."""
    n, decided = wins + losses + ties, wins + losses
    rate = wins / decided if decided else None
    lo, hi = clopper_pearson(wins, decided) if decided else (0.0, 1.0)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate_with_ties": 100 * (wins + 0.5 * ties) / n if n else None,
        "decided_win_rate": rate,
        "decided_ci": [lo, hi],
        "p_value": sign_test(wins, losses),
        "pairs_for_80_power": pairs_for_power(rate) if rate is not None else None,
    }


def decide_preferences(preferences: Iterable[float]) -> dict[str, Any]:
    """alpaca_eval's preferences (2: the system's output wins, 1: the reference's, 1.5: a tie) decided."""
    prefs = list(preferences)
    wins, losses = sum(p == 2.0 for p in prefs), sum(p == 1.0 for p in prefs)
    return decide_counts(wins, losses, len(prefs) - wins - losses)


def decide_scores(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired scores of two systems on the same instructions decided: a wins where its score is higher."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    return decide_counts(wins, losses, len(a) - wins - losses)


def compare_systems(scores: Mapping[str, Mapping[str, float]], a: str, b: str) -> list[dict[str, Any]]:
    """System ``a`` against ``b`` on the instructions both were scored on (in ``a``'s order): one row per subset, the
    content-only one only where it differs from all (when both always answer it is the same test, counted once)."""
    shared = [i for i in scores[a] if i in scores[b]]
    if not shared:
        raise UserError(f"{a} and {b} share no judged instruction")
    answered = [i for i in shared if NON_ANSWER not in (scores[a][i], scores[b][i])]
    subsets = {"all": shared, **({"both answered": answered} if len(answered) < len(shared) else {})}
    return [
        {"system": a, "reference": b, "subset": name, **decide_scores([scores[a][i] for i in keys], [scores[b][i] for i in keys])}
        for name, keys in subsets.items()
    ]


def adjust(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm over ``rows`` (one family), in place: ``p_holm``, ``significant`` and ``system_better`` (significant with
    more wins than losses)."""
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < ALPHA
        row["system_better"] = row["significant"] and row["wins"] > row["losses"]
    return rows


def verdict_cell(row: Mapping[str, Any]) -> str:
    """What a row decides, no stronger than its Holm-adjusted test."""
    if row["system_better"]:
        return f"**{row['system']} better**"
    return f"{row['reference']} better" if row["significant"] else "not decided"


def decision_rows(rows: Sequence[Mapping[str, Any]], *, lead: Sequence[str] = ()) -> list[str]:
    """Markdown table of decided comparisons; ``lead`` names extra leading columns taken from each row."""
    head = [
        *lead,
        "system vs reference",
        "instructions",
        "n",
        "wins / losses / ties",
        "win rate, ties half",
        "win rate of decided [exact 95% CI]",
        "sign test p (Holm)",
        "decided pairs for 80% power",
        "decision",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        rate = "–" if row["decided_win_rate"] is None else f"{100 * row['decided_win_rate']:.1f}%"
        ci = f"[{100 * row['decided_ci'][0]:.1f}, {100 * row['decided_ci'][1]:.1f}]"
        ties_half = "–" if row["win_rate_with_ties"] is None else f"{row['win_rate_with_ties']:.1f}%"
        cells = [
            *(str(row[c]) for c in lead),
            f"{row['system']} vs {row['reference']}",
            row["subset"],
            str(row["n"]),
            f"{row['wins']} / {row['losses']} / {row['ties']}",
            ties_half,
            f"{rate} {ci}",
            f"{row['p_value']:.3g} ({row['p_holm']:.3g})",
            str(row["pairs_for_80_power"] or "–"),
            verdict_cell(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


__all__ = [
    "NON_ANSWER",
    "SUBSETS",
    "adjust",
    "compare_systems",
    "decide_counts",
    "decide_preferences",
    "decide_scores",
    "decision_rows",
    "verdict_cell",
]
