"""``iit run`` on a tiny random llama: every stage end to end, stage caching, resume after a failure, seeds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import StageFailed, StudyPlan, parse_seeds, run_study
from implicit_it.app.pipeline.steps import PENDING_FILE
from implicit_it.io import atomic_write_json
from implicit_it.models import load_tokenizer
from tests.helpers import study_config_dict as _config_dict


@pytest.fixture(scope="module")
def study(tiny_study):
    return tiny_study


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _entry(path: Path) -> dict:
    """A single-model result file's entry (the envelope ``{"results": [entry]}`` or, as written before, the bare entry)."""
    data = json.loads(path.read_text())
    return data["results"][0] if isinstance(data.get("results"), list) else data


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
        assert {"rules.json", "logits.json", "shift.json", "weights.json", "manifest.json"} <= {
            p.name for p in (run_dir / "diff" / name).iterdir()
        }
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
    import implicit_it.training.stage as training  # the train stage calls train_variant

    cfg = parse_config(
        _config_dict(tiny_llama_dir, shared_data)
        | {
            "training": {
                **_config_dict(tiny_llama_dir, shared_data)["training"],
                "variants": ["response"],
                "max_steps": 3,
                "keep_checkpoints": True,
            }
        }
    )
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
    data["run"].update(
        {
            "rank": {**data["run"]["rank"], "systems": ["response"]},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
            "generate": {**data["run"]["generate"], "rule_sets": []},
        }
    )
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


def test_seeds_by_variant_trains_and_evaluates_every_seed_and_analyses_the_shared_one(tiny_llama_dir, shared_data, tmp_path):
    """``run.seeds_by_variant``: three seeds of one variant, one of the others; the extra seeds are trained, generated and
    evaluated, the analyses read the seed the variant shares with ``seeds``; a name outside the study is an error."""
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "response"]
    data["run"]["seeds_by_variant"] = {"response": [0, 1, 2]}
    data["run"]["diff"] = {"enabled": True}
    ids = {s.id for s in StudyPlan(parse_config(data), tmp_path / "run").build()}
    trained = {i for i in ids if i.startswith("train/")}
    assert trained == {"train/instruction.s0", "train/response.s0", "train/response.s1", "train/response.s2"}
    assert {"eval/ifeval/response.s1", "eval/ifsuite/response.s2", "generate/ifeval/response.s2"} <= ids
    for stage in ("rank", "diff"):
        assert {i for i in ids if i.startswith(f"{stage}/response")} == {f"{stage}/response.s0"}
    data["run"]["seeds_by_variant"] = {"single_task-gsm": [1]}
    with pytest.raises(ValueError, match=r"run.seeds_by_variant: \['single_task-gsm'\] not among the study's variants"):
        StudyPlan(parse_config(data), tmp_path / "other").build()
    from implicit_it.errors import ConfigError

    for bad, match in (({"respons": [1]}, "unknown variant 'respons'"), ({"response": [1, 1]}, "response: seeds must be distinct")):
        data["run"]["seeds_by_variant"] = bad
        with pytest.raises(ConfigError, match=f"run.seeds_by_variant.*{match}"):
            parse_config(data)


def test_ifeval_prompts_by_system_gives_the_named_pair_more_prompts(tiny_llama_dir, shared_data, tmp_path):
    """``run.eval.ifeval_prompts_by_system``: a system named (by name or label) generates on and is scored on its own
    stratified draw, the others on ``ifeval_prompts``'s, and the reference systems score the largest."""
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["response"]
    data["training"]["max_steps"] = 1
    data["run"].update(
        {
            "generate": {"ifsuite_prompts": 2, "max_new_tokens": 4, "rule_sets": ["all"]},
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
            "eval": {"ifeval_prompts": 3, "ifeval_prompts_by_system": {"base": 5, "response.s0": 5}},
        }
    )
    cfg = parse_config(data)
    run_study(cfg, tmp_path / "run", show_progress=False)

    def keys(system: str) -> set[int]:
        rows = json.loads((tmp_path / "run" / "eval" / "ifeval" / system / "ifeval.json").read_text())["results"][0]["per_prompt"]
        return {r["key"] for r in rows}

    assert len(keys("base")) == len(keys("response.s0")) == len(keys("reference-echo")) == 5 and len(keys("rules")) == 3
    assert keys("base") == keys("response.s0") == keys("reference-echo") and keys("rules") != keys("base")
    outputs = json.loads((tmp_path / "run" / "generate" / "ifeval" / "rules" / "outputs.json").read_text())
    assert len(outputs) == 3
    data["run"]["eval"]["ifeval_prompts_by_system"] = {"response.s1": 5}
    with pytest.raises(ValueError, match=r"run.eval.ifeval_prompts_by_system: unknown system\(s\) \['response.s1'\]"):
        StudyPlan(parse_config(data), tmp_path / "other").build()


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


def _long_context_judge(tiny_llama_dir, tmp_path) -> Path:
    """A copy of the tiny model that accepts alpaca_eval's ~700-token judge prompt."""
    judge_model = tmp_path / "judge-model"
    shutil.copytree(tiny_llama_dir, judge_model)
    cfg_json = json.loads((judge_model / "config.json").read_text())
    cfg_json["max_position_embeddings"] = 4096
    (judge_model / "config.json").write_text(json.dumps(cfg_json))
    return judge_model


def test_a_named_judge_compares_every_system_with_the_instruction_tuned_one(tiny_llama_dir, shared_data, tmp_path):
    """``run.eval.judge``: AlpacaEval through alpaca_eval on ``generate.instructions``, each system against the
    instruction-tuned variant (the paper's comparison); here with a local judge (the tiny model, long context)."""
    judge_model = _long_context_judge(tiny_llama_dir, tmp_path)
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "response"]
    data["run"].update(
        {
            "generate": {
                "ifsuite_prompts": 2,
                "max_new_tokens": 6,
                "rule_sets": ["all"],
                "instructions": str(shared_data / "lima" / "val_instructions.jsonl"),
                "instructions_limit": 3,
            },
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
            "eval": {**data["run"]["eval"], "judge": f"local:{judge_model}", "reference": "instruction"},
        }
    )
    cfg = parse_config(data)
    outcome = run_study(cfg, tmp_path / "run", show_progress=False)
    alpaca = sorted(sid for sid in outcome.statuses if sid.startswith("eval/alpaca/"))
    assert alpaca == ["eval/alpaca/base", "eval/alpaca/response.s0", "eval/alpaca/rules"]  # the reference is not judged against itself
    for sid in alpaca:
        result = _entry(tmp_path / "run" / sid / "alpaca_eval.json")
        assert result["n"] == 3 and 0 <= result["win_rate"] <= 100
    assert (tmp_path / "run" / "eval" / "judge_cache.json").is_file()
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    win = _entry(tmp_path / "run" / "eval" / "alpaca" / "response.s0" / "alpaca_eval.json")["win_rate"]
    assert "win rate vs instruction % [95% CI]" in table1 and f"| {win:.1f} [" in table1.split("| response |")[1].splitlines()[0]
    assert set(run_study(cfg, tmp_path / "run", show_progress=False).statuses.values()) == {"cached"}


def test_a_metric_judge_scores_each_system_against_the_instruction_tuned_one_by_the_gold_answers(
    tiny_llama_dir, shared_data, tmp_path, monkeypatch
):
    """``run.eval.judge: metric:NAME``: the paper's pairwise comparison with a judge-free metric; each preference is the
    metric's verdict between the two outputs, scored against AlpacaEval's GPT-4 answer to the instruction."""
    import numpy as np

    from implicit_it.embedding import Embedder

    monkeypatch.setenv("IIT_CACHE_DIR", str(tmp_path / "cache"))
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "response"]
    eval_set = shared_data / "alpaca_eval" / "eval_set.json"
    data["run"].update(
        {
            "generate": {
                "ifsuite_prompts": 1,
                "max_new_tokens": 8,
                "rule_sets": [],
                "instructions": str(eval_set),
                "instructions_limit": 4,
            },
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
            "eval": {**data["run"]["eval"], "judge": "metric:reference_similarity", "reference": "instruction"},
        }
    )
    outcome = run_study(parse_config(data), tmp_path / "run", show_progress=False)
    assert sorted(s for s in outcome.statuses if s.startswith("eval/alpaca/")) == ["eval/alpaca/base", "eval/alpaca/response.s0"]
    step = tmp_path / "run" / "eval" / "alpaca" / "response.s0"
    result = _entry(step / "alpaca_eval.json")
    assert result["judge"] == "metric:reference_similarity" and result["n"] == 4
    gold = {r["instruction"]: r["output"] for r in json.loads(eval_set.read_text())[:4]}
    mine = {
        o["instruction"]: o["output"]
        for o in json.loads((tmp_path / "run" / "generate" / "alpaca" / "response.s0" / "outputs.json").read_text())
    }
    ref = {
        o["instruction"]: o["output"]
        for o in json.loads((tmp_path / "run" / "generate" / "alpaca" / "instruction.s0" / "outputs.json").read_text())
    }
    annotations = json.loads((step / "annotations.json").read_text())
    assert [a["instruction"] for a in annotations] == list(gold)
    assert result["win_rate"] == pytest.approx(100 * np.mean([a["preference"] - 1 for a in annotations]))
    emb = Embedder()  # fp32, one call per instruction: another batch than the run's, so only clear verdicts must agree
    for a in annotations:
        r, m, g = emb([ref[a["instruction"]], mine[a["instruction"]], gold[a["instruction"]]])
        assert (a["output_1"], a["output_2"]) == (ref[a["instruction"]], mine[a["instruction"]])
        assert a["score_1"] == pytest.approx(r @ g, abs=2e-3) and a["score_2"] == pytest.approx(m @ g, abs=2e-3)
        if abs(m @ g - r @ g) > 5e-3:
            assert a["preference"] == (2.0 if m @ g > r @ g else 1.0)
    assert np.isfinite(result["standard_error"])


def _judged_config(tiny_llama_dir, shared_data, tmp_path, *, variants, instructions, limit, rule_sets, lc_data=None):
    judge_model = _long_context_judge(tiny_llama_dir, tmp_path)
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = variants
    data["run"].update(
        {
            "generate": {
                "ifsuite_prompts": 1,
                "max_new_tokens": 6,
                "rule_sets": rule_sets,
                "instructions": str(instructions),
                "instructions_limit": limit,
            },
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
            "eval": {
                **data["run"]["eval"],
                "judge": f"local:{judge_model}",
                "reference": "instruction",
                "lc_data": str(lc_data) if lc_data else None,
            },
        }
    )
    return data


def test_a_run_reports_the_length_controlled_win_rate_with_lc_data(tiny_llama_dir, shared_data, tmp_path):
    """With AlpacaEval's instruction set and an LC data folder, every judged system gets an LC win rate
    (each instruction placed in the whole 805-instruction file, not in the limited subset), and the report shows it."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    lc = tmp_path / "lc"
    lc.mkdir()
    pd.DataFrame(
        [
            dict(
                model=m,
                index=i,
                preference=float(rng.uniform()),
                std_delta_len=float(rng.normal()),
                instruction_difficulty=float(rng.normal()),
                not_gamed_baseline=False,
            )
            for m in ("gamed_long", "gamed_short")
            for i in range(805)
        ]
    ).to_csv(lc / "df_gamed.csv", index=False)
    data = _judged_config(
        tiny_llama_dir,
        shared_data,
        tmp_path,
        variants=["instruction", "response"],
        instructions=shared_data / "alpaca_eval" / "eval_set.json",
        limit=4,
        rule_sets=[],
        lc_data=lc,
    )
    data["training"]["max_steps"] = 1
    outcome = run_study(parse_config(data), tmp_path / "run", show_progress=False)
    alpaca = sorted(sid for sid in outcome.statuses if sid.startswith("eval/alpaca/"))
    assert alpaca == ["eval/alpaca/base", "eval/alpaca/response.s0"]
    for sid in alpaca:
        result = _entry(tmp_path / "run" / sid / "alpaca_eval.json")
        assert isinstance(result["lc_win_rate"], float) and 0 <= result["lc_win_rate"] <= 100, result["lc_note"]
        assert result["lc_scope"] == "subset" and result["n"] == 4 and "4 of the 805" in result["lc_note"]
        assert json.loads((tmp_path / "run" / sid / "step.json").read_text())["summary"]["lc_win_rate"] == result["lc_win_rate"]
    lc_response = _entry(tmp_path / "run" / "eval" / "alpaca" / "response.s0" / "alpaca_eval.json")["lc_win_rate"]
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    row = md.split("## Table 1")[1].split("| response |")[1].splitlines()[0]
    assert f"| {lc_response:.1f} [" in row


def test_each_system_generates_up_to_its_own_cap(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    """``run.generate.max_new_tokens_by_system`` (the paper: 512 for rules-no_eos, 8192 for the rest) reaches the
    generation call, the outputs and the step key; an unknown label is an error naming the field."""
    import implicit_it.engines as engines

    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["response"]
    data["training"]["max_steps"] = 1
    data["run"].update(
        {
            "generate": {
                "ifsuite_prompts": 2,
                "max_new_tokens": 9,
                "rule_sets": ["all", "no_eos"],
                "max_new_tokens_by_system": {"rules-no_eos": 3, "response": 5},
            },
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
        }
    )
    cfg = parse_config(data)
    real, caps = engines.generate_responses, {}

    def spy(loaded, instructions, **kwargs):
        caps[len(caps)] = kwargs["max_new_tokens"]
        return real(loaded, instructions, **kwargs)

    monkeypatch.setattr(engines, "generate_responses", spy)
    plan = StudyPlan(cfg, tmp_path / "run", show_progress=False)
    keys = {s.name: s.config["max_new_tokens"] for s in plan.build() if s.stage == "generate"}
    caps_by_system = {"base": 9, "response.s0": 5, "rules": 9, "rules-no_eos": 3}
    assert keys == {f"{bench}/{name}": cap for bench in ("ifsuite", "ifeval") for name, cap in caps_by_system.items()}  # IFEval too
    run_study(cfg, tmp_path / "run", show_progress=False)
    assert sorted(caps.values()) == [3, 3, 5, 5, 9, 9, 9, 9]
    for name, cap in keys.items():
        records = json.loads((tmp_path / "run" / "generate" / name / "outputs.json").read_text())
        assert all(r["n_tokens"] <= cap for r in records)
        if not name.endswith("/rules"):  # the EOS rule may stop the full adapter early; the others run to their cap
            assert max(r["n_tokens"] for r in records) == cap
    data["run"]["generate"]["max_new_tokens_by_system"] = {"rules-no-eos": 3}
    with pytest.raises(ValueError, match=r"run.generate.max_new_tokens_by_system: unknown system\(s\) \['rules-no-eos'\]"):
        StudyPlan(parse_config(data), tmp_path / "other").build()


def test_each_system_reads_its_own_share_of_the_judged_instructions(tiny_llama_dir, shared_data, tmp_path):
    """``run.generate.instructions_limit_by_system`` (the study: 400 instructions for the decisive contrast, fewer for a
    slow proxy) reaches each generate step's key and instruction list; a limit above the reference's is a plan error."""
    data = _judged_config(
        tiny_llama_dir,
        shared_data,
        tmp_path,
        variants=["instruction", "response"],
        instructions=shared_data / "lima" / "val_instructions.jsonl",
        limit=4,
        rule_sets=["all"],
    )
    data["run"]["generate"]["instructions_limit_by_system"] = {"rules": 2, "base": 3}
    plan = StudyPlan(parse_config(data), tmp_path / "run", show_progress=False)
    keys = {s.name: s.config["instructions"][1] for s in plan.build() if s.stage == "generate" and s.name.startswith("alpaca/")}
    assert keys == {"alpaca/base": 3, "alpaca/rules": 2, "alpaca/instruction.s0": 4, "alpaca/response.s0": 4}
    by_name = {s.name: s for s in plan.systems}
    assert [len(plan._instructions("alpaca", by_name[n])) for n in ("rules", "base", "response.s0")] == [2, 3, 4]
    assert plan._instructions("alpaca", by_name["rules"]) == plan._instructions("alpaca", by_name["response.s0"])[:2]
    data["run"]["generate"]["instructions_limit_by_system"] = {"response": 5}
    with pytest.raises(ValueError, match=r"instructions_limit_by_system: response.s0 would be judged on 5 instructions but its reference"):
        StudyPlan(parse_config(data), tmp_path / "other").build()
    data["run"]["generate"]["instructions_limit_by_system"] = {"rule": 5}
    with pytest.raises(ValueError, match=r"run.generate.instructions_limit_by_system: unknown system\(s\) \['rule'\]"):
        StudyPlan(parse_config(data), tmp_path / "other").build()


def test_alpaca_pairs_each_seed_with_the_same_seed_of_the_reference(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    """The paper: response seed s against instruction seed s; the seedless base and rules against every
    instruction seed, reported as mean ± std over those pairs."""
    import implicit_it.evaluation.stage as evaluation  # the alpaca stage calls annotate

    data = _judged_config(
        tiny_llama_dir,
        shared_data,
        tmp_path,
        variants=["instruction", "response"],
        instructions=shared_data / "lima" / "val_instructions.jsonl",
        limit=2,
        rule_sets=["all"],
    )
    data["training"]["max_steps"] = 1
    real, judged = evaluation.annotate, {}

    def spy(pairs, judge, judge_dir, *, generator, cache_path, gold=None):
        judged.setdefault(generator, []).append([(r.output, o.output) for r, o in pairs])
        return real(pairs, judge, judge_dir, generator=generator, cache_path=cache_path, gold=gold)

    monkeypatch.setattr(evaluation, "annotate", spy)
    outcome = run_study(parse_config(data), tmp_path / "run", seeds=[1, 2], show_progress=False)
    alpaca = sorted(sid for sid in outcome.statuses if sid.startswith("eval/alpaca/"))
    assert alpaca == [
        "eval/alpaca/base/vs-instruction.s1",
        "eval/alpaca/base/vs-instruction.s2",
        "eval/alpaca/response.s1",
        "eval/alpaca/response.s2",
        "eval/alpaca/rules/vs-instruction.s1",
        "eval/alpaca/rules/vs-instruction.s2",
    ]

    def outputs(system):
        return [r["output"] for r in json.loads((tmp_path / "run" / "generate" / "alpaca" / system / "outputs.json").read_text())]

    ref = {s: outputs(f"instruction.s{s}") for s in (1, 2)}
    assert ref[1] != ref[2]  # the seeds' references differ, so a wrong pairing would show
    for seed in (1, 2):
        assert judged[f"response.s{seed}"] == [list(zip(ref[seed], outputs(f"response.s{seed}"), strict=True))]
        result = _entry(tmp_path / "run" / "eval" / "alpaca" / f"response.s{seed}" / "alpaca_eval.json")
        assert result["reference_generator"] == f"instruction.s{seed}"
    for system in ("base", "rules"):
        assert judged[system] == [list(zip(ref[s], outputs(system), strict=True)) for s in (1, 2)]
    wins = [
        _entry(tmp_path / "run" / "eval" / "alpaca" / "rules" / f"vs-instruction.s{s}" / "alpaca_eval.json")["win_rate"] for s in (1, 2)
    ]
    import statistics

    md = (tmp_path / "run" / "report" / "report.md").read_text()
    table4 = md.split("## Table 4")[1].split("\n## ")[0]
    assert f"| {statistics.mean(wins):.1f} ± {statistics.stdev(wins):.1f} [" in table4.split("| rules |")[1].splitlines()[0]
    assert "mean ± std over the reference's seeds [1, 2]" in table4


def test_paper_switches_reach_the_ranking_draws_and_the_rule_adapter(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    """``run.rank.self_draws`` reaches the ranking draws and the config's chat format the rule adapter's tag search."""
    import implicit_it.app.pipeline.stages as stages
    import implicit_it.engines as engines
    import implicit_it.probes as probes
    import implicit_it.probes.stage as probe_stage
    import implicit_it.rules as rules

    data = _config_dict(tiny_llama_dir, shared_data)
    data["format"] = "ab_tags"
    data["training"]["variants"] = ["response"]
    data["training"]["max_steps"] = 1
    data["run"].update(
        {
            "generate": {"ifsuite_prompts": 2, "max_new_tokens": 4, "rule_sets": ["all"]},
            "rank": {**data["run"]["rank"], "systems": ["base"], "self_draws": "drop"},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
        }
    )
    seen: dict[str, object] = {}
    real_groups, real_adapter = probes.build_ranking_groups, rules.RuleAdapter

    def groups_spy(source, **kw):
        seen["self_draws"] = kw.get("self_draws")
        return real_groups(source, **kw)

    class AdapterSpy(real_adapter):
        def __init__(self, tokenizer, config=None, **kw):
            super().__init__(tokenizer, config, **kw)
            seen["user_tag_ids"] = self.user_tag_ids

    monkeypatch.setattr(probes, "build_ranking_groups", groups_spy)
    monkeypatch.setattr(rules, "RuleAdapter", AdapterSpy)
    monkeypatch.setattr(stages, "build_ranking_groups", groups_spy, raising=False)
    monkeypatch.setattr(probe_stage, "build_ranking_groups", groups_spy)
    monkeypatch.setattr(engines, "RuleAdapter", AdapterSpy)
    run_study(parse_config(data), tmp_path / "run", show_progress=False)
    tok = load_tokenizer(str(tiny_llama_dir))
    assert seen["self_draws"] == "drop"
    assert tok.decode(seen["user_tag_ids"]).strip() == "<|A|>"  # the ab_tags format's user tag, not Tulu's


def test_ifeval_runs_for_every_system_beside_the_reference_systems(study):
    """IFEval: generated and scored per system on the configured stratified subset, the reference systems scored without generating."""
    from implicit_it.evaluation.ifeval import load_ifeval

    cfg, run_dir, outcome = study
    subset = [p.prompt for p in load_ifeval(cfg.run.eval.ifeval_data, limit=4, seed=0)]
    systems = {"base", "instruction.s0", "response.s0", "single_task-gsm.s0", "rules", "rules-no_eos"}
    references = {"reference-constant", "reference-echo", "reference-empty"}
    assert {p.name for p in (run_dir / "generate" / "ifeval").iterdir()} == systems
    assert {p.name for p in (run_dir / "eval" / "ifeval").iterdir()} == systems | references
    assert {p.name for p in (run_dir / "eval" / "ifsuite").iterdir()} == systems | references
    for name in systems:
        outputs = json.loads((run_dir / "generate" / "ifeval" / name / "outputs.json").read_text())
        assert [r["instruction"] for r in outputs] == subset
        result = _entry(run_dir / "eval" / "ifeval" / name / "ifeval.json")
        assert [r["response"] for r in result["per_prompt"]] == [r["output"] for r in outputs]
        assert result["n_prompts"] == 4 and (run_dir / "eval" / "ifeval" / name / "ifeval.parquet").is_file()
        summary = json.loads((run_dir / "eval" / "ifeval" / name / "step.json").read_text())["summary"]
        assert summary["prompt_loose"] == result["prompt_loose"]
    echo = _entry(run_dir / "eval" / "ifeval" / "reference-echo" / "ifeval.json")
    assert [r["response"] for r in echo["per_prompt"]] == subset
    assert outcome.statuses["eval/ifeval/reference-empty"] == "ran" and "generate/ifeval/reference-empty" not in outcome.statuses
    empty = json.loads((run_dir / "eval" / "ifsuite" / "reference-empty" / "step.json").read_text())["summary"]
    assert empty["strict_accuracy"] == 0 and empty["n"] == 5


def test_ifeval_keys_cover_the_data_file_and_subset_size_and_it_can_be_switched_off(tiny_llama_dir, shared_data, tmp_path):
    from implicit_it.errors import ConfigError

    data = _config_dict(tiny_llama_dir, shared_data)
    copy = tmp_path / "input_data.jsonl"
    shutil.copy(shared_data / "ifeval" / "input_data.jsonl", copy)
    data["run"]["eval"]["ifeval_data"] = str(copy)

    def keys(d):
        return {s.id: s.key for s in StudyPlan(parse_config(d), tmp_path / "run").build()}

    before = keys(data)
    data["run"]["eval"]["ifeval_prompts"] = 6
    changed = {sid for sid, key in keys(data).items() if before[sid] != key}
    ifeval = {sid for sid in before if "/ifeval/" in sid}
    assert changed == ifeval | {"report/report"} and len(ifeval) == 6 + 6 + 3
    data["run"]["eval"]["ifeval_prompts"] = 4
    copy.write_text(copy.read_text() + "\n")  # same prompts, another file: its sha256 is in the key
    assert {sid for sid, key in keys(data).items() if before[sid] != key} == ifeval | {"report/report"}
    data["run"]["eval"]["ifeval"] = False
    assert not any("ifeval" in sid for sid in keys(data))
    data["run"]["eval"].update(ifeval=True, ifeval_data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="run.eval.ifeval_data: .*missing.jsonl: file not found"):
        keys(data)
    data["run"]["eval"]["ifeval_data"] = "hub:ifevl"
    with pytest.raises(ConfigError, match="run.eval.ifeval_data: .*unknown hub source 'hub:ifevl'"):
        parse_config(data)
    data["run"]["eval"].update(ifeval_data=str(copy), ifeval_prompts=0)
    with pytest.raises(ConfigError, match="run.eval.ifeval_prompts"):
        parse_config(data)


def test_train_key_covers_only_what_training_reads(tiny_llama_dir, shared_data, tmp_path):
    """Editing a field no train step reads (the sweep grid, another variant's epochs, a stage block) keeps every
    train key; editing one it reads retrains exactly the variants that read it."""
    data = _config_dict(tiny_llama_dir, shared_data)

    def train_keys(d):
        return {s.id: s.key for s in StudyPlan(parse_config(d), tmp_path / "run").build() if s.stage == "train"}

    def edited(block: str, **changes) -> dict:
        return {**data, block: {**data[block], **changes}}

    before = train_keys(data)
    assert set(before) == {"train/instruction.s0", "train/response.s0", "train/single_task-gsm.s0"}
    for unused in (edited("training", epoch_grid=[1, 2]), edited("training", sweep_metric="heldout_nll")):
        assert train_keys(unused) == before
    assert train_keys({**data, "run": {**data["run"], "rank": {**data["run"]["rank"], "negatives": 3}}}) == before
    # one variant's epochs: only that variant retrains
    after = train_keys(edited("training", epochs_by_variant={"instruction": 3}))
    assert {k for k in before if before[k] != after[k]} == {"train/instruction.s0"}
    # a field training reads: every variant retrains
    after = train_keys(edited("training", learning_rate=2e-3))
    assert all(before[k] != after[k] for k in before)
    after = train_keys(edited("data", heldout_examples=3))
    assert all(before[k] != after[k] for k in before)


def _mech_block(shared_data, **changes) -> dict:
    """A tiny ``run.mech`` block: 2 texts, 2 behaviour prompts of 4 tokens, one steering strength, ranks 0 and 1."""
    return {
        "enabled": True,
        "data": str(shared_data / "lima" / "val_reference_gpt35.json"),
        "limit": 2,
        "blocks": "all",
        "layers": "all",
        "alphas": [1.0],
        "ranks": [0, 1],
        "max_length": 64,
        "response_tokens": 4,
        "behaviour_data": str(shared_data / "ifeval" / "input_data.jsonl"),
        "behaviour_prompts": 2,
        "max_new_tokens": 4,
    } | changes


def test_mech_steps_are_opt_in_keyed_by_their_block_and_files_and_validated_first(tiny_llama_dir, shared_data, tmp_path):
    data = _config_dict(tiny_llama_dir, shared_data)

    def keys(d):
        return {s.id: s.key for s in StudyPlan(parse_config(d), tmp_path / "run").build()}

    assert not any(sid.startswith("mech/") for sid in keys(data))  # off by default
    behaviour = tmp_path / "input_data.jsonl"
    shutil.copy(shared_data / "ifeval" / "input_data.jsonl", behaviour)
    data["run"]["mech"] = _mech_block(shared_data, behaviour_data=str(behaviour))
    before = keys(data)
    mech = {"mech/instruction.s0", "mech/response.s0", "mech/single_task-gsm.s0"}
    assert {sid for sid in before if sid.startswith("mech/")} == mech
    data["run"]["mech"]["alphas"] = [1.0, 2.0]
    assert {sid for sid, key in keys(data).items() if before[sid] != key} == mech | {"report/report"}
    data["run"]["mech"]["alphas"] = [1.0]
    behaviour.write_text(behaviour.read_text() + "\n")  # the behaviour prompts' file: its sha256 is in the key
    assert {sid for sid, key in keys(data).items() if before[sid] != key} == mech | {"report/report"}
    data["run"]["mech"]["behaviour_data"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="run.mech.behaviour_data: .*missing.jsonl: file not found"):
        keys(data)
    data["run"]["mech"].update(behaviour_data=str(behaviour), blocks="every:0")
    with pytest.raises(ValueError, match="run.mech.blocks"):
        keys(data)


def test_mech_steps_run_on_the_trained_variants_and_the_report_shows_where_the_change_lives(study, shared_data, tmp_path):
    from implicit_it.analysis import read_result

    cfg, run_dir, _ = study
    copy = _copy(run_dir, tmp_path)
    data = cfg.model_dump(mode="json")
    data["training"]["variants"] = ["response"]  # one mech step (the other variants' steps stay on disk, finished)
    data["run"]["probe"]["systems"] = ["base"]
    data["run"]["mech"] = _mech_block(shared_data, sites=["resid"], positions=["all", "response"])
    outcome = run_study(parse_config(data), copy, show_progress=False)
    ran = {sid for sid, status in outcome.statuses.items() if status == "ran"}
    mech = {"mech/response.s0"}
    assert ran == mech | {"report/report"}  # training and every other step finished earlier
    names = ("weight_patching", "activation_patching", "steering", "low_rank", "mechanism")
    sentences = {}
    for sid in mech:
        step_dir = copy / sid
        for name in names:
            result = read_result(step_dir / f"{name}.json")
            assert result is not None and [e["variant"] for e in result.entries] == [sid.split("/")[1]], (sid, name)
        entry = read_result(step_dir / "mechanism.json").entries[0]
        sentences[entry["variant"]] = entry["sentence"]
        summary = json.loads((step_dir / "step.json").read_text())["summary"]
        assert summary["sentence"] == entry["sentence"] and json.loads((step_dir / "manifest.json").read_text())["results"]
    md = (copy / "report" / "report.md").read_text()
    assert md.count("## Where the change lives") == 1
    section = md.split("## Where the change lives")[1].split("\n## ")[0]
    for variant, sentence in sentences.items():
        assert f"- {sentence}" in section and variant in sentence
        assert re.search(r"recovers -?\d+% \[-?\d+, -?\d+\] over 2 texts", sentence), sentence  # uncertainty over texts
    assert "95% interval over texts" in section and re.search(r"\| [^|]*: -?\d+% \[-?\d+, -?\d+\] \|", section)
    for key in names[:-1]:
        assert f"![{key}](figures/{key}.png)" in section and (copy / "report" / "figures" / f"{key}.png").is_file()
    assert not any(f"result-{name}" in md for name in names)  # no generic section repeats them
    html = (copy / "report" / "report.html").read_text()
    assert 'id="mechanism"' in html and html.count('<figure id="figure-weight_patching">') == 1


def test_each_trained_variant_carries_a_card_with_what_the_run_measured_on_it(study):
    """``iit run`` rewrites each variant's model card with its evaluations: the IF suite's and IFEval's accuracies,
    as model-index results that huggingface_hub reads back, equal to the eval steps' own."""
    from huggingface_hub import ModelCard

    cfg, run_dir, _ = study
    for name in ("instruction.s0", "response.s0", "single_task-gsm.s0"):
        card = ModelCard.load(run_dir / "train" / name / "README.md")
        measured = {(e.dataset_name, e.metric_type): e.metric_value for e in card.data.eval_results}
        suite = json.loads((run_dir / "eval" / "ifsuite" / name / "step.json").read_text())["summary"]
        assert measured[("implicit-it IF suite", "loose_accuracy")] == pytest.approx(suite["loose_accuracy"])
        assert measured[("implicit-it IF suite", "strict_accuracy")] == pytest.approx(suite["strict_accuracy"])
        assert ("held-out training examples", "nll") in measured  # what training measured stays
        summary = json.loads((run_dir / "eval" / "ifeval" / name / "step.json").read_text())["summary"]
        assert measured[("IFEval", "prompt_loose_accuracy")] == pytest.approx(summary["prompt_loose"]["accuracy"])
        assert measured[("IFEval", "instruction_strict_accuracy")] == pytest.approx(summary["instruction_strict"]["accuracy"])


def test_the_controls_go_wherever_instruction_tuning_goes(tiny_llama_dir, shared_data, tmp_path):
    """``delusive`` and ``content_free`` are trained, generated, evaluated, ranked, diffed and patched like ``instruction``."""
    data = _config_dict(tiny_llama_dir, shared_data)
    data["training"]["variants"] = ["instruction", "delusive", "content_free"]
    data["run"]["rank"] = {k: v for k, v in data["run"].get("rank", {}).items() if k != "systems"}
    data["run"]["seeds"] = [0, 1]
    data["run"]["diff"] = {"enabled": True}
    data["run"]["mech"] = {"enabled": True}
    ids = {s.id for s in StudyPlan(parse_config(data), tmp_path / "run").build()}
    for variant in ("instruction", "delusive", "content_free"):
        expected = {f"train/{variant}.s0", f"train/{variant}.s1", f"generate/ifeval/{variant}.s1", f"eval/ifeval/{variant}.s1"}
        assert expected | {f"{stage}/{variant}.s0" for stage in ("rank", "diff", "mech")} <= ids, variant
