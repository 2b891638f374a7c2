"""The ``iit`` command line, end to end on a tiny local model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app

runner = CliRunner()


def test_help_lists_subcommands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("generate", "train", "sweep", "rank", "probe", "diff", "mech", "eval", "models", "formats", "data", "config"):
        assert cmd in res.output


def test_generate_writes_records_and_manifest(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "o.json"
    res = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_llama_dir),
            "--instructions",
            str(shared_data / "lima" / "val_instructions.jsonl"),
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "8",
            "--instructions-limit",
            "10",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert len(recs) == 10 and recs[0]["instruction"] == "What is Samyang Buldak ramen?"
    assert recs[0]["generator"] == str(tiny_llama_dir)
    man = json.loads((tmp_path / "o.manifest.json").read_text())
    assert man["results"]["n"] == 10 and man["model"]["kind"] == "local"
    assert man["config"]["max_new_tokens"] == 4 and len(man["results"]["per_record"]) == 10
    assert list(man["data"].values())[0] and man["packages"]["transformers"]


def test_generate_bad_input_keeps_existing_output(tmp_path, tiny_llama_dir):
    out = tmp_path / "o.json"
    out.write_text("[]")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"instruction": \n')
    res = runner.invoke(app, ["generate", "--model", str(tiny_llama_dir), "--instructions", str(bad), "--out", str(out), "--quiet"])
    assert res.exit_code == 2
    assert f"{bad}:2: malformed JSON" in " ".join(res.output.split())
    assert out.read_text() == "[]"


def test_data_validate_and_convert(tmp_path, shared_data):
    res = runner.invoke(app, ["data", "validate", str(shared_data / "lima" / "train.jsonl")])
    assert res.exit_code == 0 and "1030 chat examples (30 multi-turn)" in res.output
    raw = tmp_path / "mbpp_train_rows.jsonl"
    rows = [json.loads(l) for l in (shared_data / "mbpp" / "mbpp_raw.jsonl").read_text().splitlines()]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows if r["task_id"] > 600))
    out = tmp_path / "mbpp.jsonl"
    res = runner.invoke(app, ["data", "convert", "mbpp", "--raw", str(raw), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == (shared_data / "mbpp" / "train.jsonl").read_text()


def test_config_validate(tmp_path):
    res = runner.invoke(app, ["config", "validate", "configs/demo.yaml"])
    assert res.exit_code == 0 and "valid (demo" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  spec: gemma-3-270m\n  dtpye: float32\n")
    res = runner.invoke(app, ["config", "validate", str(bad)])
    assert res.exit_code == 2 and "model.dtpye: unknown key" in res.output


def test_models_and_formats():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "gemma-3-270m" in res.output and "smollm2-135m-instruct" in res.output
    res = runner.invoke(app, ["models", "./missing-model-dir"])
    assert res.exit_code == 2 and "model path not found" in res.output
    res = runner.invoke(app, ["formats", "--instruction", "Hi"])
    assert res.exit_code == 0 and "<|user|>\\nHi\\n<|assistant|>\\n" in res.output


def test_generate_with_rules_and_rules_command(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_llama_dir),
            "--instructions",
            str(shared_data / "lima" / "val_instructions.jsonl"),
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
            "--instructions-limit",
            "3",
            "--rules",
            "eos,uniform",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert recs[0]["generator"] == f"{tiny_llama_dir}+rules(eos,uniform)"
    man = json.loads((tmp_path / "r.manifest.json").read_text())
    assert man["config"]["rules"]["rules"] == ["eos", "uniform"] and len(man["config"]["rule_tokens"]) == 15
    res = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_llama_dir),
            "--instructions",
            str(shared_data / "lima" / "val_instructions.jsonl"),
            "--out",
            str(out),
            "--rules",
            "eos,length",
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and "unknown rule" in res.output
    res = runner.invoke(app, ["rules", "--model", str(tiny_llama_dir)])
    assert res.exit_code == 0 and "' should'" in res.output and "diversity -1.5" in res.output


def _tiny_experiment(tmp_path, tiny_llama_dir, shared_data):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": {"spec": str(tiny_llama_dir)},
                "data": {"train": str(shared_data / "lima" / "train.jsonl"), "max_train_examples": 4, "heldout_examples": 2},
                "training": {
                    "variants": ["response"],
                    "learning_rate": 1e-3,
                    "epochs": 1,
                    "epoch_grid": [1, 2],
                    "effective_batch_size": 2,
                    "per_device_batch_size": 2,
                    "max_length": 160,
                },
            }
        )
    )
    return path


def test_train_and_sweep_commands(tmp_path, tiny_llama_dir, shared_data):
    cfg = _tiny_experiment(tmp_path, tiny_llama_dir, shared_data)
    out = tmp_path / "resp"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "--seed", "7", "-q"])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["seed"] == 7 and man["results"]["variant"] == "response" and man["results"]["optimizer_steps"] == 2
    again = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "-q"])
    assert again.exit_code == 2 and "--overwrite" in again.output  # a finished run is never silently replaced
    longer = tmp_path / "resp2"
    args = ["--out", str(longer), "--epochs", "2", "--set", "training.learning_rate=5e-4", "-q"]
    res = runner.invoke(app, ["train", "--config", str(cfg), *args])
    assert res.exit_code == 0, res.output
    man = json.loads((longer / "train_manifest.json").read_text())
    assert man["results"]["optimizer_steps"] == 4 and man["config"]["training"]["learning_rate"] == 5e-4
    res = runner.invoke(app, ["train", "--config", str(cfg), "--epochs", "0"])
    assert res.exit_code == 2 and "training.epochs" in res.output  # the option is the field, and the error names it
    res = runner.invoke(app, ["sweep", "--config", str(cfg), "--variant", "response", "--out", str(tmp_path / "sw"), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert summary["selected_epochs"] in (1, 2) and "selected" in res.output


def test_train_rejects_bad_variant_and_config(tmp_path, tiny_llama_dir, shared_data):
    cfg = _tiny_experiment(tmp_path, tiny_llama_dir, shared_data)
    res = runner.invoke(app, ["train", "--config", str(cfg), "--variant", "responses"])
    assert res.exit_code == 2 and "unknown variant" in res.output
    res = runner.invoke(app, ["sweep", "--config", str(cfg), "--variant", "response", "--epoch-grid", "5,seven"])
    assert res.exit_code == 2 and "training.epoch_grid" in res.output
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output


def test_rank_two_models_side_by_side(tmp_path, tiny_model_dir, tiny_llama_dir, shared_data):
    out = tmp_path / "rank"
    res = runner.invoke(
        app,
        [
            "rank",
            "-m",
            str(tiny_model_dir),
            "-m",
            str(tiny_llama_dir),
            "-d",
            str(shared_data / "lima" / "train.jsonl"),
            "--instructions",
            "6",
            "--negatives",
            "2",
            "--max-length",
            "400",
            "--layers",
            "all",
            "--bootstrap",
            "100",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    ranking = json.loads((out / "ranking.json").read_text())["results"]
    assert [(r["model"], r["score"]) for r in ranking] == [
        (str(tiny_model_dir), "mean_logprob"),
        (str(tiny_model_dir), "total_logprob"),
        (str(tiny_llama_dir), "mean_logprob"),
        (str(tiny_llama_dir), "total_logprob"),
    ]
    for r in ranking:
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and r["n_pairs"] == 2 * r["n_instructions"]
    layerwise = json.loads((out / "layerwise_ranking.json").read_text())["results"]
    assert [x["layer"] for x in layerwise[0]["layers"]] == [0, 1, 2]
    # the last layer through the lens is the output distribution
    assert layerwise[0]["layers"][-1]["accuracy"] == pytest.approx(ranking[0]["accuracy"])
    for name in ("ranking.png", "layerwise_ranking.png", "ranking_pairs.parquet", "manifest.json"):
        assert (out / name).stat().st_size > 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 0 and len(man["model"]) == 2 and man["config"]["negatives"] == 2


def test_rank_and_probe_reject_bad_input(tmp_path, tiny_llama_dir, shared_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "q"}]}\n')
    res = runner.invoke(app, ["rank", "-m", str(tiny_llama_dir), "-d", str(bad), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output and not (tmp_path / "o").exists()
    lima = str(shared_data / "lima" / "train.jsonl")
    res = runner.invoke(
        app,
        [
            "rank",
            "-m",
            str(tiny_llama_dir),
            "-m",
            str(tiny_llama_dir),
            "-f",
            "tulu",
            "-f",
            "tulu",
            "-f",
            "tulu",
            "-d",
            lima,
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(app, ["probe", "-m", str(tiny_llama_dir), "-d", lima, "--layers", "0,9", "--out", str(tmp_path / "p"), "-q"])
    assert res.exit_code == 2 and "out of range" in " ".join(res.output.split())


def test_probe_command(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "probe"
    res = runner.invoke(
        app,
        [
            "probe",
            "-m",
            str(tiny_llama_dir),
            "-d",
            str(shared_data / "lima" / "train.jsonl"),
            "--instructions",
            "12",
            "--pools",
            "mean,last",
            "--max-length",
            "400",
            "--folds",
            "3",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    probe = json.loads((out / "probe.json").read_text())["results"]
    assert [p["pool"] for p in probe] == ["mean", "last"]
    assert {"layer", "accuracy", "std", "control_accuracy", "control_std"} <= set(probe[0]["layers"][0])
    assert list((out / "activations").glob("*/mean/shard_*.npy")) and (out / "probe.png").exists()


def test_diff_runs_all_four_analyses_and_writes_documented_files(tmp_path, tiny_llama_dir, shared_data):
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    variant = tmp_path / "variant"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # the only change
    model.save_pretrained(variant)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(variant)
    out = tmp_path / "diff"
    res = runner.invoke(
        app,
        [
            "diff",
            "--base",
            str(tiny_llama_dir),
            "--variant",
            str(variant),
            "--data",
            str(shared_data / "lima" / "train.jsonl"),
            "--limit",
            "6",
            "--layers",
            "all",
            "--max-length",
            "160",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rules = json.loads((out / "rules.json").read_text())["results"]
    assert [r["variant"] for r in rules] == [str(variant)]
    assert {"variance_explained_rules", "variance_explained_rule_family", "emergence_layer", "per_layer"} <= set(rules[0])
    assert [layer["layer"] for layer in rules[0]["per_layer"]] == [0, 1, 2]
    # block 2's MLP changed: nothing moves before layer 2 of the logit lens
    logits = json.loads((out / "logits.json").read_text())["results"][0]
    assert [layer["kl"] < 1e-9 for layer in logits["layers"]] == [True, True, False]
    assert logits["kl_emergence_layer"] == 2
    shift = json.loads((out / "shift.json").read_text())["results"][0]
    assert shift["unshifted"] + shift["marginal"] + shift["shifted"] == pytest.approx(1.0)
    weights = pd.read_parquet(out / "weights.parquet")
    changed = weights[weights["delta_norm"] > 0]
    assert list(changed["tensor"]) == ["model.layers.1.mlp.down_proj.weight"] and list(changed["layer"]) == [2]
    assert changed["relative_delta"].iloc[0] == pytest.approx(0.5, rel=1e-5)
    assert changed["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    for name in ("weights", "logits", "rules", "shift"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.parquet").is_file()
    texts = [json.loads(line) for line in (out / "texts" / f"{str(variant).strip('/').replace('/', '_')}.jsonl").read_text().splitlines()]
    assert {t["origin"] for t in texts} <= {"data", "generation"} and texts
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 0 and man["config"]["analyses"] == ["weights", "logits", "rules", "shift"]
    assert man["results"]["rules"][0]["variant"] == str(variant) and man["git"] and list(man["data"].values())[0]
    assert [v["spec"] for v in man["model"]["variants"]] == [str(variant)] and man["model"]["variants"][0]["n_parameters"] > 0, man["model"]


def test_diff_rejects_bad_options_with_one_error(tmp_path, tiny_llama_dir, shared_data):
    data = str(shared_data / "lima" / "train.jsonl")
    base = ["diff", "--base", str(tiny_llama_dir), "--variant", str(tiny_llama_dir), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, base + ["--data", data, "--analyses", "weights,vibes"])
    assert res.exit_code == 2 and "vibes" in res.output
    res = runner.invoke(app, base + ["--data", data, "--vocab", "top10"])
    assert res.exit_code == 2 and "frequent:K" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": \n')
    res = runner.invoke(app, base + ["--data", str(bad)])
    assert res.exit_code == 2 and f"{bad}:2" in res.output
    res = runner.invoke(
        app,
        [
            "diff",
            "--base",
            str(tiny_llama_dir),
            "--variant",
            str(tmp_path / "nope"),
            "--data",
            data,
            "--out",
            str(tmp_path / "o"),
            "--analyses",
            "weights",
        ],
    )
    assert res.exit_code == 2 and "nope" in res.output
    assert not (tmp_path / "o").exists()


MECH_RESULTS = ("weight_patching", "activation_patching", "steering", "low_rank", "mechanism")


def test_mech_help_lists_the_options_generated_from_its_config():
    from implicit_it.analyses.config import MechConfig

    res = runner.invoke(app, ["mech", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for name in MechConfig.model_fields:
        assert "--" + name.replace("_", "-") in text, name
    for flag in ("--base", "--variant", "--out", "--format", "--seed", "--dtype", "--device", "--quiet", "--config", "--set"):
        assert flag in text


def test_mech_rejects_a_bad_block_spec_with_one_error_naming_the_field(tmp_path, tiny_llama_dir):
    out = tmp_path / "o"
    base = ["mech", "--base", str(tiny_llama_dir), "--variant", str(tiny_llama_dir), "--out", str(out)]
    for bad in ("every:0", "6-2", "first"):
        res = runner.invoke(app, base + ["--blocks", bad])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and "--blocks" in res.output and "error:" in lines[0], res.output
        assert sum("error:" in line for line in lines) == 1
    res = runner.invoke(app, base + ["--set", "ranks=[1, -1]"])
    assert res.exit_code == 2 and "ranks" in res.output
    assert not out.exists()  # nothing written, no model loaded


def _perturbed_variant(tiny_llama_dir, path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p) * p.abs().mean())  # every tensor moves, as finetuning would
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


def test_mech_writes_all_five_results_and_a_manifest(tmp_path, tiny_llama_dir, shared_data):
    import torch
    from safetensors.torch import load_file

    variant = _perturbed_variant(tiny_llama_dir, tmp_path / "variant")
    out = tmp_path / "mech"
    res = runner.invoke(
        app,
        [
            "mech",
            "--base",
            str(tiny_llama_dir),
            "--variant",
            str(variant),
            "--data",
            str(shared_data / "lima" / "val_reference_gpt35.json"),
            "--limit",
            "2",
            "--blocks",
            "all",
            "--layers",
            "all",
            "--sites",
            "resid",
            "--positions",
            "all,response",
            "--alphas",
            "1.0",
            "--ranks",
            "0,1",
            "--max-length",
            "64",
            "--response-tokens",
            "4",
            "--behaviour-data",
            str(shared_data / "ifeval" / "input_data.jsonl"),
            "--behaviour-prompts",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    from implicit_it.analysis import read_result

    for name in MECH_RESULTS:
        for ext in ("json", "parquet", "png"):
            assert (out / f"{name}.{ext}").is_file() and (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
        result = read_result(out / f"{name}.json")
        assert result is not None and [e["variant"] for e in result.entries] == [str(variant)], name
    smallest = read_result(out / "mechanism.json").entries[0]
    assert smallest["threshold"] == 0.8 and " ".join(smallest["sentence"].split()) in " ".join(res.output.split())  # printed
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 0 and man["config"]["ranks"] == [0, 1] and man["config"]["variants"] == [str(variant)]
    assert str(variant) in man["results"] and len(man["data"]) == 2 and man["git"]
    # the base was patched in place and restored exactly: the process-cached copy the command used equals its checkpoint
    from implicit_it.models import load_model

    saved = load_file(str(tiny_llama_dir / "model.safetensors"))
    state = load_model(str(tiny_llama_dir)).model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_mech_behaviour_is_a_stratified_ifeval_subset_scored_loose_or_the_texts_instructions(shared_data):
    from implicit_it.analyses import mech_data_files
    from implicit_it.analyses.config import MechConfig
    from implicit_it.app.mech import mech_behaviour
    from implicit_it.evaluation import load_ifeval, score_ifeval

    ifeval = str(shared_data / "ifeval" / "input_data.jsonl")
    cfg = MechConfig(data=ifeval, behaviour_data=ifeval, behaviour_prompts=5)
    behaviour = mech_behaviour(cfg, [], seed=0)
    subset = load_ifeval(ifeval, limit=5, seed=0)
    assert behaviour.prompts == [p.prompt for p in subset] and behaviour.label == "IFEval"
    echo = list(behaviour.prompts)
    expected = score_ifeval(subset, echo).entries[0]["prompt_loose"]["accuracy"]
    assert behaviour.score(echo) == {"ifeval_loose": expected}
    assert mech_data_files(cfg) == [ifeval, ifeval]

    class Text:
        def __init__(self, instruction):
            self.instruction = instruction

    texts = [Text("a"), Text("b"), Text("c")]
    own = mech_behaviour(cfg.model_copy(update={"behaviour_data": None, "behaviour_prompts": 2}), texts)
    assert own.prompts == ["a", "b"] and own.score is None
    assert mech_behaviour(cfg.model_copy(update={"behaviour_prompts": 0}), texts) is None
    no_steering = cfg.model_copy(update={"analyses": ["weights", "rank"]})
    assert mech_behaviour(no_steering, texts) is None and mech_data_files(no_steering) == [ifeval]  # nothing generates


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    from implicit_it.errors import UserError

    # an unknown analysis is rejected (a UserError) before any file or model is read
    args = ["diff", "--base", "b", "--variant", "v", "--data", "d.jsonl", "--out", str(tmp_path / "o"), "--analyses", "weights,vibes"]
    res = runner.invoke(app, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert lines[0].startswith("error: analyses: unknown ['vibes']")
    res = runner.invoke(app, ["--verbose", *args])  # -v: the same error keeps its traceback
    assert isinstance(res.exception, UserError)


def test_a_plain_value_error_is_a_bug_not_a_user_error(monkeypatch):
    import implicit_it.models
    from implicit_it.errors import UserError

    def boom(spec):
        raise ValueError("boom")

    monkeypatch.setattr(implicit_it.models, "resolve_model_spec", boom)
    res = runner.invoke(app, ["models", "gemma-3-270m"])
    assert res.exit_code != 2 and "error:" not in res.output
    assert type(res.exception) is ValueError and not isinstance(res.exception, UserError) and str(res.exception) == "boom"
