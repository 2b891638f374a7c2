"""Layer-diff analyses on the real Gemma-3-270M (Q4_K_M GGUF, dequantized to fp32), marked ``real_model``.

The planted variant adds the paper's 15 uniform-rule scores as a bias on the unembedding, so its
change is exactly a per-token constant: over Gemma's full 262k vocabulary the fitted rule family
must explain it at every layer and recover the paper's scores as its constants.
"""

from __future__ import annotations

import pytest
import torch

from implicit_it.analyses import DeltaPassConfig, LayerDiff, WeightDelta, checkpoint_dir, texts_from_source
from implicit_it.data import read_ranking_source
from implicit_it.models import load_model
from implicit_it.rules import RuleAdapter

pytestmark = pytest.mark.real_model


def test_planted_paper_constants_are_recovered_on_gemma(real_gemma, shared_data):
    adapter = RuleAdapter(real_gemma.tokenizer)
    variant = load_model("gemma-3-270m", device="cpu", use_process_cache=False)
    head = variant.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = torch.nn.Parameter(head.weight.detach().clone())
    biased.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    biased.bias.data[: adapter.vocab_size] = adapter.uniform_vector
    variant.model.lm_head = biased
    texts = texts_from_source(read_ranking_source(shared_data / "lima" / "val_reference_gpt35.json", limit=4))
    diff = LayerDiff(
        analyses=["logits", "rules", "shift"], texts=["data"], vocab="all", pass_config=DeltaPassConfig(max_length=128, layers="0,9")
    )
    run = diff.run(real_gemma, variant, texts, base_spec="gemma-3-270m", variant_spec="gemma+uniform-bias")
    rules = run.results["rules"].entries[0]
    assert rules["n_vocab_columns"] == adapter.vocab_size
    assert [layer["layer"] for layer in rules["per_layer"]] == [0, 9, 18]
    for layer in rules["per_layer"]:
        assert layer["variance_explained_rule_family"] > 0.999
    for p in rules["paper_tokens"]:
        if p["token_id"] is not None:
            assert p["fitted_shift"] == pytest.approx(adapter.uniform_vector[p["token_id"]].item(), abs=0.05), p
    logits = run.results["logits"].entries[0]
    # the bias acts after every layer, but KL weighs it by how likely the biased tokens are there:
    # through the lens at layer 0 they are all but impossible, so the KL there is ~0
    assert logits["kl_output"] > 1e-3 and all(layer["kl"] > -1e-6 for layer in logits["layers"])
    assert {t["token_id"] for t in logits["demoted_tokens"][:5]} & {r.token_id for r in adapter.resolved if r.score < 0}


def test_weights_of_the_base_against_itself_are_unchanged():
    directory = checkpoint_dir("gemma-3-270m")
    entry = WeightDelta(spectrum=True).run(directory, directory).entries[0]
    assert entry["n_tensors_changed"] == 0 and len(entry["tensors"]) == 236
    assert all(t["cosine"] == pytest.approx(1.0) for t in entry["tensors"] if t["base_norm"] > 0)
