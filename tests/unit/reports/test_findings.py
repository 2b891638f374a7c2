"""The study findings: computed from a finished judged run's files, worded from their tests, recomputable from the
published outcomes, and the README's copy equal to the published ``docs/results/cpu-study/findings.json``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from implicit_it.reports import read_run
from implicit_it.reports.findings import findings_headline, findings_markdown, ranking_tests, recompute, sentence, study_findings
from implicit_it.reports.judged import adjust, decide_counts, decide_preferences
from implicit_it.stats import holm, sign_test

REPO = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("publish_cpu_study", REPO / "scripts" / "publish_cpu_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def judged_study_config(tiny_llama_dir, shared_data):
    """A tiny study judged by the metric judge against the instruction-tuned model: instruction, response and delusive
    variants, the rule adapter, fewer instructions for the base, the template probe and base/instruction ranking."""
    from implicit_it.app.config import parse_config
    from tests.helpers import study_config_dict

    data = study_config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "response", "delusive"]
    data["run"] = {
        "generate": {
            "ifsuite_prompts": 1,
            "max_new_tokens": 8,
            "batch_size": 4,
            "rule_sets": ["all"],
            "samples": 1,
            "instructions": str(shared_data / "alpaca_eval" / "eval_set.json"),
            "instructions_limit": 8,
            "instructions_limit_by_system": {"base": 6},
        },
        "template": {"enabled": True, "n": 4, "max_new_tokens": 6, "batch_size": 4, "systems": ["base", "response"], "bootstrap": 100},
        "rank": {
            "data": str(shared_data / "lima" / "val_reference_gpt35.json"),
            "systems": ["base", "instruction"],
            "instructions": 6,
            "negatives": 2,
            "max_length": 64,
            "layers": None,
        },
        "probe": {"enabled": False},
        "diff": {"enabled": False},
        "mech": {"enabled": False},
        "eval": {"ifeval": False, "judge": "metric:gated_reference_similarity", "reference": "instruction"},
    }
    return parse_config(data)


@pytest.fixture(scope="module")
def judged_study(tiny_llama_dir, shared_data, tmp_path_factory):
    from implicit_it.app.pipeline import run_study

    run_dir = tmp_path_factory.mktemp("judged") / "run"
    run_study(judged_study_config(tiny_llama_dir, shared_data), run_dir, show_progress=False)
    return run_dir


def _annotations(run_dir: Path, system: str) -> list[dict]:
    return json.loads((run_dir / "eval" / "alpaca" / system / "annotations.json").read_text())


def test_findings_of_a_judged_study_recompute_from_its_files(judged_study):
    """Each test against the instruction-tuned model equals the judge's own verdicts; each test against the base is
    derived from the same per-output scores; Holm runs within each table; seeds are rows, the base's smaller set pairs."""
    f = study_findings(read_run(judged_study))
    json.dumps(f)  # the published document is plain JSON
    systems, rows = f["judged"]["systems"], f["judged"]["decisions"]
    assert set(systems) == {"base", "instruction.s0", "response.s0", "delusive.s0", "rules"}
    assert len(systems["base"]["scores"]) == 6 and len(systems["response.s0"]["scores"]) == 8
    for name in ("base", "response.s0", "delusive.s0", "rules"):
        row = next(r for r in rows if r["system"] == name and r["reference"] == "instruction.s0" and r["subset"] == "all")
        judged = decide_preferences(a["preference"] for a in _annotations(judged_study, name))  # the judge's own verdicts
        assert (row["wins"], row["losses"], row["ties"]) == (judged["wins"], judged["losses"], judged["ties"])
        assert row["p_value"] == sign_test(row["wins"], row["losses"])
    vs_base = next(r for r in rows if r["system"] == "response.s0" and r["reference"] == "base" and r["subset"] == "all")
    base, resp = systems["base"]["scores"], systems["response.s0"]["scores"]
    assert vs_base["n"] == 6 == len(set(base) & set(resp))
    assert vs_base["wins"] == sum(resp[i] > base[i] for i in base) and vs_base["losses"] == sum(resp[i] < base[i] for i in base)
    assert {r["table"] for r in rows} == {"1", "4", "controls"}
    assert not [r for r in rows if r["system"] == "instruction.s0"]  # the positive control is the base's row, counted once
    for table in ("1", "4", "controls"):
        chosen = [r for r in rows if r["table"] == table]
        assert [r["p_holm"] for r in chosen] == holm([r["p_value"] for r in chosen])
    assert f["template"]["systems"].keys() == {"base", "response.s0"} and f["template"]["tests"][0]["system"] == "response.s0"
    import pandas as pd

    pairs = pd.read_parquet(judged_study / "rank" / "base" / "ranking_pairs.parquet")
    (test,) = f["ranking"]["tests"]
    assert test["unit"] == "instruction" and test["n"] == pairs.instruction_index.nunique() < len(pairs)  # instructions, not pairs
    assert recompute(f) == f
    md = findings_markdown(f)
    for title in ("**Positive control**", "**Table 1 —", "**Table 4 —", "**Controls —", "**Template-only", "**Table 2 —"):
        assert title in md
    assert "Q4_K_M GGUF dequantized to fp32" in md


def test_published_outcomes_recompute_and_an_edited_score_is_caught(judged_study, tmp_path):
    """The outcome files hold every judged score and template sample: read back they recompute findings.json exactly, and
    one changed score changes a decision's counts."""
    script = _script()
    f = study_findings(read_run(judged_study))
    doc, files = script.split_outcomes(f)
    assert "scores" not in json.dumps(doc["judged"]["systems"]) and "samples" not in json.dumps(doc["template"])
    for path, rows in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    redone, _ = script.split_outcomes(recompute(script.join_outcomes(doc, tmp_path)))
    assert redone == doc
    path = tmp_path / doc["judged"]["systems"]["response.s0"]["outcomes"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ref = f["judged"]["systems"]["instruction.s0"]["scores"][rows[0]["instruction"]]
    rows[0]["score"] = ref + 1.0 if rows[0]["score"] <= ref else ref - 1.0  # flip that instruction's verdict
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tampered, _ = script.split_outcomes(recompute(script.join_outcomes(doc, tmp_path)))
    assert tampered["judged"]["decisions"] != doc["judged"]["decisions"]


def test_a_fresh_run_with_the_same_seed_reproduces_the_published_study_and_a_difference_is_named(
    judged_study, tiny_llama_dir, shared_data, tmp_path, monkeypatch, capsys
):
    """The whole study (training, generation, judging, template probe, ranking) run again from nothing with the same seed
    gives every published outcome and finding exactly (``--compare``); one changed outcome or loss is named."""
    from implicit_it.app.pipeline import run_study

    script = _script()
    monkeypatch.setattr(script, "OUT", tmp_path / "published")
    doc = script.publish(judged_study, allow_dirty=True)
    again = tmp_path / "again"
    run_study(judged_study_config(tiny_llama_dir, shared_data), again, show_progress=False)
    assert script.compare(again) == 0, capsys.readouterr().err
    outcome = script.OUT / doc["judged"]["systems"]["rules"]["outcomes"]
    rows = outcome.read_text().splitlines()
    row = json.loads(rows[0])
    rows[0] = json.dumps({**row, "score": row["score"] + 0.001})
    outcome.write_text("\n".join(rows) + "\n")
    doc["train"]["response.s0"]["final_loss"] += 1e-9
    (script.OUT / "findings.json").write_text(json.dumps(doc))
    assert script.compare(again) == 1
    err = capsys.readouterr().err
    assert "outcomes/judged/rules.jsonl: 1 of 8 rows differ" in err and "/train/response.s0/final_loss" in err
    assert "train_seconds" not in err  # the machine's load is not the study


def test_a_sentence_claims_a_difference_only_after_holm_and_gives_the_power_otherwise():
    row = {"system": "response.s0", "reference": "instruction.s0", **decide_counts(80, 108, 12)}
    adjust([row, {**row, "p_value": 0.5}])
    text = sentence(row, "Response vs instruction")
    assert row["p_value"] < 0.05 < row["p_holm"]  # significant raw, not after Holm over two tests
    assert "not decided" in text and "80 wins, 108 losses, 12 ties of 200" in text and "about 363 decided pairs" in text
    strong = {"system": "base", "reference": "instruction.s0", **decide_counts(10, 190, 0)}
    adjust([strong])
    assert "**instruction.s0 is better**" in sentence(strong, "Positive control")


def test_the_ranking_test_is_clustered_by_instruction():
    """Two systems on three instructions of 5 pairs each: the unit is the instruction (wins 2, losses 1), not the pair."""
    per = {"base": {0: [5, 5], 1: [1, 5], 2: [3, 5]}, "instruction.s0": {0: [4, 5], 1: [2, 5], 2: [4, 5]}}
    (test,) = ranking_tests(per)
    assert (test["wins"], test["losses"], test["ties"], test["n"]) == (2, 1, 0, 3)
    assert test["p_value"] == sign_test(2, 1) == 1.0


def test_the_readme_findings_are_the_published_files():
    """README.md's findings and docs/results/cpu-study/README.md equal the section rendered from findings.json, whose
    every test recomputes from the published outcomes."""
    res = subprocess.run([sys.executable, "scripts/publish_cpu_study.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    doc = json.loads((REPO / "docs/results/cpu-study/findings.json").read_text())
    for s in doc["judged"]["systems"].values():
        assert (REPO / "docs/results/cpu-study" / s["outcomes"]).is_file()
    for name in ("report.md", "manifest.json"):
        assert (REPO / "docs/results/cpu-study" / name).is_file()
    assert not json.loads((REPO / "docs/results/cpu-study/manifest.json").read_text())["git"]["dirty"]
    readme, page = (REPO / "README.md").read_text(), (REPO / "docs/results/cpu-study/README.md").read_text()
    assert findings_headline(doc) in readme and "**Table 1 —" not in readme  # the README: the headline and a link
    assert findings_markdown(doc) in page and "**Table 1 —" in page  # the study's page: every table


def test_a_number_typed_into_a_results_pages_prose_must_be_a_published_one():
    """Every decimal and count ("N of M") in the prose of each docs/results page is one its generated block or its
    sources give, as given or rounded; a stray, a misrounded p-value or a wrong count is named."""
    script = _script()
    assert script.prose_problems() == []
    page = (REPO / "docs/results/cpu-study/README.md").read_text()
    cited = [(REPO / path).read_text() for path in script.PROSE_SOURCES["cpu-study"]]
    assert script.unsupported_numbers(page, []) != []  # the prose quotes the cited pages too (e.g. the metric's rho)
    assert script.unsupported_numbers(page, cited) == []
    assert script.unsupported_numbers(page.replace("## What it shows", "## What it shows\n\nIt wins 41.7%.", 1), cited) == ["41.7"]
    assert script.unsupported_numbers(page + "\ntorch 2.13.0 and 9.99 points", cited) == ["9.99"]
    assert "34 of 47" in page and "3 of 48" in page  # counts: read from a tally ("34 wins, 13 losses") or a table row
    assert script.unsupported_numbers(page.replace("34 of 47", "35 of 47", 1), cited) == ["35 of 47"]
    assert script.unsupported_numbers(page.replace("3 of 48", "4 of 48", 1), cited) == ["4 of 48"]
    control = (REPO / "docs/results/positive-control/README.md").read_text()
    sources = [(REPO / path).read_text() for path in script.PROSE_SOURCES["positive-control"]]
    assert "p = 9.8e-5" in control  # 9.85e-05 in ladder.json: rounded, not 9.9e-5
    assert script.unsupported_numbers(control.replace("p = 9.8e-5", "p = 9.9e-5", 1), sources) == ["9.9e-5"]
    assert script.unsupported_numbers(control.replace("ties 12 of 200", "ties 13 of 200", 1), sources) == ["13 of 200"]


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

    script = _script()
    head = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert script.dirty_diff(run, allow_dirty=True) == head
    (run / "manifest.json").write_text(json.dumps({"git": {"commit": "abc123", "dirty": False}}))
    assert script.dirty_diff(run, allow_dirty=False) is None
