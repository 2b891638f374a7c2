"""Batched KV-cached greedy decoding on tiny random models."""

from __future__ import annotations

import json

import torch
from transformers import LogitsProcessor

from implicit_it.formats import encode_prompt
from implicit_it.generation import PromptBatch, alpaca_eval_records, generate_ids, generate_responses
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
    assert [set(r) for r in recs] == [{"instruction", "output", "generator", "dataset"}] * 2
    assert recs[0]["dataset"] == "d1" and recs[1]["dataset"] == "implicit_it"
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
