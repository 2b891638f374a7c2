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
    # no second copy of the weights: nnsight traces the module itself, the bridge shares its tensors
    assert lm._module is loaded.model
    ours = {p.data_ptr() for p in loaded.model.parameters()}
    assert {p.data_ptr() for p in bridge.original_model.parameters()} == ours


def _structure(model):
    return [(name, type(m)) for name, m in model.named_modules()], model.config.to_dict()


def test_building_a_bridge_leaves_the_model_untouched(tiny_model_dir):
    """load_model caches models by spec: a bridge must not rewire the cached module."""
    loaded = load_model(tiny_model_dir, device="cpu", use_process_cache=False)
    ids = loaded.tokenizer(["<|user|>\nHello there\n<|assistant|>\nHi"], return_tensors="pt").input_ids
    before, attn = _structure(loaded.model), loaded.model.config._attn_implementation
    lm = nnsight_model(loaded)  # nnsight patches each module it traces; the bridge must not inherit that
    with torch.no_grad(), lm.trace(ids):
        traced = lm.output.save()
    with torch.no_grad():
        ref = loaded.model(ids).logits
    bridge = transformer_bridge(loaded)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
        after = loaded.model(ids).logits
    assert "embed.hook_out" in cache and "blocks.1.hook_out" in cache  # the bridge's own hooks fire
    assert torch.equal(traced.logits, ref)
    assert _structure(loaded.model) == before and loaded.model.config._attn_implementation == attn
    assert torch.equal(after, ref)  # bit-identical
    assert bridge.original_model is not loaded.model
