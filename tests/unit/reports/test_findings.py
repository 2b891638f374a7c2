"""The study findings: computed from a finished run's files, worded from their tests, and the README's copy equal to the
published ``docs/results/cpu-study/findings.json``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from implicit_it.reports import read_run
from implicit_it.reports.findings import detectable_difference, findings_markdown, mcnemar_sample_size, study_findings, verdict
from implicit_it.stats import paired_comparison

REPO = Path(__file__).resolve().parents[3]


def test_the_readme_findings_are_the_published_files():
    """README.md's "Findings on Gemma-3-270M" equals the section rendered from docs/results/cpu-study/findings.json."""
    res = subprocess.run([sys.executable, "scripts/publish_cpu_study.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    findings = json.loads((REPO / "docs/results/cpu-study/findings.json").read_text())
    readme = (REPO / "README.md").read_text()
    resp = next(c for c in findings["ifeval"]["comparisons"] if c["a"] == "response.s0" and c["b"] == "base")
    assert f"{100 * resp['difference']:+.1f} [{100 * resp['ci_low']:+.1f}, {100 * resp['ci_high']:+.1f}]" in readme
    for name in ("report.md", "manifest.json", "sweep.json"):
        assert (REPO / "docs/results/cpu-study" / name).is_file()


def test_publishing_refuses_a_run_from_a_dirty_tree_unless_allowed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"git": {"commit": "abc123", "dirty": True}}))
    published = {p: p.stat().st_mtime_ns for p in (REPO / "docs/results/cpu-study").rglob("*")}
    readme = (REPO / "README.md").read_text()
    res = subprocess.run([sys.executable, "scripts/publish_cpu_study.py", str(run)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1
    assert "git tree was dirty" in res.stderr and "abc123" in res.stderr and "--allow-dirty" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in (REPO / "docs/results/cpu-study").rglob("*")} == published
    assert (REPO / "README.md").read_text() == readme

    spec = importlib.util.spec_from_file_location("publish_cpu_study", REPO / "scripts" / "publish_cpu_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    head = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert script.dirty_diff(run, allow_dirty=True) == head
    (run / "manifest.json").write_text(json.dumps({"git": {"commit": "abc123", "dirty": False}}))
    assert script.dirty_diff(run, allow_dirty=False) is None


def test_findings_of_a_finished_study_recompute_from_its_files(tiny_study):
    """Every paired test equals one computed here from the per-prompt rows; accuracies and CIs come from the same rows."""
    _, run_dir, _ = tiny_study
    f = study_findings(read_run(run_dir))
    json.dumps(f)  # the published document is plain JSON
    ife = f["ifeval"]

    def loose(system: str) -> dict[int, bool]:
        data = json.loads((run_dir / "eval" / "ifeval" / system / "ifeval.json").read_text())
        return {r["key"]: bool(r["loose"]) for r in data["results"][0]["per_prompt"]}

    assert {"base", "rules"} <= set(ife["systems"]) and ife["comparisons"]
    for c in ife["comparisons"]:
        a, b = loose(c["a"]), loose(c["b"])
        keys = sorted(set(a) & set(b))
        expected = paired_comparison(np.array([a[k] for k in keys]), np.array([b[k] for k in keys])).to_json()
        assert {k: c[k] for k in expected} == expected
    for name, s in ife["systems"].items():
        rows = loose(name)
        assert s["own"]["n"] == len(rows) and s["own"]["accuracy"] == pytest.approx(sum(rows.values()) / len(rows))
    rk = f["ranking"]
    for c in rk["comparisons"]:
        assert c["b"] == "base" and c["n"] == rk["systems"][c["a"]]["n_pairs"]
    md = findings_markdown(f)
    for title in ("Table 1", "Table 2", "Table 3", "Table 4"):
        assert f"**{title} —" in md
    assert "| base |" in md and "| rules |" in md


def test_a_verdict_claims_a_difference_only_below_alpha():
    c = {"difference": 0.12, "ci_low": 0.04, "ci_high": 0.2, "p_value": 0.004, "n": 100}
    assert verdict(c, "response", "base").startswith("response scores higher than base")
    c |= {"difference": -0.12, "ci_low": -0.2, "ci_high": -0.04}
    assert "scores lower than base" in verdict(c, "response", "base")
    c |= {"p_value": 0.06}
    text = verdict(c, "response", "base")
    assert "not distinguishable" in text and "from -20.0 to -4.0 points" in text


def test_mcnemar_sample_size_and_the_detectable_gap():
    """Connor (1987): discordant 10% vs 5% needs 469 pairs at 80% power; the detectable gap shrinks with n and needs
    no more pairs than given."""
    assert mcnemar_sample_size(0.10, 0.05) == mcnemar_sample_size(0.05, 0.10) == 469
    assert mcnemar_sample_size(0.10, 0.05, power=0.9) > 469
    with pytest.raises(ValueError):
        mcnemar_sample_size(0.1, 0.1)
    gap_541, gap_200 = detectable_difference(541, 0.15), detectable_difference(200, 0.15)
    assert gap_541 is not None and gap_200 is not None and gap_541 < gap_200 < 0.15
    p_b = (0.15 - gap_541) / 2
    assert mcnemar_sample_size(p_b + gap_541, p_b) <= 541
    assert detectable_difference(48, 0.15) is None  # 48 prompts cannot decide any gap at that discordance


def test_the_controls_get_their_own_table_and_tests_when_trained(tiny_study):
    """A study with a ``delusive`` variant shows it beside instruction tuning, tested against it and against the base."""
    import copy

    _, run_dir, _ = tiny_study
    f = study_findings(read_run(run_dir))
    assert "**Controls —" not in findings_markdown(f)  # none trained: no section
    ife = f["ifeval"]
    inst = next(n for n, s in ife["systems"].items() if s["label"] == "instruction")
    ife["systems"]["delusive.s0"] = copy.deepcopy(ife["systems"][inst]) | {"label": "delusive"}
    ife["comparisons"] += [c | {"a": "delusive.s0"} for c in ife["comparisons"] if c["a"] == inst and c["b"] == "base"]
    md = findings_markdown(f)
    controls = md[md.index("**Controls —") :]
    assert "| delusive |" in controls and "delusive.s0" in controls and "| instruction |" in controls
