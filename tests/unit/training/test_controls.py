"""The controls beside instruction tuning: delusive (wrong) and content-free instructions."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from implicit_it.app.cli.main import app
from implicit_it.app.config import parse_config
from implicit_it.app.pipeline.stages import train_key_config
from implicit_it.formats import encode_prompt
from implicit_it.training import Variant, build_variant_data, parse_variant
from implicit_it.training.variants import control_turns, derangement


@pytest.fixture
def make_config(tiny_llama_dir, shared_data):
    def make(**data):
        d = {"train": str(shared_data / "lima" / "train.jsonl"), "max_train_examples": 8} | data
        training = {"variants": ["instruction", "delusive", "content_free"], "max_length": 4096}
        return parse_config({"name": "tiny", "model": {"spec": str(tiny_llama_dir)}, "data": d, "training": training})

    return make


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_a_derangement_moves_every_item_and_follows_its_seed(n):
    for seed in range(5):
        order = derangement(n, seed)
        assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
        assert derangement(n, seed) == order
    assert n < 4 or len({tuple(derangement(n, s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_control_turns_keep_every_response_and_shape():
    conversations = [[("u0", "a0")], [("u1", "a1"), ("u2", "a2")], [("u3", "a3")]]  # one multi-turn conversation
    delusive = control_turns("delusive", conversations, seed=0, instruction="x")
    assert [[a for _, a in t] for t in delusive] == [[a for _, a in t] for t in conversations]
    users = [u for t in delusive for u, _ in t]
    assert sorted(users) == ["u0", "u1", "u2", "u3"] and all(u != f"u{i}" for i, u in enumerate(users))
    free = control_turns("content_free", conversations, seed=0, instruction="Write a response.")
    assert [u for t in free for u, _ in t] == ["Write a response."] * 4 and [len(t) for t in free] == [1, 2, 1]
    assert control_turns("instruction", conversations, seed=0, instruction="x") == conversations


def test_delusive_data_pairs_each_response_with_another_instruction(make_config, bytelevel_tokenizer):
    cfg = make_config()
    inst = build_variant_data(cfg, Variant("instruction"), bytelevel_tokenizer)
    delu = build_variant_data(cfg, Variant("delusive"), bytelevel_tokenizer)
    assert len(inst.examples) == len(delu.examples) == 8
    for a, b in zip(inst.examples, delu.examples, strict=True):
        assert a.labels[a.n_prompt_tokens :] == b.labels[b.n_prompt_tokens :]  # the same response + EOS
        assert a.input_ids[: a.n_prompt_tokens] != b.input_ids[: b.n_prompt_tokens]  # under another instruction
    again = build_variant_data(cfg, Variant("delusive"), bytelevel_tokenizer)
    assert [e.input_ids for e in again.examples] == [e.input_ids for e in delu.examples]
    other = build_variant_data(make_config(delusive_seed=1), Variant("delusive"), bytelevel_tokenizer)
    assert [e.input_ids for e in other.examples] != [e.input_ids for e in delu.examples]


def test_content_free_data_has_one_fixed_instruction(make_config, bytelevel_tokenizer):
    cfg = make_config(content_free_instruction="Answer.")
    free = build_variant_data(cfg, Variant("content_free"), bytelevel_tokenizer)
    prompt = encode_prompt(bytelevel_tokenizer, "tulu", "Answer.")
    assert all(e.input_ids[: e.n_prompt_tokens] == prompt for e in free.examples)
    with pytest.raises(ValueError, match="content_free_instruction"):
        make_config(content_free_instruction="")


def test_the_controls_are_variants_everywhere_a_variant_is_named(make_config):
    assert parse_variant("delusive") == [Variant("delusive")] and parse_variant("content_free") == [Variant("content_free")]
    cfg = make_config()
    assert parse_config(cfg.model_dump() | {"training": cfg.training.model_dump() | {"epochs_by_variant": {"delusive": 2}}})
    keys = {v: train_key_config(cfg, Variant(v))["data"] for v in ("instruction", "delusive", "content_free")}
    assert "delusive_seed" in keys["delusive"] and "content_free_instruction" in keys["content_free"]
    assert not {"delusive_seed", "content_free_instruction"} & set(keys["instruction"])  # the paper's keys stay as they were
    assert train_key_config(make_config(delusive_seed=4), Variant("delusive")) != train_key_config(cfg, Variant("delusive"))
    assert train_key_config(make_config(delusive_seed=4), Variant("instruction")) == train_key_config(cfg, Variant("instruction"))


def test_iit_train_variant_delusive(tmp_path, tiny_llama_dir, shared_data):
    path = tmp_path / "tiny.yaml"
    training = {"variants": ["instruction"], "learning_rate": 1e-3, "epochs": 1, "effective_batch_size": 2, "per_device_batch_size": 2}
    config = {
        "name": "tiny",
        "model": {"spec": str(tiny_llama_dir)},
        "data": {"train": str(shared_data / "lima" / "train.jsonl"), "max_train_examples": 2},
        "training": training | {"max_length": 160},
    }
    path.write_text(yaml.safe_dump(config))
    for variant in ("delusive", "content_free"):
        res = CliRunner().invoke(app, ["train", "-c", str(path), "-V", variant, "-o", str(tmp_path / variant), "-q"])
        assert res.exit_code == 0, res.output
        manifest = json.loads((tmp_path / variant / "train_manifest.json").read_text())
        assert manifest["results"]["variant"] == variant and manifest["results"]["optimizer_steps"] == 1
