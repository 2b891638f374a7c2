"""The mechanism report: content from the run's own files, self-contained HTML, checked in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.reports import check_in_browser, find_chromium, read_run, write_report
from implicit_it.reports.collect import mean_std
from implicit_it.reports.sections import build_sections
from implicit_it.stats import accuracy_with_ci, wilson_interval

SECTION_IDS = ["headline", "table1", "table2", "table3", "table4", "layerwise", "tokens", "samples", "manifest"]


def _ci(value: float, lo: float, hi: float) -> str:
    return f"{value * 100:.1f} [{lo * 100:.1f}, {hi * 100:.1f}]"


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}")[1].split("\n## ")[0]


def _step(run_dir, *parts):
    return json.loads(run_dir.joinpath(*parts, "step.json").read_text())


def test_report_tables_hold_this_runs_numbers_beside_the_papers(tiny_study):
    _, run_dir, _ = tiny_study
    md = (run_dir / "report" / "report.md").read_text()

    def rows(section: str) -> dict[str, str]:
        part = md.split(f"## {section}")[1].split("\n## ")[0]
        out: dict[str, str] = {}
        for line in part.splitlines():
            if line.startswith("| "):
                out.setdefault(line.split(" | ")[0].lstrip("| "), line)  # the section's first table, not its paired tests
        return out

    for system in ("base", "response", "instruction", "single_task-gsm", "rules", "rules-no_eos"):
        name = system if system in ("base", "rules", "rules-no_eos") else f"{system}.s0"
        ifeval = json.loads((run_dir / "eval" / "ifeval" / name / "ifeval.json").read_text())["results"][0]
        suite = _step(run_dir, "eval", "ifsuite", name)["summary"]
        cells = [
            _ci(ifeval[m]["accuracy"], ifeval[m]["ci_low"], ifeval[m]["ci_high"])
            for m in ("prompt_strict", "prompt_loose", "instruction_loose")
        ]
        cells += [_ci(suite[m], *wilson_interval(round(suite[m] * suite["n"]), suite["n"])) for m in ("strict_accuracy", "loose_accuracy")]
        assert f"| {system} | {' | '.join(cells)} |" in md  # IFEval first, then the IF suite, each with its 95% CI
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
    assert tokens["'&lt;'"].split(" | ")[1] == "-4"  # model text is HTML-escaped in the Markdown (it renders as '<')
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


def test_if_tables_carry_reference_rows_and_paired_tests(tiny_study, tmp_path):
    """Tables 1, 3 and 4: the reference systems' rows (marked as such, with their IFEval cells) and a paired-test table
    computed from the stored per-prompt outcomes; checked by hand on outcomes edited so that the test has something to find."""
    _, run_dir, _ = tiny_study
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = run / "eval" / "ifeval" / "response.s0" / "ifeval.json"
    result = json.loads(path.read_text())
    base = {r["key"]: r for r in json.loads((run / "eval" / "ifeval" / "base" / "ifeval.json").read_text())["results"][0]["per_prompt"]}
    assert not any(r["loose"] for r in base.values())  # a random model: so response passing 3 prompts makes 3 discordant pairs
    for row, passed in zip(result["results"][0]["per_prompt"], (True, True, True, False), strict=True):
        row["loose"] = row["strict"] = passed
    path.write_text(json.dumps(result))
    md = write_report(run)["markdown"].read_text()
    echo = json.loads((run / "eval" / "ifeval" / "reference-echo" / "ifeval.json").read_text())["results"][0]
    echo_cells = " | ".join(
        _ci(echo[m]["accuracy"], echo[m]["ci_low"], echo[m]["ci_high"]) for m in ("prompt_strict", "prompt_loose", "instruction_loose")
    )
    for title in ("Table 1", "Table 3", "Table 4"):
        table = _section(md, title)
        assert f"| reference: echo (repeats the prompt) | {echo_cells} |" in table
        assert "| reference: constant (answers “Okay!”) |" in table and "| reference: empty (says nothing) |" in table
        assert "McNemar p (loose)" in table
    # 3 prompts only response passes, none only base: Δ = +75 points, exact McNemar p = 2 * (1/2)^3 = 0.25
    row = next(line for line in _section(md, "Table 1").splitlines() if line.startswith("| response | base | 4 |"))
    assert "| +75.0 [" in row and "| 3 / 0 | 0.250 |" in row
    assert "| response | instruction | 4 |" in _section(md, "Table 1")
    assert "| rules-no_eos | base | 4 | +0.0 [0.0, 0.0] | 0 / 0 | 1.000 |" in _section(md, "Table 4")
    html = (run / "report" / "report.html").read_text()
    assert html.count('<tr class="reference">') == 9  # three reference rows in each of Tables 1, 3 and 4
    assert "IFEval prompt-level loose accuracy, % [95% CI] (4 prompts)" in _section(md, "Headline")


def test_several_seeds_give_mean_std_and_a_ci_pooled_over_seeds(tiny_study, tmp_path):
    """A second seed of the response variant (its outcomes edited): mean ± std over seeds and a CI over both seeds' outcomes
    with one cluster per prompt; against the seedless base each seed is its own paired test (seeds are not extra pairs)."""
    _, run_dir, _ = tiny_study
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    src, dst = run / "eval" / "ifeval" / "response.s0", run / "eval" / "ifeval" / "response.s1"
    shutil.copytree(src, dst)
    step = json.loads((dst / "step.json").read_text())
    step["name"], step["meta"]["system"], step["meta"]["seed"] = "ifeval/response.s1", "response.s1", 1
    result = json.loads((dst / "ifeval.json").read_text())
    for row, passed in zip(result["results"][0]["per_prompt"], (True, True, False, False), strict=True):
        row["loose"] = passed
    step["summary"]["prompt_loose"]["accuracy"] = 0.5
    (dst / "step.json").write_text(json.dumps(step))
    (dst / "ifeval.json").write_text(json.dumps(result))
    manifest = json.loads((run / "manifest.json").read_text())  # the report reads the steps of the run's plan
    manifest["results"]["steps"]["eval/ifeval/response.s1"] = manifest["results"]["steps"]["eval/ifeval/response.s0"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    md = write_report(run)["markdown"].read_text()
    s0 = json.loads((src / "ifeval.json").read_text())["results"][0]
    wins = [[r0["loose"], r1["loose"]] for r0, r1 in zip(s0["per_prompt"], result["results"][0]["per_prompt"], strict=True)]
    acc, (lo, hi) = accuracy_with_ci(wins)
    assert acc == (s0["prompt_loose"]["accuracy"] + 0.5) / 2
    row = next(line for line in _section(md, "Table 1").splitlines() if line.startswith("| response |"))
    assert row.split(" | ")[2] == f"{mean_std([s0['prompt_loose']['accuracy'], 0.5], scale=100)} [{lo * 100:.1f}, {hi * 100:.1f}]"
    table1 = _section(md, "Table 1")
    assert "| response.s0 | base | 4 |" in table1 and "| response.s1 | base | 4 |" in table1  # one test per seed, 4 prompts each
    assert "| response | base |" not in table1


def test_wilson_interval_against_a_hand_computation():
    # k = 0: the interval is [0, z^2 / (n + z^2)]; k = n mirrors it
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 13) == (0.0, pytest.approx(z2 / (13 + z2)))
    assert wilson_interval(13, 13) == (pytest.approx(13 / (13 + z2)), 1.0)
    # k = 4, n = 13 by hand: centre (4/13 + z^2/26) / (1 + z^2/13), half z*sqrt(4*9/13^3 + z^2/(4*13^2)) / (1 + z^2/13)
    centre = (4 / 13 + z2 / 26) / (1 + z2 / 13)
    half = (z2**0.5) * ((4 * 9 / 13**3 + z2 / (4 * 169)) ** 0.5) / (1 + z2 / 13)
    lo, hi = wilson_interval(4, 13)
    assert (lo, hi) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (round(lo, 4), round(hi, 4)) == (0.1268, 0.5763)  # the textbook value for 4/13
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


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
