"""Publish the CPU study (configs/cpu-study.yaml) in the repository, and write the README's findings from it.

python scripts/publish_cpu_study.py [RUN_DIR]   # RUN_DIR (default runs/study/cpu-study) -> docs/results/cpu-study/ + README
python scripts/publish_cpu_study.py --check     # recompute every test from the published outcomes; check both READMEs
python scripts/publish_cpu_study.py --compare RUN_DIR  # does a fresh run reproduce the published study, exactly?
python scripts/publish_cpu_study.py --render   # rewrite both READMEs' findings blocks from the published findings.json

A run whose manifest says the git tree was dirty is refused: its code is no commit. ``--allow-dirty`` publishes it anyway
and saves ``git diff HEAD`` of this checkout as ``code.diff`` beside the published files (the run records no diff itself).

Publishing writes ``docs/results/cpu-study/``: ``outcomes/`` (every judged output's score per instruction, every
template-only sample with its check), ``findings.json`` (:func:`implicit_it.reports.findings.study_findings`, with the
outcomes moved to those files), the run's report and manifest; then it rewrites, between the findings markers, both
README.md and docs/results/cpu-study/README.md from ``findings.json`` alone. ``--check`` puts the outcomes back,
recomputes every test (:func:`implicit_it.reports.findings.recompute`), and checks that findings.json and both READMEs
hold what the outcomes give, that every decimal and count the prose of each docs/results page quotes is one its
generated block or its sources give (:data:`PROSE_SOURCES`), and runs the positive control's own check
(scripts/positive_control_ladder.py). ``--compare RUN_DIR`` says whether a fresh run gives every published outcome and
finding exactly (provenance and seconds aside); it writes nothing.
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
from implicit_it.reports.findings import findings_headline, findings_markdown, recompute, study_findings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
OUT = REPO / "docs" / "results" / "cpu-study"
START, END = "<!-- findings:start -->", "<!-- findings:end -->"
HTML_LIMIT = 3 * 2**20  # the self-contained HTML is published only when it stays small
KEEP = {"README.md"}  # hand-written; every other file in OUT is the run's


def rendered(path: Path, text: str, findings: dict[str, Any]) -> str:
    """``text`` with its findings block rewritten: the README gets the headline, the study's page every table."""
    if START not in text or END not in text:
        raise SystemExit(f"{path}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = findings_headline(findings) if path.resolve() == README.resolve() else findings_markdown(findings)
    return f"{head}{START}\n{body}{END}{tail}"


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


DECIMAL = re.compile(r"(?<![\w.])(?:\d+\.\d+(?:e-?\d+)?|\d+e-?\d+)(?![\w.]*\d)")  # 41.1, 0.0021, 9.8e-5; not 2.13.0
VALUE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.]*\d)")  # any number a source gives
COUNT = re.compile(r"(?<![\w.])(\d+) of (\d+)(?![\w.]*\d)")  # "34 of 47"
TALLY = re.compile(r"(\d+) wins, (\d+) losses, (\d+) ties of (\d+)")  # the generated sentences
ROW = re.compile(r"\| (\d+) \| (\d+) / (\d+) / (\d+) \|")  # the generated tables: | n | wins / losses / ties |
RESULTS = REPO / "docs" / "results"
# Each results page and the files (repository paths) its hand-written prose may quote, besides its own generated block.
PROSE_SOURCES = {
    "cpu-study": ("docs/results/judge-agreement/README.md", "docs/results/positive-control/README.md"),
    "positive-control": ("docs/results/positive-control/ladder.json", "docs/results/judge-agreement/README.md", "reports/paper.py"),
    "judge-agreement": (
        "docs/results/judge-agreement/judge_agreement.md",
        "docs/results/judge-agreement/judge_agreement.json",
        "benchmarks/RESULTS.md",
    ),
}


def known_counts(text: str) -> set[str]:
    """Every "N of M" a published text gives: quoted as such, or read from a tally (wins or losses of all, or of the
    decided pairs)."""
    counts = {f"{n} of {m}" for n, m in COUNT.findall(text)}
    if text.lstrip().startswith("{"):
        counts |= json_counts(json.loads(text))
    tallies = TALLY.findall(text) + [(w, lo, t, n) for n, w, lo, t in ROW.findall(text)]
    for w, lo, t, m in tallies:
        decided = int(w) + int(lo)
        counts |= {f"{w} of {m}", f"{lo} of {m}", f"{t} of {m}", f"{w} of {decided}", f"{lo} of {decided}"}
    return counts


TOTALS = ("n", "pairs", "total")  # in a JSON source, an integer field beside one of these is a count "k of total"


def json_counts(obj: Any) -> set[str]:
    """Every "k of total" a JSON document gives: an integer field beside an integer ``n``, ``pairs`` or ``total``."""
    found: set[str] = set()
    if isinstance(obj, dict):
        ints = {k: v for k, v in obj.items() if isinstance(v, int) and not isinstance(v, bool)}
        found |= {f"{v} of {ints[t]}" for t in TOTALS if t in ints for v in ints.values()}
        obj = list(obj.values())
    if isinstance(obj, list):
        found = found.union(*(json_counts(v) for v in obj))
    return found


def _values(text: str) -> set[float]:
    values = {abs(float(v)) for v in VALUE.findall(text.replace("−", "-"))}
    return values | {v * 100 for v in values if v <= 1}  # a share quoted as a percentage


def rounds_to(token: str, values: set[float]) -> bool:
    """Is ``token`` (as the prose writes it) one of ``values`` rounded: to its decimals, or in scientific notation to its
    significant digits?"""
    x = float(token)
    if "e" in token:
        digits = len(token.split("e")[0].replace(".", "").lstrip("0")) or 1
        return any(v and float(f"{v:.{digits - 1}e}") == x for v in values)
    places = len(token.split(".")[1])
    return any(round(v, places) == x for v in values)


def unsupported_numbers(page: str, sources: list[str]) -> list[str]:
    """Decimals and counts ("N of M") in the hand-written prose of ``page`` (outside its generated findings block, if it
    has one) that neither that block nor ``sources`` give: a number typed by hand must be one the published files give,
    as they give it or rounded."""
    if START in page:
        head, rest = page.split(START, 1)
        block, tail = rest.split(END, 1)
    else:
        head, block, tail = page, "", ""
    prose = head + tail
    texts = (block, *sources)
    values = set().union(*(_values(text) for text in texts))
    counts = set().union(*(known_counts(text) for text in texts))
    stray = {n for n in DECIMAL.findall(prose) if not rounds_to(n, values)}
    stray |= {f"{n} of {m}" for n, m in COUNT.findall(prose) if f"{n} of {m}" not in counts}
    return sorted(stray)


def prose_problems() -> list[str]:
    """:func:`unsupported_numbers` of every results page against its :data:`PROSE_SOURCES`."""
    problems = []
    for name, sources in PROSE_SOURCES.items():
        page = (RESULTS / name / "README.md").read_text(encoding="utf-8")
        stray = unsupported_numbers(page, [(REPO / path).read_text(encoding="utf-8") for path in sources])
        if stray:
            problems.append(f"docs/results/{name}/README.md: its prose quotes {stray}, which no published file gives")
    return problems


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
    problems += prose_problems()
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


TIMING = {"train_seconds"}  # the machine's load, not the study: left out of a reproduction's comparison


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ (paths), ignoring :data:`TIMING` fields; floats must match exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b)) if k not in TIMING]
        return out + [d for k in sorted(set(a) & set(b) - TIMING) for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def compare(run_dir: Path) -> int:
    """Does a fresh run reproduce the published study? Its outcomes (every judged score, every template sample) and its
    findings (training losses, generation counts, every test) against docs/results/cpu-study/, exactly; the run's
    provenance and seconds are left out. Writes nothing."""
    doc, files = split_outcomes(study_findings(read_run(run_dir)))
    published = json.loads((OUT / "findings.json").read_text(encoding="utf-8"))
    problems = differences({k: v for k, v in doc.items() if k != "study"}, {k: v for k, v in published.items() if k != "study"})
    rows = 0
    for path, fresh in files.items():
        old = (OUT / path).read_text(encoding="utf-8").splitlines() if (OUT / path).is_file() else []
        new = [json.dumps(r, ensure_ascii=False) for r in fresh]
        rows += len(new)
        changed = sum(x != y for x, y in zip(old, new, strict=False)) + abs(len(old) - len(new))
        if changed:
            problems.append(f"{path}: {changed} of {max(len(old), len(new))} rows differ")
    for p in problems:
        print(f"cpu-study: {run_dir} differs at {p}", file=sys.stderr)
    if not problems:
        print(f"cpu-study: {run_dir} reproduces the published study: {len(files)} outcome files ({rows} rows) and every finding identical")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/study/cpu-study", type=Path)
    ap.add_argument("--check", action="store_true", help="recompute every test from the published outcomes; check both READMEs")
    ap.add_argument(
        "--allow-dirty", action="store_true", help="publish a run made from a dirty git tree, with `git diff HEAD` as code.diff"
    )
    ap.add_argument("--compare", action="store_true", help="does RUN_DIR, a fresh run, reproduce the published study? writes nothing")
    ap.add_argument("--render", action="store_true", help="rewrite both READMEs' findings from the published findings.json only")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if args.compare:
        return compare(args.run_dir)
    if args.render:
        doc = json.loads((OUT / "findings.json").read_text(encoding="utf-8"))
    else:
        doc = publish(args.run_dir, allow_dirty=args.allow_dirty)
    for path in (README, OUT / "README.md"):
        text = path.read_text(encoding="utf-8")
        new = rendered(path, text, doc)
        if new != text:
            atomic_write_text(path, new)
    wrote = "" if args.render else "findings.json, outcomes/, report, manifest; "
    print(f"{OUT}: {wrote}README.md and {OUT.relative_to(REPO)}/README.md findings rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
