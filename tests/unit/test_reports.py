"""The mechanism report: content from the run's own files, self-contained HTML, checked in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from typer.testing import CliRunner

from implicit_it.cli import app
from implicit_it.reports import check_in_browser, find_chromium, read_run, write_report
from implicit_it.reports.collect import mean_std
from implicit_it.reports.sections import build_sections

SECTION_IDS = ["headline", "table1", "table2", "table3", "table4", "layerwise", "tokens", "samples", "manifest"]


def _step(run_dir, *parts):
    return json.loads(run_dir.joinpath(*parts, "step.json").read_text())


def test_report_tables_hold_this_runs_numbers_beside_the_papers(tiny_study):
    _, run_dir, _ = tiny_study
    md = (run_dir / "report" / "report.md").read_text()

    def rows(section: str) -> dict[str, str]:
        part = md.split(f"## {section}")[1].split("\n## ")[0]
        return {line.split(" | ")[0].lstrip("| "): line for line in part.splitlines() if line.startswith("| ")}

    for system in ("base", "response", "instruction", "single_task-gsm", "rules", "rules-no_eos"):
        strict = _step(run_dir, "eval", "ifsuite", system if system in ("base", "rules", "rules-no_eos") else f"{system}.s0")["summary"]
        assert f"| {system} | {strict['strict_accuracy'] * 100:.1f} | {strict['loose_accuracy'] * 100:.1f} |" in md
    # the paper's numbers sit in their own labelled columns, never in this run's
    assert "paper Llama-2-7B: win % vs instruction-tuned (reference)" in md
    assert rows("Table 1")["response"].rstrip(" |").endswith("43.3 ± 1.1 | 43.7 ± 1.7")
    assert rows("Table 4")["rules-no_eos"].rstrip(" |").endswith("10.4 ± 0.30")
    assert rows("Table 2")["base"].rstrip(" |").endswith("80.4 | 74.5")
    rank = _step(run_dir, "rank", "base")["summary"]
    assert f"| base | {rank['accuracy'] * 100:.1f} | [{rank['ci95'][0] * 100:.1f}, {rank['ci95'][1] * 100:.1f}] |" in md
    fits = json.loads((run_dir / "diff" / "response.s0" / "rules.json").read_text())["results"][0]
    tokens = rows("Token shifts")
    assert f"{fits['fitted_seen_coefficient']:+.2f}" in tokens["already-used token (per use)"]
    assert tokens["'<'"].split(" | ")[1] == "-4"
    sample = json.loads((run_dir / "generate" / "ifsuite" / "base" / "outputs.json").read_text())[0]
    assert sample["instruction"].splitlines()[0] in md
    samples = md.split("## Sample generations")[1].split("\n## ")[0]
    assert samples.count("\n**") == 2  # run.generate.samples of the tiny study
    for key in ("weights", "kl", "ranking", "probe", "rules"):
        assert f"![{key}](figures/{key}.png)" in md and (run_dir / "report" / "figures" / f"{key}.png").stat().st_size > 5000
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["git"]["commit"] is None or manifest["git"]["commit"][:12] in md
    assert "| train | " in md and "Wall time per stage" in md


def test_html_is_self_contained(tiny_study):
    _, run_dir, _ = tiny_study
    html = (run_dir / "report" / "report.html").read_text()
    assert [m for m in re.findall(r'id="([a-z0-9]+)"', html) if m in SECTION_IDS] == SECTION_IDS
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<script>" in html and 'data-images-expected="5"' in html


def test_report_of_a_partial_run_marks_missing_stages(tiny_study, tmp_path):
    _, run_dir, _ = tiny_study
    partial = tmp_path / "run"
    shutil.copytree(run_dir, partial)
    for stage in ("rank", "probe", "diff"):
        shutil.rmtree(partial / stage)
    paths = write_report(partial)
    md = paths["markdown"].read_text()
    table2 = md.split("## Table 2")[1].split("## ")[0]
    assert "*Not part of this run.*" in table2
    assert not (partial / "report" / "figures" / "probe.png").exists() or "![probe]" not in md
    assert {s.id for s in build_sections(read_run(partial))} == set(SECTION_IDS[1:])


def test_mean_std_over_seeds():
    assert mean_std([0.25], scale=100) == "25.0"
    assert mean_std([0.2, 0.4], scale=100) == "30.0 ± 14.1"
    assert mean_std([None, float("nan")]) == "–"


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tiny_study, tmp_path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium: scripts/setup.sh installs Debian's chromium package")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    _, run_dir, _ = tiny_study
    check = check_in_browser(run_dir / "report" / "report.html", screenshot=tmp_path / "shot.png", window=(1200, 1600))
    assert check.ok and check.images_loaded == check.images_expected == 5
    assert check.section_ids == SECTION_IDS
    png = check.screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_iit_report_and_iit_run_cli(tiny_study, tmp_path):
    cfg, run_dir, _ = tiny_study
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(str(copy / "report" / "report.html"))
    config_path = tmp_path / "study.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = runner.invoke(app, ["run", str(config_path), "--out", str(copy), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "steps ran" in res.output and "0 steps ran" in res.output  # everything finished earlier: all cached
    assert res.stdout.strip().endswith("report.html")
    res = runner.invoke(app, ["run", str(config_path), "--out", str(copy), "--seeds", "3..1"])
    assert res.exit_code == 2 and "--seeds" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such run directory" in " ".join(res.output.split())
