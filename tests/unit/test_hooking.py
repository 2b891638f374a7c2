"""TransformerLens bridge and nnsight wrap the same weights and give the HF logits."""

from __future__ import annotations

import torch

from implicit_it.hooking import nnsight_model, transformer_bridge
from implicit_it.models import load_model


def test_bridge_and_nnsight_match_hf(tiny_model_dir):
    loaded = load_model(tiny_model_dir, device="cpu", use_process_cache=False)
    ids = loaded.tokenizer(["<|user|>\nHello there\n<|assistant|>\nHi"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = loaded.model(ids).logits
    bridge = transformer_bridge(loaded)
    with torch.no_grad():
        assert (bridge(ids) - ref).abs().max() <= 1e-4
    lm = nnsight_model(loaded)
    with torch.no_grad(), lm.trace(ids):
        out = lm.output.save()
    assert (out.logits - ref).abs().max() <= 1e-4
    # no second copy of the weights
    assert bridge.original_model is loaded.model and lm._module is loaded.model
