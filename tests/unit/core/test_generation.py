"""Batched KV-cached greedy decoding on tiny random models."""

from __future__ import annotations

import json

import torch
from transformers import LogitsProcessor

from implicit_it.formats import encode_prompt
from implicit_it.generation import (
    GenerationResult,
    PromptBatch,
    alpaca_eval_records,
    compare_generations,
    generate_ids,
    generate_responses,
    ranked_scores,
)
from implicit_it.models import load_model

INSTRUCTIONS = [
    "Hi",
    "Explain why the sky is blue in detail please",
    "List three fruits.",
    "What is 2+2?",
    "Write a haiku about the sea and the moon",
]


def test_batched_equals_single(tiny_model_dir):
    loaded = load_model(tiny_model_dir, device="cpu")
    r4, _ = generate_responses(loaded, INSTRUCTIONS, max_new_tokens=12, batch_size=4, show_progress=False)
    r1, _ = generate_responses(loaded, INSTRUCTIONS, max_new_tokens=12, batch_size=1, show_progress=False)
    assert [r.token_ids for r in r4] == [r.token_ids for r in r1]
    assert [r.instruction for r in r4] == INSTRUCTIONS  # caller's order restored after length sorting


def test_matches_manual_greedy_loop(tiny_llama_dir):
    """KV-cached generate == argmax over full forward passes, token by token."""
    loaded = load_model(tiny_llama_dir, device="cpu")
    prompt = encode_prompt(loaded.tokenizer, "tulu", "Name a colour.")
    (fast,), _, _ = generate_ids(loaded.model, [prompt], pad_token_id=0, stop_token_ids=(), max_new_tokens=10, batch_size=1)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            ids.append(int(loaded.model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert fast == ids[len(prompt) :]


class ForceToken(LogitsProcessor):
    def __init__(self, token_id: int, after: int, prompt_width: int):
        self.token_id, self.after, self.prompt_width = token_id, after, prompt_width

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_width >= self.after:  # response length, same for every row
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token_id] = 0
        return scores


def test_logits_processor_hook_and_stop(tiny_llama_dir):
    loaded = load_model(tiny_llama_dir, device="cpu")
    eos = loaded.tokenizer.eos_token_id
    seen: list[PromptBatch] = []

    def factory(batch: PromptBatch):
        seen.append(batch)
        return ForceToken(eos, after=3, prompt_width=batch.prompt_width)

    results, stats = generate_responses(
        loaded, INSTRUCTIONS, max_new_tokens=20, batch_size=2, logits_processor_factory=factory, show_progress=False
    )
    assert all(r.stopped and len(r.token_ids) == 3 for r in results)  # EOS forced at position 3, then cut
    assert stats.n_new_tokens == 4 * len(INSTRUCTIONS)
    assert len(seen) == 3 and sorted(i for b in seen for i in b.indices) == list(range(len(INSTRUCTIONS)))
    assert all(b.input_ids.shape[1] == max(b.prompt_lengths) for b in seen)


def test_records_are_alpaca_eval_format(tiny_llama_dir):
    loaded = load_model(tiny_llama_dir, device="cpu")
    results, _ = generate_responses(loaded, INSTRUCTIONS[:2], max_new_tokens=4, show_progress=False)
    recs = alpaca_eval_records(results, "tiny", ["d1", ""])
    assert [set(r) for r in recs] == [{"instruction", "output", "generator", "dataset", "ended_with_eos", "n_tokens"}] * 2
    assert recs[0]["dataset"] == "d1" and recs[1]["dataset"] == "implicit_it"
    assert [r["n_tokens"] for r in recs] == [len(r.token_ids) for r in results] and recs[0]["ended_with_eos"] == results[0].stopped
    assert {r["dataset"] for r in alpaca_eval_records(results, "tiny", "ifeval")} == {"ifeval"}  # one name for all
    json.dumps(recs)


def test_no_stop_tokens_decodes_full_budget(tiny_llama_dir):
    loaded = load_model(tiny_llama_dir, device="cpu")
    eos = loaded.tokenizer.eos_token_id
    loaded.model.generation_config.eos_token_id = eos  # a checkpoint default must not sneak back in
    force_eos = lambda batch: ForceToken(eos, after=2, prompt_width=batch.prompt_width)
    prompts = [encode_prompt(loaded.tokenizer, "tulu", i) for i in INSTRUCTIONS[:2]]
    out, stopped, _ = generate_ids(
        loaded.model, prompts, pad_token_id=0, stop_token_ids=(), max_new_tokens=6, logits_processor_factory=force_eos
    )
    assert [len(o) for o in out] == [6, 6] and stopped == [False, False]
    assert out[0][2:] == [eos] * 4


def test_compare_generations_accepts_only_near_ties():
    def res(ids, stopped=False):
        return GenerationResult("i", "", list(ids), stopped)

    same, _ = compare_generations([res([5, 6])], [res([5, 6])], {}, {}, 1e-3)
    assert same
    # part at token 1 where 6 and 7 scored within 0.0005 of each other in both runs (order of a tie may differ): a near-tie
    t1 = {0: [([5, 9], [1.0, 0.0]), ([7, 6], [-1.0, -1.0])]}
    t2 = {0: [([5, 9], [1.0, 0.0]), ([7, 6], [-1.0, -1.0004])]}
    ok, detail = compare_generations([res([5, 6])], [res([5, 7])], t1, t2, 1e-3)
    assert ok and "near-tie" in detail
    # the same parting with a wide gap is a failure, and so is a choice missing from the other run's top tokens
    t1 = {0: [([5, 9], [1.0, 0.0]), ([6, 7], [-1.0, -1.5])]}
    ok, detail = compare_generations([res([5, 6])], [res([5, 7])], t1, t2, 1e-3)
    assert not ok and "parts at token 1" in detail
    ok, detail = compare_generations([res([5, 6])], [res([5, 8])], t1, t2, 1e-3)
    assert not ok and "not in the top" in detail
    # a stop (any stop id) against a token, tied
    t1 = {0: [([5, 9], [1.0, 0.0]), ([2, 6], [-1.0, -1.0])]}
    t2 = {0: [([5, 9], [1.0, 0.0]), ([6, 2], [-1.0, -1.0])]}
    ok, _ = compare_generations([res([5], stopped=True)], [res([5, 6])], t1, t2, 1e-3, stop_ids=[2])
    assert ok


def test_ranked_scores_orders_best_first():
    assert ranked_scores([(3, -2.0), (7, 0.5), (1, -0.1)]) == ([7, 1, 3], [0.5, -0.1, -2.0])


def test_gap_noise_measures_disagreement_only_where_the_runs_agree():
    from implicit_it.generation import gap_noise

    def res(ids):
        return GenerationResult("i", "", list(ids), False)

    # step 0: both runs pick 5; token 9 is 1.0 below in one run and 1.25 below in the other -> noise 0.25 (and 0 for 5)
    # step 1: the runs part (6 vs 7): nothing from here on counts, however different the scores
    first = {0: [([5, 9], [2.0, 1.0]), ([6, 7], [0.0, -9.0])]}
    second = {0: [([5, 9], [3.0, 1.75]), ([7, 6], [0.0, -0.1])]}
    noise = gap_noise([res([5, 6])], [res([5, 7])], first, second)
    assert sorted(noise) == [0.0, 0.25]
    # identical runs: every recorded step counts
    assert sorted(gap_noise([res([5, 6])], [res([5, 6])], first, first)) == [0.0] * 4
