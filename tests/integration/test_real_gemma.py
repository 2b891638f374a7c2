"""Integration tests on the real embedded models (marked ``real_model``).

Gemma-3-270M is the base google/gemma-3-270m as a Q4_K_M GGUF, dequantized to fp32 on load;
SmolLM2-135M-Instruct is a Q4_1 GGUF. Numbers here are about these quantized weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from implicit_it.data import read_instructions
from implicit_it.formats import encode_example
from implicit_it.generation import generate_responses
from implicit_it.hooking import nnsight_model, transformer_bridge
from implicit_it.models import _gguf_cache_dir, load_model, load_tokenizer, resolve_model_spec
from tests.helpers import assert_resolved_ids_spell_their_strings, check_mask_invariants

pytestmark = pytest.mark.real_model

PROMPTS = [
    "<|user|>\nWhat is the capital of France?\n<|assistant|>\n",
    "<|user|>\nWrite a haiku.\n<|assistant|>\nSilent pond",
]


def test_gguf_dequantized_once_and_cached(real_gemma):
    src = resolve_model_spec("gemma-3-270m")
    cache = _gguf_cache_dir(__import__("pathlib").Path(src.path) / src.gguf_file)
    assert json.loads((cache / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    again = load_model("gemma-3-270m", device="cpu", use_process_cache=False)
    assert again.loaded_from == "gguf-cache"
    for (name, a), b in zip(real_gemma.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert real_gemma.model.config.num_hidden_layers == 18 and real_gemma.dtype == torch.float32


def test_bridge_and_nnsight_give_hf_logits(real_gemma):
    tok = real_gemma.tokenizer
    bridge = transformer_bridge(real_gemma)
    lm = nnsight_model(real_gemma)
    for prompt in PROMPTS:
        ids = tok([prompt], return_tensors="pt").input_ids
        with torch.no_grad():
            ref = real_gemma.model(ids).logits
            assert (bridge(ids) - ref).abs().max().item() <= 1e-4
            with lm.trace(ids):
                out = lm.output.save()
        assert (out.logits - ref).abs().max().item() <= 1e-4
    assert lm._module is real_gemma.model  # nnsight traces the module itself
    # the bridge rewires a copy that shares every tensor: no second copy of the weights, the cached model untouched
    assert {p.data_ptr() for p in bridge.original_model.parameters()} == {p.data_ptr() for p in real_gemma.model.parameters()}
    assert type(real_gemma.model.model.embed_tokens).__name__ == "Gemma3TextScaledWordEmbedding"


def test_batched_greedy_equals_batch_one(real_gemma, shared_data):
    instructions = [i.instruction for i in read_instructions(shared_data / "lima" / "val_instructions.jsonl")][:12]
    batched, _ = generate_responses(real_gemma, instructions, max_new_tokens=32, batch_size=6, show_progress=False)
    single, _ = generate_responses(real_gemma, instructions, max_new_tokens=32, batch_size=1, show_progress=False)
    mismatched = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a.token_ids != b.token_ids]
    assert mismatched == []


TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]) | st.sampled_from(["\n", " ", "\t"]), min_size=1, max_size=60
).filter(str.strip)


@pytest.mark.parametrize("model", ["gemma-3-270m", "smollm2-135m-instruct"])
@pytest.mark.parametrize("fmt", ["tulu", "ab_tags", "empty_instruction", "native"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=TEXT, response=TEXT)
def test_masks_on_real_tokenizers(model, fmt, instruction, response):
    tok = _tokenizer(model)
    # The mask property is about the boundary; text the tokenizer cannot round-trip on its own
    # (SmolLM2's GGUF vocab garbles some astral-plane characters) is out of scope.
    for text in (instruction, response):
        assume(tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text)
    if fmt == "native" and not tok.chat_template:
        with pytest.raises(ValueError, match="chat template"):
            encode_example(tok, fmt, instruction, response)
        return
    check_mask_invariants(tok, fmt, instruction, response)


_TOKENIZERS: dict = {}


def _tokenizer(model):
    if model not in _TOKENIZERS:
        _TOKENIZERS[model] = load_tokenizer(model)
    return _TOKENIZERS[model]


def test_smollm2_instruct_native_format_stops_at_end_of_turn():
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    assert loaded.model.config.architectures == ["LlamaForCausalLM"]
    (res,), _ = generate_responses(
        loaded, ["What is the capital of France? Answer in one word."], fmt="native", max_new_tokens=48, show_progress=False
    )
    assert res.stopped and "Paris" in res.output


def test_cli_generate_56_val_records(tmp_path, real_gemma, shared_data):
    from implicit_it.app.cli import app

    out = tmp_path / "o.json"
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            "gemma-3-270m",
            "--instructions",
            str(shared_data / "lima" / "val_instructions.jsonl"),
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert len(recs) == 56 and all(r["output"] for r in recs)
    man = json.loads((tmp_path / "o.manifest.json").read_text())
    assert "Q4_K_M GGUF, dequantized" in man["model"]["display_name"]


@pytest.mark.parametrize("model", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_paper_rule_strings_resolve_on_real_tokenizers(model):
    from implicit_it.rules import RuleAdapter

    tok = _tokenizer(model)
    adapter = RuleAdapter(tok)
    assert all(r.token_id is not None for r in adapter.resolved)  # all 15 are single tokens in both vocabularies
    assert_resolved_ids_spell_their_strings(tok, adapter)
    assert adapter.eos_token_id == tok.eos_token_id
    three_spaces = next(r for r in adapter.resolved if r.llama2_id == 1678)  # the paper's '▁▁▁'
    if model == "gemma-3-270m":
        assert (three_spaces.text, three_spaces.token_id) == ("   ", 139)
