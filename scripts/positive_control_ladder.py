"""The positive control's ladder (issue 32): does instruction tuning beat the base on the validated judge-free metric,
and from which training budget?

python scripts/positive_control_ladder.py RUN_DIR [RUN_DIR ...]   # each a finished `iit run configs/positive-control.yaml`
python scripts/positive_control_ladder.py --check                 # recompute every number from the published outcomes

Each rung is one run of ``configs/positive-control.yaml`` (a training budget). Its ``eval/alpaca/instruction.s0`` step
judged the instruction-tuned model against the base on AlpacaEval instructions with ``metric:...``: per instruction a
win, a loss or a tie. The rung's test is the exact sign test on the decided instructions (ties left out), its interval
the Clopper–Pearson interval of the win rate among them (the two agree: the interval excludes 1/2 exactly when p < 0.05),
and Holm's adjustment runs over the rungs (one family). The power column says how many decided instructions the sign
test needs for 80% power at the rung's measured rate.

Writes ``docs/results/positive-control/``: ``ladder.json`` (every number), ``outcomes/<rung>.jsonl`` (per instruction:
the two outputs' scores and the verdict, from which ``--check`` recomputes everything) and ``README.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from implicit_it.analysis import entries_of
from implicit_it.io import atomic_write_json, atomic_write_text
from implicit_it.stats import clopper_pearson, holm, pairs_for_power, sign_test

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "positive-control"
SYSTEM, REFERENCE = "instruction.s0", "base"


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_rung(run_dir: Path) -> dict[str, Any]:
    """What one rung trained and what its judge decided, per instruction."""
    train = _json(run_dir / "train" / SYSTEM / "train_manifest.json")
    step = run_dir / "eval" / "alpaca" / SYSTEM
    result = entries_of(_json(step / "alpaca_eval.json"))[0]
    outcomes = [
        {"instruction": a["instruction"], "score_base": a["score_1"], "score_tuned": a["score_2"], "preference": a["preference"]}
        for a in _json(step / "annotations.json")
    ]
    caps = {}
    for system in (REFERENCE, SYSTEM):
        outputs = _json(run_dir / "generate" / "alpaca" / system / "outputs.json")
        caps[system] = {"n": len(outputs), "hit_cap": sum(1 for o in outputs if o.get("ended_with_eos") is False)}
    r, manifest = train["results"], _json(run_dir / "manifest.json")
    return {
        "run_dir": str(run_dir),
        "examples": r["data"]["n_train_examples"],
        "truncated": r["data"].get("n_truncated"),
        "epochs": r["epochs"],
        "optimizer_steps": r["optimizer_steps"],
        "tokens_seen": r["tokens_seen"],
        "train_seconds": train["timings_seconds"].get("train"),
        "final_loss": r["final_loss"],
        "val_nll": r.get("val_nll"),
        "judge": result["judge"],
        "max_new_tokens": manifest["config"]["run"]["generate"]["max_new_tokens"],
        "cap": caps,
        "git": manifest.get("git"),
        "outcomes": outcomes,
    }


NON_ANSWER = -1.0  # the gated metric's score of an empty output, a template continuation or an echo
COMPARISONS = {
    "all": "every instruction (the gated metric: format and content)",
    "both answered": "instructions where neither output is a non-answer (closeness to GPT-4's answer only: content)",
}


def _compare(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    prefs = [o["preference"] for o in outcomes]
    wins, losses = sum(p == 2.0 for p in prefs), sum(p == 1.0 for p in prefs)
    ties = len(prefs) - wins - losses
    decided = wins + losses
    rate = wins / decided if decided else None
    lo, hi = clopper_pearson(wins, decided) if decided else (0.0, 1.0)
    return {
        "n": len(prefs),
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate_with_ties": 100 * (wins + 0.5 * ties) / len(prefs) if prefs else None,
        "decided_win_rate": rate,
        "decided_ci": [lo, hi],
        "p_value": sign_test(wins, losses),
        "pairs_for_80_power": pairs_for_power(rate) if rate is not None else None,
    }


def decide(rungs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rung and comparison: counts, the sign test, its exact interval and power; Holm over every test of the ladder
    (one family). The control passes at a rung when its "all" comparison is significant after Holm, with more wins."""
    rows = []
    for rung in rungs:
        outcomes = rung["outcomes"]
        subsets = {
            "all": outcomes,
            "both answered": [o for o in outcomes if o["score_base"] != NON_ANSWER and o["score_tuned"] != NON_ANSWER],
        }
        for comparison, subset in subsets.items():
            rows.append({"examples": rung["examples"], "comparison": comparison, **_compare(subset)})
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < 0.05
        row["tuned_better"] = row["significant"] and row["wins"] > row["losses"]
    return rows


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def table(rungs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Two Markdown tables: what each rung trained and how often each model gave no answer; then the decisions."""
    lines = [
        "| examples (truncated) | optimizer steps | tokens | train s | final loss | val NLL | non-answers: base / tuned "
        "| hit the cap: base / tuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rung in rungs:
        o, cap = rung["outcomes"], rung["cap"]
        lines.append(
            f"| {rung['examples']} ({rung['truncated']}) | {rung['optimizer_steps']} | {rung['tokens_seen']} "
            f"| {rung['train_seconds']:.0f} | {rung['final_loss']:.3f} | {_num(rung['val_nll'])} "
            f"| {sum(x['score_base'] == NON_ANSWER for x in o)} / {sum(x['score_tuned'] == NON_ANSWER for x in o)} of {len(o)} "
            f"| {cap[REFERENCE]['hit_cap']} / {cap[SYSTEM]['hit_cap']} of {cap[REFERENCE]['n']} |"
        )
    lines += [
        "",
        "| examples | instructions | n | tuned wins / losses / ties | win rate, ties half | win rate of decided [exact 95% CI] "
        "| sign test p (Holm) | decided pairs for 80% power | tuned better |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate = "–" if row["decided_win_rate"] is None else f"{100 * row['decided_win_rate']:.1f}%"
        ci = f"[{100 * row['decided_ci'][0]:.1f}, {100 * row['decided_ci'][1]:.1f}]"
        verdict = "**yes**" if row["tuned_better"] else ("no: base better" if row["significant"] else "not decided")
        lines.append(
            f"| {row['examples']} | {row['comparison']} | {row['n']} | {row['wins']} / {row['losses']} / {row['ties']} "
            f"| {_num(row['win_rate_with_ties'], '.1f')}% | {rate} {ci} | {row['p_value']:.3g} ({row['p_holm']:.3g}) "
            f"| {row['pairs_for_80_power'] or '–'} | {verdict} |"
        )
    return "\n".join(lines)


def publish(run_dirs: list[Path]) -> dict[str, Any]:
    rungs = sorted((read_rung(d) for d in run_dirs), key=lambda r: r["examples"])
    rows = decide(rungs)
    for rung in rungs:
        name = f"{rung['examples']}.jsonl"
        atomic_write_text(OUT / "outcomes" / name, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in rung["outcomes"]))
    ladder = {
        "rungs": [
            {k: v for k, v in rung.items() if k != "outcomes"} | {"outcomes": f"outcomes/{rung['examples']}.jsonl"} for rung in rungs
        ],
        "decisions": rows,
        "table": table(rungs, rows),
    }
    atomic_write_json(OUT / "ladder.json", ladder)
    return ladder


def check() -> int:
    """Recompute the decisions and the table from the published outcomes; exit 1 on any difference."""
    ladder = _json(OUT / "ladder.json")
    rungs = [dict(r, outcomes=[json.loads(line) for line in (OUT / r["outcomes"]).read_text().splitlines()]) for r in ladder["rungs"]]
    rows = decide(rungs)
    problems = []
    if rows != ladder["decisions"]:
        problems.append("ladder.json's decisions differ from those recomputed from outcomes/")
    if table(rungs, rows) != ladder["table"]:
        problems.append("ladder.json's table differs from the recomputed one")
    readme = (OUT / "README.md").read_text(encoding="utf-8") if (OUT / "README.md").is_file() else ""
    if ladder["table"] not in readme:
        problems.append("docs/results/positive-control/README.md does not hold the recomputed table")
    for p in problems:
        print(f"positive-control: {p}", file=sys.stderr)
    if not problems:
        print(f"positive-control: {len(rows)} rungs recomputed from their outcomes; ladder.json and README.md agree")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="finished runs of configs/positive-control.yaml, one per rung")
    ap.add_argument("--check", action="store_true", help="recompute every number from docs/results/positive-control/outcomes")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if not args.runs:
        ap.error("name the rungs' run directories (or --check)")
    ladder = publish(args.runs)
    print(ladder["table"])
    print(f"wrote {OUT}/ladder.json and outcomes/; paste the table into {OUT}/README.md (--check verifies it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
