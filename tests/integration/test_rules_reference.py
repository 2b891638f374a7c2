"""The fast rule-adapter path equals a deliberately naive reference on the real Gemma-3-270M.

Reference: batch size 1, no KV cache (the whole prefix is recomputed every token, as in the
paper's CombinedCausalLM), and the rules re-implemented here with Python sets and loops.
Fast path: batch 8, left padding, KV cache, the ``RuleLogitsProcessor``. Greedy outputs must be
token-identical for 8 prompts x 64 tokens, for each ablation.
"""

from __future__ import annotations

import pytest
import torch

from implicit_it.data import read_instructions
from implicit_it.formats import encode_prompt, instruction_offset
from implicit_it.generation import generate_responses
from implicit_it.rules import RuleAdapter, RuleConfig

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

N_PROMPTS, N_TOKENS = 8, 64


def naive_rule_scores(ids: list[int], n_prompt: int, ins_start: int, adapter: RuleAdapter, rules: set[str]) -> torch.Tensor:
    r = torch.zeros(adapter.vocab_size)
    n = len(ids) - n_prompt  # response tokens generated so far
    if "uniform" in rules:
        for item in adapter.resolved:
            if item.token_id is not None:
                r[item.token_id] = item.score
    if "diversity" in rules:
        for w in set(ids[ins_start:]):
            r[w] -= 1.5
    if "eos" in rules and 0 < n < 250:
        r[adapter.eos_token_id] += 15 * n / 250
    if "start" in rules:
        if n == 0:
            r += 5 * adapter.start_vector()
            r[ids[ins_start]] -= 6
        elif n == 1:
            r[adapter._second] += 15
        elif n == 2:
            r[adapter._third] -= 10
    return r


@torch.no_grad()
def naive_generate(model, tok, instruction: str, adapter: RuleAdapter, rules: set[str]) -> list[int]:
    ids = encode_prompt(tok, "tulu", instruction)
    n_prompt, ins_start = len(ids), instruction_offset(tok, "tulu", instruction)
    out = []
    for _ in range(N_TOKENS):
        logits = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1]
        combined = torch.log_softmax(logits, -1) + torch.log_softmax(naive_rule_scores(ids, n_prompt, ins_start, adapter, rules), -1)
        nxt = int(combined.argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


@pytest.mark.parametrize("rules", [["eos"], ["uniform"], ["diversity"], ["eos", "uniform", "diversity"], ["eos", "uniform", "diversity", "start"]],
                         ids=lambda r: "+".join(r))
def test_fast_path_equals_naive_reference(real_gemma, shared_data, rules):
    tok = real_gemma.tokenizer
    instructions = [i.instruction for i in read_instructions(shared_data / "lima" / "val_instructions.jsonl")][:N_PROMPTS]
    adapter = RuleAdapter(tok, RuleConfig(rules=rules))
    fast, _ = generate_responses(real_gemma, instructions, max_new_tokens=N_TOKENS, batch_size=8,
                                 logits_processor_factory=adapter.logits_processor, show_progress=False)
    for instruction, result in zip(instructions, fast, strict=True):
        assert result.token_ids == naive_generate(real_gemma.model, tok, instruction, adapter, set(rules)), instruction
