"""Probes on the real Gemma-3-270M (Q4_K_M GGUF, dequantized to fp32), marked ``real_model``.

The fast ranking scorer must equal the paper's batch-1 loop, and the per-layer numbers read with
nnsight (the implementation) must equal those read with the TransformerLens bridge.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implicit_it.data import read_ranking_source
from implicit_it.hooking import transformer_bridge
from implicit_it.models import load_model
from implicit_it.probes import OUTPUT, LogitLens, PairForward, build_ranking_groups, encode_groups, paper_scores, parse_layers, score_groups

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def lima(shared_data):
    return read_ranking_source(shared_data / "lima" / "train.jsonl", limit=3)


def test_fast_ranking_scores_equal_the_paper_loop(real_gemma, lima):
    enc = encode_groups(real_gemma.tokenizer, "tulu", lima, build_ranking_groups(lima, negatives=2), max_length=256)
    fast = score_groups(PairForward(real_gemma, max_batch_tokens=2048), enc)
    ref = paper_scores(real_gemma.model, enc)
    assert np.abs(fast.mean(OUTPUT) - ref.mean(OUTPUT)).max() <= 1e-4
    assert np.abs(fast.totals[OUTPUT] - ref.totals[OUTPUT]).max() <= 1e-4 * ref.n_tokens.max()


def test_nnsight_layers_equal_transformer_lens_bridge(lima):
    loaded = load_model("gemma-3-270m", device="cpu")  # the bridge works on a copy that shares the weights
    groups = build_ranking_groups(lima, negatives=1)[:2]
    enc = encode_groups(loaded.tokenizer, "tulu", lima, groups, max_length=96)
    forward = PairForward(loaded, max_batch_tokens=1024)
    layers = parse_layers("every:3", forward.n_layers)
    ours = score_groups(forward, enc, layers=layers)  # nnsight, prefix reuse, batched

    bridge = transformer_bridge(loaded)
    lens = LogitLens(loaded.model)
    names = {0: "embed.hook_out", **{layer: f"blocks.{layer - 1}.hook_out" for layer in layers if layer}}
    for gi, g in enumerate(enc):
        for ci, resp in enumerate(g.responses):
            ids = torch.tensor([list(g.prompt_ids) + list(resp)])
            with torch.no_grad():
                _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names.values())
            start = len(g.prompt_ids) - 1
            for layer in layers:
                resid = cache[names[layer]][0, start : start + len(resp)]
                theirs = float(lens.token_logprobs(resid, torch.tensor(resp)).double().sum())
                assert abs(theirs - ours.totals[layer][gi, ci]) / len(resp) <= 1e-4, (layer, theirs, ours.totals[layer][gi, ci])
