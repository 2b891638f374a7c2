"""Training on the real Gemma-3-270M (Q4_K_M GGUF, dequantized): two optimizer steps, end to end."""

from __future__ import annotations

import json

import pytest
import torch

from implicit_it.app.config import load_config
from implicit_it.formats import encode_prompt
from implicit_it.models import load_model
from implicit_it.training import Variant, build_variant_data, train_variant

pytestmark = pytest.mark.real_model


def test_demo_config_data_keeps_whole_examples(real_gemma):
    cfg = load_config("configs/demo.yaml")
    data = build_variant_data(cfg, Variant("response"), real_gemma.tokenizer)
    assert len(data.examples) == cfg.data.max_train_examples and data.n_truncated == 0
    eos = real_gemma.tokenizer.eos_token_id
    assert all(e.input_ids[-1] == eos and len(e.input_ids) <= cfg.training.max_length for e in data.examples)
    prompt = encode_prompt(real_gemma.tokenizer, "tulu", "")
    assert real_gemma.tokenizer.decode(prompt) == "<bos><|user|>\n\n<|assistant|>\n"
    assert all(e.input_ids[: e.n_prompt_tokens] == prompt for e in data.examples)


def test_two_steps_on_gemma_give_a_loadable_trained_model(tmp_path):
    cfg = load_config("configs/demo.yaml")
    training = cfg.training.model_copy(update={"max_steps": 2, "effective_batch_size": 2, "per_device_batch_size": 2, "max_length": 96})
    cfg = cfg.model_copy(
        update={"training": training, "data": cfg.data.model_copy(update={"max_train_examples": 4, "heldout_examples": 2})}
    )
    res = train_variant(cfg, Variant("response"), out_dir=tmp_path / "g", show_progress=False)
    r = res.results
    assert r["optimizer_steps"] == 2 and len(r["loss_curve"]) == 2 and math_finite(r["final_loss"])
    assert r["trainable_parameters"] < res.manifest["model"]["n_parameters"]  # embeddings (= tied LM head) frozen
    manifest = json.loads((tmp_path / "g" / "train_manifest.json").read_text())
    assert manifest["model"]["quantization"] == "Q4_K_M" and manifest["model"]["loaded_from"].startswith("gguf")
    trained = load_model(tmp_path / "g", device="cpu", use_process_cache=False)
    base = load_model("gemma-3-270m", device="cpu", use_process_cache=False)  # a pristine copy: other tests hook the cached one
    assert trained.model.config.architectures == ["Gemma3ForCausalLM"]
    ids = torch.tensor([encode_prompt(base.tokenizer, "tulu", "Name three primary colours.")])
    with torch.no_grad():
        assert not torch.allclose(trained.model(input_ids=ids).logits, base.model(input_ids=ids).logits, atol=1e-4)
    sd_t, sd_b = trained.model.state_dict(), base.model.state_dict()
    assert torch.equal(sd_t["model.embed_tokens.weight"], sd_b["model.embed_tokens.weight"])


def math_finite(x: float) -> bool:
    import math

    return math.isfinite(x)
