"""The positive-control ladder script: decisions computed from per-instruction outcomes (sign test, exact interval,
Holm over rungs, power), the published files, and ``--check`` catching a number that no longer recomputes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def ladder(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("positive_control_ladder", REPO / "scripts" / "positive_control_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "published")
    return module


def fake_run(root: Path, examples: int, prefs: list[float], non_answers: int = 4) -> Path:
    """The files one rung's `iit run` leaves that the script reads."""
    run = root / f"run{examples}"
    (run / "train" / "instruction.s0").mkdir(parents=True)
    (run / "train" / "instruction.s0" / "train_manifest.json").write_text(
        json.dumps(
            {
                "results": {
                    "data": {"n_train_examples": examples, "n_truncated": 3},
                    "epochs": 1,
                    "optimizer_steps": examples // 8,
                    "tokens_seen": 100 * examples,
                    "final_loss": 2.5,
                    "val_nll": 1.9,
                },
                "timings_seconds": {"train": 60.0},
            }
        )
    )
    step = run / "eval" / "alpaca" / "instruction.s0"
    step.mkdir(parents=True)
    (step / "alpaca_eval.json").write_text(
        json.dumps(
            {"analysis": "alpaca_eval", "results": [{"judge": "metric:x", "generator": "instruction.s0", "reference_generator": "base"}]}
        )
    )
    annotations = [
        # the first base outputs are non-answers (the gated metric's -1): left out of the "both answered" comparison
        {"instruction": f"i{k}", "score_1": -1.0 if k < non_answers else 0.5, "score_2": 0.5 + (p - 1.5), "preference": p}
        for k, p in enumerate(prefs)
    ]
    (step / "annotations.json").write_text(json.dumps(annotations))
    for system, eos in (("base", False), ("instruction.s0", True)):
        (run / "generate" / "alpaca" / system).mkdir(parents=True)
        outputs = [{"instruction": f"i{k}", "output": "x", "ended_with_eos": eos} for k in range(len(prefs))]
        (run / "generate" / "alpaca" / system / "outputs.json").write_text(json.dumps(outputs))
    (run / "manifest.json").write_text(json.dumps({"config": {"run": {"generate": {"max_new_tokens": 256}}}, "git": {"dirty": False}}))
    return run


def test_decisions_follow_the_outcomes_and_check_catches_a_changed_number(tmp_path, ladder):
    small = fake_run(tmp_path, 64, [2.0] * 8 + [1.0] * 2 + [1.5] * 2)  # 8 wins, 2 losses, 2 ties
    large = fake_run(tmp_path, 256, [2.0] * 18 + [1.0] * 2, non_answers=0)  # 18 wins, 2 losses; both always answer
    published = ladder.publish([large, small])
    rows = published["decisions"]
    # the content-only test only where a model gave non-answers (else it is the same test)
    assert [(r["run"], r["subset"]) for r in rows] == [("run64", "all"), ("run64", "both answered"), ("run256", "all")]
    assert {(r["system"], r["reference"]) for r in rows} == {("instruction.s0", "base")}
    every, answered = rows[0], rows[1]
    assert (every["wins"], every["losses"], every["ties"]) == (8, 2, 2)
    assert every["p_value"] == pytest.approx(112 / 1024)  # 2 * P(X <= 2), X ~ Bin(10, 1/2)
    assert every["win_rate_with_ties"] == pytest.approx(100 * 9 / 12)
    assert (answered["n"], answered["wins"], answered["losses"], answered["ties"]) == (8, 4, 2, 2)  # the first 4 wins left out
    assert rows[2]["p_value"] == pytest.approx(2 * 211 / 2**20)  # 2 * P(X <= 2), X ~ Bin(20, 1/2)
    # Holm over the 3 tests: the smallest p times 3
    assert rows[2]["p_holm"] == pytest.approx(3 * rows[2]["p_value"])
    assert rows[2]["system_better"] and not every["system_better"] and not every["significant"]
    lo, hi = every["decided_ci"]
    assert lo < 0.5 < hi  # the exact interval agrees with the non-significant test
    assert published["runs"][0]["cap"] == {"base": {"n": 12, "hit_cap": 12}, "instruction.s0": {"n": 12, "hit_cap": 0}}
    assert len((ladder.OUT / "outcomes" / "run64" / "instruction.s0-vs-base.jsonl").read_text().splitlines()) == 12
    assert "| run64 | 64 | instruction.s0 (3) | 8 | 6400 | 60 | 2.500 | 1.9000 |" in published["table"]
    assert "| run64 | base | 4 of 12 | 12 of 12 |" in published["table"]
    (ladder.OUT / "README.md").write_text("# Ladder\n\n" + published["table"] + "\n")
    assert ladder.check() == 0
    edited = json.loads((ladder.OUT / "ladder.json").read_text())
    edited["decisions"][0]["p_value"] = 0.01
    (ladder.OUT / "ladder.json").write_text(json.dumps(edited))
    assert ladder.check() == 1


def test_the_published_ladder_recomputes_from_its_outcomes():
    """docs/results/positive-control: every decision and the README's table recompute from the published outcomes."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "scripts/positive_control_ladder.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
