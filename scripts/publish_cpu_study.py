"""Publish the CPU study (configs/cpu-study.yaml) in the repository, and write the README's findings from it.

python scripts/publish_cpu_study.py [RUN_DIR]   # RUN_DIR (default runs/study/cpu-study) -> docs/results/cpu-study/ + README
python scripts/publish_cpu_study.py --check     # recompute every test from the published outcomes; check both READMEs

A run whose manifest says the git tree was dirty is refused: its code is no commit. ``--allow-dirty`` publishes it anyway
and saves ``git diff HEAD`` of this checkout as ``code.diff`` beside the published files (the run records no diff itself).

Publishing writes ``docs/results/cpu-study/``: ``outcomes/`` (every judged output's score per instruction, every
template-only sample with its check), ``findings.json`` (:func:`implicit_it.reports.findings.study_findings`, with the
outcomes moved to those files), the run's report and manifest; then it rewrites, between the findings markers, both
README.md and docs/results/cpu-study/README.md from ``findings.json`` alone. ``--check`` puts the outcomes back,
recomputes every test (:func:`implicit_it.reports.findings.recompute`), and checks that findings.json and both READMEs
hold what the outcomes give, that every decimal the study page's prose quotes is one its generated block (or a page it
cites) gives, and runs the positive control's own check (scripts/positive_control_ladder.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from implicit_it.io import atomic_write_json, atomic_write_text
from implicit_it.reports.collect import read_run
from implicit_it.reports.findings import findings_markdown, recompute, study_findings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
OUT = REPO / "docs" / "results" / "cpu-study"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"
HTML_LIMIT = 3 * 2**20  # the self-contained HTML is published only when it stays small
KEEP = {"README.md"}  # hand-written; every other file in OUT is the run's


def rendered(path: Path, text: str, findings: dict[str, Any]) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{path}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{findings_markdown(findings)}{END}{tail}"


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


def _safe(name: str) -> str:
    return name.replace("/", "_")


def split_outcomes(findings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """findings.json without the per-item outcomes, and the outcome files (relative path -> rows) that hold them."""
    files: dict[str, list[dict[str, Any]]] = {}
    doc = json.loads(json.dumps(findings))
    for name, s in doc["judged"]["systems"].items():
        path = f"outcomes/judged/{_safe(name)}.jsonl"
        files[path] = [{"instruction": i, "score": v} for i, v in s.pop("scores").items()]
        s["outcomes"] = path
    for name, s in (doc.get("template") or {}).get("systems", {}).items():
        path = f"outcomes/template/{_safe(name)}.jsonl"
        files[path] = s.pop("samples")
        s["outcomes"] = path
    return doc, files


def join_outcomes(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """The inverse of :func:`split_outcomes`: the outcome files read back into the document."""
    doc = json.loads(json.dumps(doc))

    def rows(path: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (base / path).read_text(encoding="utf-8").splitlines() if line.strip()]

    for s in doc["judged"]["systems"].values():
        s["scores"] = {r["instruction"]: r["score"] for r in rows(s.pop("outcomes"))}
    for s in (doc.get("template") or {}).get("systems", {}).values():
        s["samples"] = rows(s.pop("outcomes"))
    return doc


def publish(run_dir: Path, allow_dirty: bool = False) -> dict[str, Any]:
    diff = dirty_diff(run_dir, allow_dirty)  # before anything is written
    doc, files = split_outcomes(study_findings(read_run(run_dir)))
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.name not in KEEP:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for path, rows in files.items():
        atomic_write_text(OUT / path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = run_dir / "report"
    shutil.copy2(report / "report.md", OUT / "report.md")
    html = report / "report.html"
    if html.is_file() and html.stat().st_size <= HTML_LIMIT:
        shutil.copy2(html, OUT / "report.html")
    if (report / "figures").is_dir():
        shutil.copytree(report / "figures", OUT / "figures")
    shutil.copy2(run_dir / "manifest.json", OUT / "manifest.json")
    if diff is not None:
        atomic_write_text(OUT / "code.diff", diff)
        print(f"{OUT / 'code.diff'}: the run's git tree was dirty; saved `git diff HEAD` of this checkout (--allow-dirty)")
    atomic_write_json(OUT / "findings.json", doc)
    return doc


DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")  # 41.1, 0.0021; not a version such as 2.13.0
CITED = ("judge-agreement", "positive-control")  # the pages the study's prose quotes numbers from


def unsupported_numbers(page: str, sources: list[str]) -> list[str]:
    """Decimals in the hand-written prose of ``page`` (outside its generated findings block) found neither in that block
    nor in ``sources``: a number typed by hand must be one the published files give."""
    head, rest = page.split(START, 1)
    block, tail = rest.split(END, 1)
    known = {n for text in (block, *sources) for n in DECIMAL.findall(text)}
    return sorted({n for n in DECIMAL.findall(head + tail) if n not in known})


def check() -> int:
    """Recompute every test from docs/results/cpu-study/outcomes and check findings.json and both READMEs against it."""
    problems = []
    doc = json.loads((OUT / "findings.json").read_text(encoding="utf-8"))
    full = join_outcomes(doc, OUT)
    redone, _ = split_outcomes(recompute(full))
    if redone != doc:
        problems.append("findings.json differs from what its outcomes recompute to (python scripts/publish_cpu_study.py RUN_DIR)")
    for path in (README, OUT / "README.md"):
        text = path.read_text(encoding="utf-8")
        if rendered(path, text, doc) != text:
            problems.append(f"{path.relative_to(REPO)}: its findings differ from docs/results/cpu-study/findings.json")
    page = (OUT / "README.md").read_text(encoding="utf-8")
    cited = [(OUT.parent / name / "README.md").read_text(encoding="utf-8") for name in CITED]
    stray = unsupported_numbers(page, cited)
    if stray:
        problems.append(f"docs/results/cpu-study/README.md: its prose quotes {stray}, which no published file gives")
    ladder = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "positive_control_ladder.py"), "--check"], capture_output=True, text=True
    )
    if ladder.returncode != 0:
        problems.append(ladder.stderr.strip())
    for p in problems:
        print(f"cpu-study: {p}", file=sys.stderr)
    if not problems:
        n = (
            len(doc["judged"]["decisions"])
            + len((doc.get("template") or {}).get("tests", []))
            + len((doc.get("ranking") or {}).get("tests", []))
        )
        print(f"cpu-study: {n} tests recomputed from outcomes/; findings.json, README.md and docs/results/cpu-study/README.md agree")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/study/cpu-study", type=Path)
    ap.add_argument("--check", action="store_true", help="recompute every test from the published outcomes; check both READMEs")
    ap.add_argument(
        "--allow-dirty", action="store_true", help="publish a run made from a dirty git tree, with `git diff HEAD` as code.diff"
    )
    args = ap.parse_args(argv)
    if args.check:
        return check()
    doc = publish(args.run_dir, allow_dirty=args.allow_dirty)
    for path in (README, OUT / "README.md"):
        text = path.read_text(encoding="utf-8")
        new = rendered(path, text, doc)
        if new != text:
            atomic_write_text(path, new)
    print(f"{OUT}: findings.json, outcomes/, report, manifest; README.md and {OUT.relative_to(REPO)}/README.md findings rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
