"""The positive control's ladder (issue 32): does instruction tuning beat the base on the validated judge-free metric,
from which training budget, and, where it does, how does response tuning compare with instruction tuning?

python scripts/positive_control_ladder.py RUN_DIR [RUN_DIR ...]   # finished runs of configs/positive-control.yaml
python scripts/positive_control_ladder.py --check                 # recompute every number from the published outcomes

Each run is one rung of ``configs/positive-control.yaml`` (a training budget). Every ``eval/alpaca/<system>`` step of a
run judged that system against the run's reference (``run.eval.reference``) on AlpacaEval instructions with
``metric:...``: per instruction a win, a loss or a tie. Each comparison is decided twice: on every instruction, and on
the instructions where neither output is a non-answer (the gated metric's −1: empty, a template continuation, an echo),
which isolates content from format. The test is the exact sign test on the decided instructions (ties left out), its
interval the Clopper–Pearson interval of the win rate among them (they agree: the interval excludes 1/2 exactly when
p < 0.05), and Holm's adjustment runs over every test on the page (one family). The power column says how many
decided instructions the sign test needs for 80% power at the measured rate.

Writes ``docs/results/positive-control/``: ``ladder.json`` (every number), ``outcomes/<run>/<system>-vs-<reference>.jsonl``
(per instruction: both outputs' scores and the verdict, from which ``--check`` recomputes everything) with each run's
``manifest.json``; ``README.md`` must hold the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from implicit_it.analysis import entries_of
from implicit_it.io import atomic_write_json, atomic_write_text
from implicit_it.reports.judged import NON_ANSWER, adjust, decide_preferences

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "positive-control"


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(run_dir: Path) -> dict[str, Any]:
    """What one run trained (per variant) and what its judge decided (per judged system, per instruction)."""
    manifest = _json(run_dir / "manifest.json")
    trained = {}
    for path in sorted((run_dir / "train").glob("*/train_manifest.json")):
        train = _json(path)
        r = train["results"]
        trained[path.parent.name] = {
            "examples": r["data"]["n_train_examples"],
            "truncated": r["data"].get("n_truncated"),
            "epochs": r["epochs"],
            "optimizer_steps": r["optimizer_steps"],
            "tokens_seen": r["tokens_seen"],
            "train_seconds": train["timings_seconds"].get("train"),
            "final_loss": r["final_loss"],
            "val_nll": r.get("val_nll"),
        }
    comparisons = []
    for step in sorted((run_dir / "eval" / "alpaca").glob("*/annotations.json")):
        result = entries_of(_json(step.parent / "alpaca_eval.json"), step.parent / "alpaca_eval.json")[0]
        outcomes = [
            {"instruction": a["instruction"], "score_reference": a["score_1"], "score_system": a["score_2"], "preference": a["preference"]}
            for a in _json(step)
        ]
        comparisons.append(
            {"system": result["generator"], "reference": result["reference_generator"], "judge": result["judge"], "outcomes": outcomes}
        )
    cap = {}
    for outputs_file in sorted((run_dir / "generate" / "alpaca").glob("*/outputs.json")):
        outputs = _json(outputs_file)
        cap[outputs_file.parent.name] = {"n": len(outputs), "hit_cap": sum(1 for o in outputs if o.get("ended_with_eos") is False)}
    if not trained or not comparisons:
        raise SystemExit(f"{run_dir}: no trained variant or no judged system (eval/alpaca/*/annotations.json); is the run finished?")
    return {
        "run_dir": str(run_dir),
        "name": run_dir.name,
        "examples": max(t["examples"] for t in trained.values()),
        "trained": trained,
        "comparisons": comparisons,
        "cap": cap,
        "max_new_tokens": manifest["config"]["run"]["generate"]["max_new_tokens"],
        "git": manifest.get("git"),
        "code": manifest.get("code"),
    }


def decide(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, judged system and subset: counts, the sign test, its exact interval and power; Holm over every test of
    the page (one family). A system is better when its test is significant after Holm with more wins than losses."""
    rows = []
    for run in runs:
        for c in run["comparisons"]:
            outcomes = c["outcomes"]
            answered = [o for o in outcomes if NON_ANSWER not in (o["score_reference"], o["score_system"])]
            # the content-only test where it differs: when both always answer, it is the same test, counted once
            subsets = {"all": outcomes, **({"both answered": answered} if len(answered) < len(outcomes) else {})}
            for subset, chosen in subsets.items():
                rows.append(
                    {
                        "run": run["name"],
                        "system": c["system"],
                        "reference": c["reference"],
                        "subset": subset,
                        **decide_preferences(o["preference"] for o in chosen),
                    }
                )
    return adjust(rows)


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def table(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Two Markdown tables: what each run trained, with each model's non-answers and capped outputs; then the decisions."""
    lines = [
        "| run | examples | variant (truncated examples) | optimizer steps | tokens | train s | final loss | val NLL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for variant, t in run["trained"].items():
            lines.append(
                f"| {run['name']} | {run['examples']} | {variant} ({t['truncated']}) | {t['optimizer_steps']} | {t['tokens_seen']} "
                f"| {t['train_seconds']:.0f} | {t['final_loss']:.3f} | {_num(t['val_nll'])} |"
            )
    lines += ["", "| run | system | non-answers | hit the cap |", "|---|---|---|---|"]
    for run in runs:
        scores: dict[str, list[float]] = {}
        for c in run["comparisons"]:
            scores.setdefault(c["system"], [o["score_system"] for o in c["outcomes"]])
            scores.setdefault(c["reference"], [o["score_reference"] for o in c["outcomes"]])
        for system in sorted(scores):
            cap = run["cap"].get(system, {"hit_cap": None, "n": None})
            lines.append(
                f"| {run['name']} | {system} | {sum(x == NON_ANSWER for x in scores[system])} of {len(scores[system])} "
                f"| {cap['hit_cap']} of {cap['n']} |"
            )
    lines += [
        "",
        "| run | system vs reference | instructions | n | system wins / losses / ties | win rate, ties half "
        "| win rate of decided [exact 95% CI] | sign test p (Holm) | decided pairs for 80% power | system better |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate = "–" if row["decided_win_rate"] is None else f"{100 * row['decided_win_rate']:.1f}%"
        ci = f"[{100 * row['decided_ci'][0]:.1f}, {100 * row['decided_ci'][1]:.1f}]"
        verdict = "**yes**" if row["system_better"] else (f"no: {row['reference']} better" if row["significant"] else "not decided")
        lines.append(
            f"| {row['run']} | {row['system']} vs {row['reference']} | {row['subset']} | {row['n']} "
            f"| {row['wins']} / {row['losses']} / {row['ties']} | {_num(row['win_rate_with_ties'], '.1f')}% | {rate} {ci} "
            f"| {row['p_value']:.3g} ({row['p_holm']:.3g}) | {row['pairs_for_80_power'] or '–'} | {verdict} |"
        )
    return "\n".join(lines)


def _outcomes_name(run: dict[str, Any], c: dict[str, Any]) -> str:
    return f"outcomes/{run['name']}/{c['system']}-vs-{c['reference']}.jsonl"


def publish(run_dirs: list[Path]) -> dict[str, Any]:
    runs = sorted((read_run(d) for d in run_dirs), key=lambda r: (r["examples"], len(r["trained"]), r["name"]))
    if len({r["name"] for r in runs}) < len(runs):
        raise SystemExit("two runs share a directory name; their outcomes would share a folder")
    rows = decide(runs)
    for run in runs:
        # the run's manifest beside its outcomes: config, data hashes, packages, and the code (``code.source_sha256``)
        atomic_write_text(
            OUT / "outcomes" / run["name"] / "manifest.json", (Path(run["run_dir"]) / "manifest.json").read_text(encoding="utf-8")
        )
        for c in run["comparisons"]:
            atomic_write_text(OUT / _outcomes_name(run, c), "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in c["outcomes"]))
    ladder = {
        "runs": [
            {k: v for k, v in run.items() if k != "comparisons"}
            | {
                "comparisons": [
                    {k: v for k, v in c.items() if k != "outcomes"} | {"outcomes": _outcomes_name(run, c)} for c in run["comparisons"]
                ]
            }
            for run in runs
        ],
        "decisions": rows,
        "table": table(runs, rows),
    }
    atomic_write_json(OUT / "ladder.json", ladder)
    return ladder


def check() -> int:
    """Recompute the decisions and the table from the published outcomes; exit 1 on any difference."""
    ladder = _json(OUT / "ladder.json")
    runs = [
        dict(
            run,
            comparisons=[
                dict(c, outcomes=[json.loads(line) for line in (OUT / c["outcomes"]).read_text().splitlines()]) for c in run["comparisons"]
            ],
        )
        for run in ladder["runs"]
    ]
    rows = decide(runs)
    problems = []
    if rows != ladder["decisions"]:
        problems.append("ladder.json's decisions differ from those recomputed from outcomes/")
    if table(runs, rows) != ladder["table"]:
        problems.append("ladder.json's table differs from the recomputed one")
    readme = (OUT / "README.md").read_text(encoding="utf-8") if (OUT / "README.md").is_file() else ""
    if ladder["table"] not in readme:
        problems.append("docs/results/positive-control/README.md does not hold the recomputed table")
    for p in problems:
        print(f"positive-control: {p}", file=sys.stderr)
    if not problems:
        print(f"positive-control: {len(rows)} tests recomputed from their outcomes; ladder.json and README.md agree")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="finished runs of configs/positive-control.yaml")
    ap.add_argument("--check", action="store_true", help="recompute every number from docs/results/positive-control/outcomes")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if not args.runs:
        ap.error("name the runs' directories (or --check)")
    ladder = publish(args.runs)
    print(ladder["table"])
    print(f"wrote {OUT}/ladder.json and outcomes/; paste the table into {OUT}/README.md (--check verifies it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
