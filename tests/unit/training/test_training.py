"""Training variants, the Trainer engine, resume, LoRA merge and epoch selection, on tiny models."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from implicit_it.app.config import parse_config
from implicit_it.formats import IGNORE_INDEX, encode_prompt
from implicit_it.models import load_model
from implicit_it.training import (
    MaskedLMCollator,
    SweepPoint,
    Variant,
    build_variant_data,
    check_out_dir,
    gradient_accumulation_steps,
    heldout_response_nll,
    parse_variant,
    run_sweep,
    select_best,
    split_heldout,
    train_variant,
)


@pytest.fixture
def make_config(tiny_llama_dir, shared_data):
    """A tiny, fast experiment: 8 LIMA examples, 2 optimizer steps an epoch."""

    def make(data=None, **training):
        t = dict(
            variants=["instruction", "response", "single_task"],
            single_task_sources=["gsm"],
            learning_rate=1e-3,
            epochs=2,
            effective_batch_size=4,
            per_device_batch_size=2,
            max_length=96,
            warmup_ratio=0.0,
            save_steps=1,
        )
        t.update(training)
        d = {
            "train": str(shared_data / "lima" / "train.jsonl"),
            "max_train_examples": 8,
            "heldout_examples": 4,
            "single_task": {"gsm": str(shared_data / "gsm8k" / "train_1k.jsonl")},
        }
        d.update(data or {})
        return parse_config({"name": "tiny", "seed": 3, "model": {"spec": str(tiny_llama_dir)}, "data": d, "training": t})

    return make


def _param_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- variants and data -------------------------------------------------------------------------


def test_parse_variant(make_config):
    cfg = make_config(single_task_sources=["gsm", "mbpp"])
    assert parse_variant("response") == [Variant("response")]
    assert parse_variant("single_task:poetry") == [Variant("single_task", "poetry")]
    assert [v.name for v in parse_variant("single_task", cfg)] == ["single_task-gsm", "single_task-mbpp"]
    assert parse_variant("single_task-gsm") == [Variant("single_task", "gsm")]
    for bad in ("instruct", "single_task:lima", "single_task:algebra", "response:gsm"):
        with pytest.raises(ValueError):
            parse_variant(bad, cfg)
    with pytest.raises(ValueError, match="needs a source"):
        parse_variant("single_task")


def test_gradient_accumulation_keeps_the_effective_batch():
    assert gradient_accumulation_steps(64, 1, 8) == 8
    assert gradient_accumulation_steps(64, 4, 1) == 16
    with pytest.raises(ValueError, match="not a multiple"):
        gradient_accumulation_steps(64, 3, 1)


def test_split_heldout_takes_the_last_examples():
    train, held = split_heldout(list(range(10)), 3)
    assert train == list(range(7)) and held == [7, 8, 9]
    with pytest.raises(ValueError, match="no training data"):
        split_heldout([1, 2], 2)


def test_response_variant_drops_the_instruction(make_config, bytelevel_tokenizer):
    cfg = make_config(max_length=4096)  # nothing truncated or dropped: the same 8 examples
    inst = build_variant_data(cfg, Variant("instruction"), bytelevel_tokenizer)
    resp = build_variant_data(cfg, Variant("response"), bytelevel_tokenizer)
    empty_prompt = encode_prompt(bytelevel_tokenizer, "tulu", "")
    assert bytelevel_tokenizer.decode(empty_prompt, skip_special_tokens=True) == "<|user|>\n\n<|assistant|>\n"
    assert len(inst.examples) == len(resp.examples) == 8
    for a, b in zip(inst.examples, resp.examples, strict=True):
        assert b.input_ids[: b.n_prompt_tokens] == empty_prompt
        assert a.n_prompt_tokens > b.n_prompt_tokens
        assert a.labels[a.n_prompt_tokens :] == b.labels[b.n_prompt_tokens :]  # the same response + EOS


def test_heldout_split_never_reaches_training(make_config, bytelevel_tokenizer):
    data = build_variant_data(make_config(data={"max_train_examples": None}), Variant("instruction"), bytelevel_tokenizer)
    assert len(data.heldout) == 4
    train_texts = {bytelevel_tokenizer.decode(e.input_ids) for e in data.examples}
    for ex in data.heldout:
        assert not any(ex.response[:60] in t for t in train_texts)
    assert data.n_read == len(data.examples) + data.n_dropped_overlong


def test_overlong_drop_keeps_only_whole_examples(make_config, bytelevel_tokenizer):
    drop = build_variant_data(make_config(overlong="drop", max_length=200), Variant("response"), bytelevel_tokenizer)
    eos = bytelevel_tokenizer.eos_token_id
    assert drop.n_dropped_overlong > 0 and drop.n_truncated == 0
    assert all(e.input_ids[-1] == eos and len(e.input_ids) <= 200 for e in drop.examples)
    trunc = build_variant_data(make_config(overlong="truncate", max_length=64), Variant("response"), bytelevel_tokenizer)
    assert trunc.n_dropped_overlong == 0 and trunc.n_truncated > 0
    assert all(len(e.input_ids) <= 64 for e in trunc.examples)


def test_single_task_reads_its_own_source(make_config, bytelevel_tokenizer):
    data = build_variant_data(make_config(max_length=4096), Variant("single_task", "gsm"), bytelevel_tokenizer)
    assert data.source.endswith("train_1k.jsonl")
    assert "####" in bytelevel_tokenizer.decode(data.examples[0].input_ids)  # GSM8K's answer marker survives


def test_collator_never_learns_padding(bytelevel_tokenizer):
    pad = bytelevel_tokenizer.pad_token_id
    batch = MaskedLMCollator(pad)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [-100]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, pad, pad]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --- validation metric and selection ----------------------------------------------------------


def test_heldout_nll_matches_the_models_own_loss(tiny_llama_dir, make_config, bytelevel_tokenizer):
    from implicit_it.data import ChatExample, Message
    from implicit_it.formats import encode_example

    loaded = load_model(tiny_llama_dir, device="cpu")
    exs = [
        ChatExample(str(i), (Message("user", f"Say {w}."), Message("assistant", f"{w} {w}!")))
        for i, w in enumerate(["hi", "a longer reply"])
    ]
    got = heldout_response_nll(loaded.model, bytelevel_tokenizer, exs, "tulu", max_length=96, batch_size=2)
    total = n = 0
    for e in exs:  # one at a time, no padding: HF's mean loss x labelled tokens
        enc = encode_example(bytelevel_tokenizer, "tulu", e.instruction, e.response)
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]))
        k = sum(label != IGNORE_INDEX for label in enc.labels[1:])
        total, n = total + out.loss.item() * k, n + k
    assert got["heldout_tokens"] == n
    assert got["heldout_nll"] == pytest.approx(total / n, rel=1e-5)
    assert got["heldout_perplexity"] == pytest.approx(math.exp(total / n), rel=1e-5)


def test_select_best():
    pts = [
        SweepPoint(5, "a", {"heldout_nll": 2.0}),
        SweepPoint(7, "b", {"heldout_nll": 1.5}),
        SweepPoint(10, "c", {"heldout_nll": 1.5}),
        SweepPoint(15, "d", {"heldout_nll": float("nan")}),
        SweepPoint(20, "e", {}),
    ]
    assert select_best(pts, "heldout_nll").epochs == 7  # tie with 10 epochs: fewer wins
    assert select_best(pts[::-1], "heldout_nll").epochs == 7
    assert select_best([pts[0], pts[3]], "heldout_nll").epochs == 5  # NaN skipped
    with pytest.raises(ValueError, match="no sweep point"):
        select_best(pts[3:], "heldout_nll")
    with pytest.raises(ValueError, match="unknown selection metric"):
        select_best(pts, "judge_winrate")


# --- the engine ----------------------------------------------------------------------------------


def test_train_writes_a_loadable_model_with_manifest(make_config, tmp_path):
    cfg = make_config(epochs=3)
    out = tmp_path / "response"
    res = train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)
    m = json.loads((out / "train_manifest.json").read_text())
    assert m["seed"] == 3 and m["config"]["training"]["epochs"] == 3
    assert m["model"]["spec"] == cfg.model.spec and m["git"] and m["packages"]["transformers"]
    assert list(m["data"]) == [cfg.data.train] and len(m["data"][cfg.data.train]) == 64  # sha256
    r = m["results"]
    assert r["optimizer_steps"] == 6 and r["gradient_accumulation_steps"] == 2
    assert [p["step"] for p in r["loss_curve"]] == list(range(1, 7))
    assert r["loss_curve"][-1]["loss"] < r["loss_curve"][0]["loss"]  # it learns
    assert r["heldout_examples"] + r["heldout_skipped"] == 4 and r["heldout_examples"] > 0 and r["heldout_nll"] > 0
    assert r["data"]["n_train_examples"] == 8 and r["tokens_seen"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "checkpoints").exists()  # removed after success
    trained = load_model(out, device="cpu", use_process_cache=False)
    base = load_model(cfg.model.spec, device="cpu", use_process_cache=False)
    assert trained.model.config.architectures == ["LlamaForCausalLM"] and trained.model.config.use_cache is True
    changed = [k for k, v in trained.model.state_dict().items() if not torch.equal(v, base.model.state_dict()[k])]
    assert changed
    # the held-out NLL in the manifest is the saved model's
    again = heldout_response_nll(
        trained.model, trained.tokenizer, build_variant_data(cfg, Variant("response"), trained.tokenizer).heldout, "tulu", max_length=96
    )
    assert again["heldout_nll"] == pytest.approx(r["heldout_nll"], rel=1e-5)
    assert res.final_loss == r["loss_curve"][-1]["loss"]
    with pytest.raises(ValueError, match="already holds a finished run"):
        train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)


def test_same_seed_same_numbers(make_config, tmp_path):
    cfg = make_config(epochs=1)
    a = train_variant(cfg, Variant("instruction"), out_dir=tmp_path / "a", show_progress=False)
    b = train_variant(cfg, Variant("instruction"), out_dir=tmp_path / "b", show_progress=False)
    c = train_variant(cfg, Variant("instruction"), out_dir=tmp_path / "c", seed=4, show_progress=False)
    assert a.results["loss_curve"] == b.results["loss_curve"]
    assert a.results["heldout_nll"] == b.results["heldout_nll"]
    assert a.results["loss_curve"] != c.results["loss_curve"]  # the seed orders the data


class _Crash(TrainerCallback):
    """Kill the run after ``step`` optimizer steps, as a pre-empted job would be."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def test_resume_mid_epoch_reaches_the_same_final_loss(make_config, tmp_path):
    cfg = make_config(epochs=2, data={"max_train_examples": 12})  # 3 optimizer steps an epoch
    whole = train_variant(cfg, Variant("response"), out_dir=tmp_path / "whole", show_progress=False)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_variant(cfg, Variant("response"), out_dir=out, callbacks=[_Crash(step=2)], show_progress=False)  # mid epoch 1
    assert not (out / "train_manifest.json").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)
    resumed = train_variant(cfg, Variant("response"), out_dir=out, resume=True, show_progress=False)
    assert resumed.results["resumed"] is True
    assert [p["step"] for p in resumed.results["loss_curve"]] == list(range(1, 7))
    assert resumed.final_loss == pytest.approx(whole.final_loss, abs=1e-6)
    assert [p["loss"] for p in resumed.results["loss_curve"]] == pytest.approx([p["loss"] for p in whole.results["loss_curve"]], abs=1e-6)
    a = load_model(tmp_path / "whole", device="cpu", use_process_cache=False).model.state_dict()
    b = load_model(out, device="cpu", use_process_cache=False).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_out_dir_rules(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        check_out_dir(tmp_path, resume=True, overwrite=False)
    with pytest.raises(ValueError, match="exclude each other"):
        check_out_dir(tmp_path, resume=True, overwrite=True)
    check_out_dir(tmp_path / "new", resume=False, overwrite=False)


def test_freeze_embeddings_leaves_them_untouched(make_config, tmp_path):
    cfg = make_config(epochs=1, freeze_embeddings=True)
    train_variant(cfg, Variant("instruction"), out_dir=tmp_path / "f", show_progress=False)
    base = load_model(cfg.model.spec, device="cpu", use_process_cache=False).model.state_dict()
    trained = load_model(tmp_path / "f", device="cpu", use_process_cache=False).model.state_dict()
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_lora_adapter_merges_into_an_equivalent_dense_model(make_config, tmp_path, bytelevel_tokenizer):
    from peft import PeftModel

    cfg = make_config(
        method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}, learning_rate=5e-3
    )
    out = tmp_path / "lora"
    res = train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert res.results["trainable_parameters"] < 0.2 * res.manifest["model"]["n_parameters"]
    base = load_model(cfg.model.spec, device="cpu", use_process_cache=False).model
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = load_model(out, device="cpu", use_process_cache=False).model
    ids = torch.tensor([encode_prompt(bytelevel_tokenizer, "tulu", "Name three primary colours.")])
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = load_model(cfg.model.spec, device="cpu", use_process_cache=False).model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)  # the adapter did change the model


def test_sweep_trains_the_grid_and_selects(make_config, tmp_path, shared_data):
    val = str(shared_data / "lima" / "val_reference_gpt35.json")
    cfg = make_config(data={"validation": val}, epoch_grid=[1, 2], epochs_by_variant={"response": 9})  # the grid overrides it
    summary = run_sweep(cfg, Variant("response"), out_dir=tmp_path / "sweep", show_progress=False)
    assert [p["epochs"] for p in summary["points"]] == [1, 2] and summary["metric"] == "val_nll"
    pts = [SweepPoint(p["epochs"], p["out_dir"], {"val_nll": p["val_nll"]}) for p in summary["points"]]
    assert summary["selected_epochs"] == select_best(pts, "val_nll").epochs
    assert summary["points"][0]["val_nll"] != summary["points"][1]["val_nll"]
    m = json.loads((tmp_path / "sweep" / "epochs-2" / "train_manifest.json").read_text())
    assert m["results"]["epochs"] == 2 and m["results"]["val_examples"] + m["results"]["val_skipped"] == 56 and val in m["data"]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == summary
    assert (tmp_path / "sweep" / "manifest.json").is_file()
    first = tmp_path / "sweep" / "epochs-1" / "train_manifest.json"
    stamp = first.stat().st_mtime_ns
    again = run_sweep(cfg, Variant("response"), out_dir=tmp_path / "sweep", resume=True, show_progress=False)
    assert again == summary and first.stat().st_mtime_ns == stamp  # finished points are reused


def test_sweep_needs_its_data(make_config, tmp_path):
    with pytest.raises(ValueError, match="heldout_examples"):
        run_sweep(make_config(data={"heldout_examples": 0}, sweep_metric="heldout_nll"), Variant("response"), out_dir=tmp_path)
    with pytest.raises(ValueError, match="data.validation"):
        run_sweep(make_config(sweep_metric="val_nll"), Variant("response"), out_dir=tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="scorer"):
        run_sweep(make_config(sweep_metric="ifsuite_loose"), Variant("response"), out_dir=tmp_path, show_progress=False)


@pytest.mark.parametrize("metric", ["ifsuite_loose", "ifeval_loose"])
def test_sweep_by_a_generation_metric_from_the_cli(metric, make_config, tmp_path):
    """``iit sweep`` with a generation metric generates on IF-suite / IFEval prompts after each grid point and selects by it."""
    import yaml
    from typer.testing import CliRunner

    from implicit_it.app.cli import app

    cfg = make_config(sweep_metric=metric, epoch_grid=[1, 2])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "sweep"
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            "-c",
            str(path),
            "-V",
            "response",
            "--sweep-prompts",
            "3",
            "--set",
            "run.generate.max_new_tokens=6",
            "-q",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "sweep.json").read_text())
    strict = metric.replace("loose", "strict")
    assert summary["metric"] == metric and summary["direction"] == "max"
    assert all(0 <= p[metric] <= 1 and strict in p for p in summary["points"])
    assert json.loads((out / "epochs-1" / "sweep_scores.json").read_text())[metric] == summary["points"][0][metric]
    bad = CliRunner().invoke(app, ["sweep", "-c", str(path), "-V", "response", "--sweep-judge", "gpt4_turbo", "--out", str(out)])
    assert bad.exit_code != 0 and "val_win_rate" in bad.output


def test_sweep_by_the_papers_judged_win_rate(make_config, tiny_llama_dir, shared_data, tmp_path):
    """sweep_metric val_win_rate (the paper's selection): generations on data.validation judged against its GPT-3.5
    references by alpaca_eval's annotator; here the judge is a local tiny model with a long context."""
    import shutil

    import yaml
    from typer.testing import CliRunner

    from implicit_it.app.cli import app

    judge = tmp_path / "judge"
    shutil.copytree(tiny_llama_dir, judge)
    judge_cfg = json.loads((judge / "config.json").read_text())
    judge_cfg["max_position_embeddings"] = 4096  # alpaca_eval's judge prompt is ~700 tokens
    (judge / "config.json").write_text(json.dumps(judge_cfg))
    val = json.loads((shared_data / "lima" / "val_reference_gpt35.json").read_text())[:4]
    (tmp_path / "val.json").write_text(json.dumps(val))
    cfg = make_config(data={"validation": str(tmp_path / "val.json")}, sweep_metric="val_win_rate", epoch_grid=[1])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            "-c",
            str(path),
            "-V",
            "response",
            "--sweep-judge",
            f"local:{judge}",
            "--set",
            "run.generate.max_new_tokens=6",
            "-q",
            "--out",
            str(tmp_path / "sweep"),
        ],
    )
    assert res.exit_code == 0, res.output
    point = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"][0]
    assert 0 <= point["val_win_rate"] <= 100 and point["val_nll"] > 0
    assert (tmp_path / "sweep" / "epochs-1" / "val_judge_cache.json").is_file()
    no_judge = CliRunner().invoke(app, ["sweep", "-c", str(path), "-V", "response", "--out", str(tmp_path / "other")])
    assert no_judge.exit_code != 0 and "training.sweep_judge" in no_judge.output


@pytest.mark.parametrize("reduction", ["example", "token"])
def test_trainer_step_uses_the_configured_loss_reduction(reduction, make_config, tiny_llama_dir, tmp_path):
    """One optimizer step through Trainer (4 examples, micro-batch 2, 2 accumulation steps): the logged loss and the
    pre-clip gradient norm equal a hand computation with the same reduction."""
    cfg = make_config(
        loss_reduction=reduction,
        max_steps=1,
        effective_batch_size=4,
        per_device_batch_size=2,
        data={"max_train_examples": 4, "heldout_examples": 0},
    )
    tok = load_model(tiny_llama_dir, use_process_cache=False).tokenizer
    examples = build_variant_data(cfg, Variant("instruction"), tok).examples
    model = load_model(tiny_llama_dir, dtype="float32", use_process_cache=False).model.train()
    losses, counts = [], []
    for e in examples:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
        target = torch.tensor(e.labels[1:])
        losses.append(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"))
        counts.append(int((target != IGNORE_INDEX).sum()))
    if reduction == "example":
        loss = sum(l_ / c for l_, c in zip(losses, counts, strict=True)) / len(examples)
    else:
        loss = sum(losses) / sum(counts)
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()

    res = train_variant(cfg, Variant("instruction"), out_dir=tmp_path / reduction, show_progress=False)
    step = res.results["loss_curve"][0]
    assert step["loss"] == pytest.approx(loss.item(), abs=2e-4)
    log = json.loads((tmp_path / reduction / "train_manifest.json").read_text())["results"]
    assert log["loss_reduction"] == reduction
    assert step.get("grad_norm", log.get("grad_norm")) == pytest.approx(grad_norm, rel=1e-4)


def test_epochs_by_variant(make_config):
    cfg = make_config(epochs=2, epochs_by_variant={"response": 5, "single_task-gsm": 7})
    assert [cfg.training.epochs_for(v) for v in ("instruction", "response", "single_task-gsm")] == [2, 5, 7]
    from implicit_it.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs_by_variant"):
        make_config(epochs_by_variant={"gsm": 7})


def test_tensorboard_logs_are_written_and_read_back(make_config, tmp_path):
    """``training.report_to: tensorboard``: transformers' callback writes event files under OUT/logs/tensorboard, which
    TensorBoard's own reader parses into the loss curve the manifest records, step for step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(report_to="tensorboard", epochs=1)
    res = train_variant(cfg, Variant("response"), out_dir=tmp_path / "tb", show_progress=False)
    logs = res.results["logs"]
    assert logs["directory"] == "logs/tensorboard" and any("tfevents" in f for f in logs["files"])
    events = EventAccumulator(str(tmp_path / "tb" / logs["directory"])).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    curve = [(c["step"], c["loss"]) for c in res.results["loss_curve"]]
    assert [s for s, _ in logged] == [s for s, _ in curve] and len(curve) == res.results["optimizer_steps"]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in curve], rtol=1e-6)
    assert "train/learning_rate" in events.Tags()["scalars"]


def test_wandb_logs_offline_into_the_run_directory(make_config, tmp_path, monkeypatch):
    """``report_to: wandb`` runs W&B offline (nothing leaves the machine) with its files under OUT/logs/wandb; the
    environment is restored afterwards."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_config(report_to="wandb", epochs=1)
    res = train_variant(cfg, Variant("response"), out_dir=tmp_path / "wb", show_progress=False)
    files = res.results["logs"]["files"]
    assert any(f.endswith(".wandb") and "offline-run-" in f for f in files), files
    assert "WANDB_MODE" not in os.environ


def test_report_to_is_not_part_of_the_training_steps_key(make_config):
    from implicit_it.app.pipeline.stages import train_key_config

    assert train_key_config(make_config(), Variant("response")) == train_key_config(
        make_config(report_to="tensorboard"), Variant("response")
    )


def test_a_trained_variant_carries_a_model_card_the_hub_parser_reads(make_config, tmp_path):
    """README.md in the Hub's format: huggingface_hub's ModelCard reads back the base model, the datasets, the data
    hashes and the numbers training measured (model-index), equal to the manifest's."""
    from huggingface_hub import ModelCard

    res = train_variant(make_config(epochs=1), Variant("response"), out_dir=tmp_path / "r", show_progress=False)
    card = ModelCard.load(tmp_path / "r" / "README.md")
    data = card.data
    assert data.base_model == res.manifest["model"]["spec"] and data.library_name == "transformers"
    assert data.datasets == ["train.jsonl"] and "response" in data.tags
    assert data.implicit_it["data_sha256"] == res.manifest["data"]
    measured = {(e.dataset_type, e.metric_type): e.metric_value for e in data.eval_results}
    assert measured[("train", "loss")] == pytest.approx(res.results["final_loss"])
    assert measured[("heldout", "nll")] == pytest.approx(res.results["heldout_nll"])
    assert "response tuning" in card.text and res.manifest["data"][next(iter(res.manifest["data"]))] in card.text
