"""``iit run`` on a tiny random llama: every stage end to end, stage caching, resume after a failure, seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from implicit_it.config import parse_config
from implicit_it.io import atomic_write_json
from implicit_it.pipeline import StageFailed, StudyPlan, parse_seeds, run_study
from implicit_it.pipeline.steps import PENDING_FILE
from tests.helpers import study_config_dict as _config_dict


@pytest.fixture(scope="module")
def study(tiny_study):
    return tiny_study


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _with(cfg, **run_blocks):
    data = cfg.model_dump(mode="json")
    for block, changes in run_blocks.items():
        data["run"][block].update(changes)
    return parse_config(data)


def test_every_stage_runs_and_writes_its_outputs(study):
    cfg, run_dir, outcome = study
    assert set(outcome.statuses.values()) == {"ran"}
    stages = {sid.split("/")[0] for sid in outcome.statuses}
    assert stages == {"train", "generate", "rank", "probe", "diff", "eval", "report"}
    for name in ("instruction.s0", "response.s0", "single_task-gsm.s0"):
        assert (run_dir / "train" / name / "train_manifest.json").is_file()
        assert {"rules.json", "logits.json", "shift.json", "weights.json", "manifest.json"} <= {p.name for p in (run_dir / "diff" / name).iterdir()}
    systems = {p.name for p in (run_dir / "generate" / "ifsuite").iterdir()}
    assert systems == {"base", "instruction.s0", "response.s0", "single_task-gsm.s0", "rules", "rules-no_eos"}
    outputs = json.loads((run_dir / "generate" / "ifsuite" / "rules-no_eos" / "outputs.json").read_text())
    assert len(outputs) == 5 and all("ended_with_eos" in r for r in outputs)
    assert {p.name for p in (run_dir / "rank").iterdir()} == {"base", "response.s0"}
    assert (run_dir / "rank" / "base" / "layerwise_ranking.json").is_file()
    assert {p.name for p in (run_dir / "probe").iterdir()} == {"base", "instruction.s0"}
    assert not (run_dir / "probe" / "base" / "activations").exists()
    ifs = json.loads((run_dir / "eval" / "ifsuite" / "base" / "step.json").read_text())["summary"]
    assert ifs["n"] == 5 and 0 <= ifs["strict_accuracy"] <= 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"config", "data", "packages", "git", "hardware", "seed"} <= set(manifest)
    assert all(s["status"] == "ran" for s in manifest["results"]["steps"].values())
    assert outcome.report == run_dir / "report" / "report.html" and outcome.report.is_file()


def test_a_rerun_skips_every_finished_step_and_changes_nothing(study, tmp_path):
    cfg, run_dir, _ = study
    copy = _copy(run_dir, tmp_path)
    before = (copy / "eval" / "ifsuite" / "response.s0" / "ifsuite.json").read_bytes()
    outcome = run_study(cfg, copy, show_progress=False)
    assert set(outcome.statuses.values()) == {"cached"}
    assert (copy / "eval" / "ifsuite" / "response.s0" / "ifsuite.json").read_bytes() == before


def test_a_changed_stage_config_reruns_only_what_depends_on_it(study, tmp_path):
    cfg, run_dir, _ = study
    copy = _copy(run_dir, tmp_path)
    cfg = _with(cfg, diff={"layers": "0,2"})
    outcome = run_study(cfg, copy, show_progress=False)
    ran = {sid for sid, status in outcome.statuses.items() if status == "ran"}
    assert ran == {"diff/instruction.s0", "diff/response.s0", "diff/single_task-gsm.s0", "report/report"}
    layers = [entry["layer"] for entry in json.loads((copy / "diff" / "response.s0" / "logits.json").read_text())["results"][0]["layers"]]
    assert layers == [0, 2]
    # generation settings feed generation, and through it the evaluation; training and the probes are untouched
    outcome = run_study(_with(cfg, generate={"max_new_tokens": 4}), copy, show_progress=False)
    ran = {sid.split("/")[0] for sid, status in outcome.statuses.items() if status == "ran"}
    assert ran == {"generate", "eval", "report"}


def test_a_failing_stage_names_itself_keeps_finished_steps_and_resumes(study, tmp_path, monkeypatch):
    cfg, run_dir, _ = study
    copy = _copy(run_dir, tmp_path)
    changed = _with(cfg, rank={"negatives": 3})

    def broken(self, step, system):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(StudyPlan, "_run_rank", broken)
    with pytest.raises(StageFailed, match=r"stage 'rank' failed at step rank/base \(inputs: .*val_reference_gpt35.json\).*simulated crash"):
        run_study(changed, copy, show_progress=False)
    assert (copy / "rank" / "base" / "pending.json").is_file() and not (copy / "rank" / "base" / "step.json").exists()
    assert (copy / "train" / "response.s0" / "step.json").is_file()
    statuses = json.loads((copy / "manifest.json").read_text())["results"]["steps"]
    assert statuses["rank/base"]["status"] == "failed" and statuses["train/response.s0"]["status"] == "cached"
    monkeypatch.undo()
    outcome = run_study(changed, copy, show_progress=False)
    ran = {sid for sid, status in outcome.statuses.items() if status == "ran"}
    assert ran == {"rank/base", "rank/response.s0", "report/report"}
    ranking = json.loads((copy / "rank" / "base" / "ranking.json").read_text())["results"][0]
    assert ranking["n_pairs"] == 3 * ranking["n_instructions"]  # the new config's 3 negatives


def test_interrupted_training_resumes_from_its_checkpoint(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    import implicit_it.training as training

    cfg = parse_config(_config_dict(tiny_llama_dir, shared_data) | {"training": {
        **_config_dict(tiny_llama_dir, shared_data)["training"], "variants": ["response"], "max_steps": 3, "keep_checkpoints": True}})
    cfg = _with(cfg, rank={"enabled": False}, probe={"enabled": False}, diff={"enabled": False}, generate={"rule_sets": []})
    plan = StudyPlan(cfg, tmp_path / "run", show_progress=False)
    train = next(s for s in plan.build() if s.stage == "train")
    real = training.train_variant
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["resume"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_variant", spy)
    # a run killed after its checkpoints but before the end: checkpoints on disk, no train manifest, the step pending
    real(cfg, plan.variants[0], out_dir=train.dir, seed=0, show_progress=False)
    (train.dir / "train_manifest.json").unlink()
    atomic_write_json(train.dir / PENDING_FILE, {"key": train.key})
    outcome = run_study(cfg, tmp_path / "run", show_progress=False)
    assert calls == [True] and outcome.statuses["train/response.s0"] == "ran"
    assert json.loads((train.dir / "step.json").read_text())["summary"]["resumed"] is True
    assert (train.dir / "train_manifest.json").is_file()


def test_seeds_repeat_training_dependent_steps_and_the_report_gives_mean_and_std(tiny_llama_dir, shared_data, tmp_path):
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["response"]
    data["run"].update({"rank": {**data["run"]["rank"], "systems": ["response"]}, "probe": {"enabled": False},
                        "diff": {"enabled": False}, "generate": {**data["run"]["generate"], "rule_sets": []}})
    outcome = run_study(parse_config(data), tmp_path / "run", seeds=[1, 2], show_progress=False)
    ids = set(outcome.statuses)
    assert {"train/response.s1", "train/response.s2", "rank/response.s1", "rank/response.s2", "eval/ifsuite/response.s2"} <= ids
    assert not any(".s0" in i for i in ids)
    w1 = (tmp_path / "run" / "train" / "response.s1" / "model.safetensors").read_bytes()
    w2 = (tmp_path / "run" / "train" / "response.s2" / "model.safetensors").read_bytes()
    assert w1 != w2  # a different seed orders the data differently
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "mean ± std over seeds [1, 2]" in md
    row = next(line for line in md.splitlines() if line.startswith("| response |") and "±" in line)
    assert row.count("±") >= 2


def test_parse_seeds():
    assert parse_seeds("1..5") == [1, 2, 3, 4, 5]
    assert parse_seeds("0,2") == [0, 2]
    assert parse_seeds("7") == [7]
    for bad in ("5..1", "a..b", "1,1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_plan_rejects_unknown_systems_and_judge_without_instructions(tiny_llama_dir, shared_data, tmp_path):
    from implicit_it.errors import ConfigError

    data = _config_dict(tiny_llama_dir, shared_data)
    data["run"]["rank"]["systems"] = ["base", "instruct"]
    with pytest.raises(ValueError, match=r"run.rank.systems: unknown system\(s\) \['instruct'\]"):
        StudyPlan(parse_config(data), tmp_path).build()
    data = _config_dict(tiny_llama_dir, shared_data)
    data["run"]["eval"] = {"judge": "gpt4_turbo"}
    with pytest.raises(ConfigError, match="run: Value error, eval.judge is set but generate.instructions is not"):
        parse_config(data)


def test_a_named_judge_compares_every_system_with_the_instruction_tuned_one(tiny_llama_dir, shared_data, tmp_path):
    """``run.eval.judge``: AlpacaEval through alpaca_eval on ``generate.instructions``, each system against the
    instruction-tuned variant (the paper's comparison); here with a local judge (the tiny model, long context)."""
    judge_model = tmp_path / "judge-model"
    shutil.copytree(tiny_llama_dir, judge_model)
    cfg_json = json.loads((judge_model / "config.json").read_text())
    cfg_json["max_position_embeddings"] = 4096  # alpaca_eval's judge prompt is ~700 tokens
    (judge_model / "config.json").write_text(json.dumps(cfg_json))
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "response"]
    data["run"].update({
        "generate": {"ifsuite_prompts": 2, "max_new_tokens": 6, "rule_sets": ["all"],
                     "instructions": str(shared_data / "lima" / "val_instructions.jsonl"), "instructions_limit": 3},
        "rank": {"enabled": False}, "probe": {"enabled": False}, "diff": {"enabled": False},
        "eval": {"judge": f"local:{judge_model}", "reference": "instruction"}})
    cfg = parse_config(data)
    outcome = run_study(cfg, tmp_path / "run", show_progress=False)
    alpaca = sorted(sid for sid in outcome.statuses if sid.startswith("eval/alpaca/"))
    assert alpaca == ["eval/alpaca/base", "eval/alpaca/response.s0", "eval/alpaca/rules"]  # the reference is not judged against itself
    for sid in alpaca:
        result = json.loads((tmp_path / "run" / sid / "alpaca_eval.json").read_text())
        assert result["n"] == 3 and 0 <= result["win_rate"] <= 100
    assert (tmp_path / "run" / "eval" / "judge_cache.json").is_file()
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    win = json.loads((tmp_path / "run" / "eval" / "alpaca" / "response.s0" / "alpaca_eval.json").read_text())["win_rate"]
    assert "win rate vs instruction %" in table1 and f"| {win:.1f} |" in table1.split("| response |")[1].splitlines()[0]
    assert set(run_study(cfg, tmp_path / "run", show_progress=False).statuses.values()) == {"cached"}
