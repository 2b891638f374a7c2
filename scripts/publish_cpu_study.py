"""Publish the CPU study (configs/cpu-study.yaml) in the repository, and write the README's findings from it.

python scripts/publish_cpu_study.py [RUN_DIR]   # RUN_DIR (default runs/study/cpu-study) -> docs/results/cpu-study/ + README
python scripts/publish_cpu_study.py --check     # exit 1 if README.md's findings differ from docs/results/cpu-study/findings.json

A run whose manifest says the git tree was dirty is refused: its code is no commit. ``--allow-dirty`` publishes it anyway
and saves ``git diff HEAD`` of this checkout as ``code.diff`` beside the published files (the run records no diff itself).

Publishing copies the run's report (Markdown, figures, the HTML when small), its manifest and the epoch sweep, computes
``findings.json`` (:func:`implicit_it.reports.findings.study_findings`, plus the power calculation that sized IFEval from
the demo run's per-prompt outcomes) and rewrites README.md between the findings markers from that file alone. The check
re-renders the section from the committed ``findings.json``: the README's numbers cannot drift from the published files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from implicit_it.analysis import entries_of
from implicit_it.io import atomic_write_json, atomic_write_text
from implicit_it.reports.collect import read_run
from implicit_it.reports.findings import detectable_difference, findings_markdown, mcnemar_sample_size, read_sweep, study_findings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
OUT = REPO / "docs" / "results" / "cpu-study"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"
HTML_LIMIT = 3 * 2**20  # the self-contained HTML is published only when it stays small


def power(demo_dir: Path, study: dict[str, Any]) -> dict[str, Any]:
    """The calculation that sized the study's IFEval sets: base vs response-tuned discordance in the demo run."""

    def loose(system: str) -> dict[int, bool]:
        data = json.loads((demo_dir / "eval" / "ifeval" / system / "ifeval.json").read_text(encoding="utf-8"))
        return {row["key"]: bool(row["loose"]) for row in entries_of(data)[0]["per_prompt"]}

    base, resp = loose("base"), loose("response.s0")
    keys = sorted(set(base) & set(resp))
    base_only = sum(base[k] and not resp[k] for k in keys)
    resp_only = sum(resp[k] and not base[k] for k in keys)
    n = len(keys)
    discordant = (base_only + resp_only) / n
    ife = study.get("ifeval", {})
    full = max((s["own"]["n"] for s in ife.get("systems", {}).values()), default=0)
    return {
        "demo_run": str(demo_dir),
        "demo_prompts": n,
        "demo_base_accuracy": sum(base[k] for k in keys) / n,
        "demo_response_accuracy": sum(resp[k] for k in keys) / n,
        "demo_base_only": base_only,
        "demo_response_only": resp_only,
        "prompts_needed": mcnemar_sample_size(resp_only / n, base_only / n),
        "study_subset": ife.get("subset_n"),
        "study_full": full,
        "detectable_points_full": _points(detectable_difference(full, discordant)) if full else None,
        "detectable_points_subset": _points(detectable_difference(ife.get("subset_n") or 1, discordant)),
        "discordant_share": discordant,
        "test": "McNemar, two-sided, alpha 0.05, power 0.8 (Connor 1987's approximation)",
    }


def _points(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 1)


def rendered(text: str, findings: dict[str, Any]) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{findings_markdown(findings)}\n{END}{tail}"


def dirty_diff(run_dir: Path, allow_dirty: bool) -> str | None:
    """None for a run whose manifest records a clean git tree; for a dirty one, ``git diff HEAD`` of this checkout when
    *allow_dirty*, else the refusal (SystemExit)."""
    git = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("git") or {}
    if not git.get("dirty"):
        return None
    if not allow_dirty:
        raise SystemExit(
            f"{run_dir}: its manifest says the git tree was dirty (uncommitted changes on {git.get('commit')}), so no commit "
            "names its code; run it again on a clean checkout, or pass --allow-dirty to publish it with this checkout's "
            "`git diff HEAD` as code.diff"
        )
    return subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True, text=True, check=True).stdout


def publish(run_dir: Path, sweep: Path, demo: Path, allow_dirty: bool = False) -> dict[str, Any]:
    diff = dirty_diff(run_dir, allow_dirty)  # before anything is written
    run = read_run(run_dir)
    findings = study_findings(run, sweep=read_sweep(sweep))
    findings["power"] = power(demo, findings)
    OUT.mkdir(parents=True, exist_ok=True)
    report = run_dir / "report"
    for name in ("report.md",):
        shutil.copy2(report / name, OUT / name)
    html = report / "report.html"
    if html.is_file() and html.stat().st_size <= HTML_LIMIT:
        shutil.copy2(html, OUT / "report.html")
    if (report / "figures").is_dir():
        shutil.rmtree(OUT / "figures", ignore_errors=True)
        shutil.copytree(report / "figures", OUT / "figures")
    shutil.copy2(run_dir / "manifest.json", OUT / "manifest.json")
    if sweep.is_file():
        shutil.copy2(sweep, OUT / "sweep.json")
    if diff is None:
        (OUT / "code.diff").unlink(missing_ok=True)  # left by an earlier --allow-dirty publish
    else:
        atomic_write_text(OUT / "code.diff", diff)
        print(f"{OUT / 'code.diff'}: the run's git tree was dirty; saved `git diff HEAD` of this checkout (--allow-dirty)")
    atomic_write_json(OUT / "findings.json", findings)
    return findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/study/cpu-study", type=Path)
    ap.add_argument("--sweep", default="runs/cpu-study/response-sweep/sweep.json", type=Path, help="the epoch sweep's sweep.json")
    ap.add_argument("--demo", default="runs/study/demo", type=Path, help="a finished `iit run` (the demo): the power calculation's rates")
    ap.add_argument("--check", action="store_true", help="only check that README.md matches the published findings.json")
    ap.add_argument(
        "--allow-dirty", action="store_true", help="publish a run made from a dirty git tree, with `git diff HEAD` as code.diff"
    )
    args = ap.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    if args.check:
        findings = json.loads((OUT / "findings.json").read_text(encoding="utf-8"))
        if rendered(text, findings) != text:
            print(
                "README.md's findings differ from docs/results/cpu-study/findings.json: run python scripts/publish_cpu_study.py",
                file=sys.stderr,
            )
            return 1
        return 0
    findings = publish(args.run_dir, args.sweep, args.demo, allow_dirty=args.allow_dirty)
    new = rendered(text, findings)
    if new != text:
        atomic_write_text(README, new)
    print(f"{OUT}: findings.json, report, manifest; README.md findings rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
