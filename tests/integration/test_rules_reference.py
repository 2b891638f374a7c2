"""The fast rule-adapter path equals a deliberately naive reference on the real Gemma-3-270M.

Reference: batch size 1, no KV cache (the whole prefix is recomputed every token, as in the
paper's CombinedCausalLM), and the rules re-implemented here with Python sets and loops.
Fast path: batch 8, left padding, KV cache, the ``RuleLogitsProcessor``. Greedy outputs must be
token-identical for 4 prompts x 64 tokens, with every rule on, and through a chat turn forced into
the response (``<|user|>…<|assistant|>``), after which the paper re-finds both tags.
"""

from __future__ import annotations

import pytest
import torch

from implicit_it.data import read_instructions
from implicit_it.formats import continuation_ids, encode_prompt, instruction_offset
from implicit_it.generation import generate_responses
from implicit_it.rules import RuleAdapter, RuleConfig

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

N_PROMPTS, N_TOKENS = 4, 64


def _after_last(ids: list[int], tag: list[int], default: int) -> int:
    ends = [i + len(tag) for i in range(len(ids)) if ids[i : i + len(tag)] == tag]
    return max([default, *ends])


def naive_rule_scores(ids: list[int], n_prompt: int, ins_start: int, adapter: RuleAdapter, rules: set[str]) -> torch.Tensor:
    r = torch.zeros(adapter.vocab_size)
    n_prompt = _after_last(ids, adapter.assistant_tag_ids, n_prompt)  # the paper re-finds the tags every step
    ins_start = _after_last(ids, adapter.user_tag_ids, ins_start)
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


class ForceTurn:
    """After the rules: writes a chat turn into the response at steps 8.. (none when ``turn`` is empty)."""

    def __init__(self, width: int, turn: list[int]):
        self.width, self.turn = width, turn

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.width - 8
        if 0 <= k < len(self.turn):
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.turn[k]] = 0
        return scores


@torch.no_grad()
def naive_generate(model, tok, instruction: str, adapter: RuleAdapter, rules: set[str], turn: list[int] = ()) -> list[int]:
    ids = encode_prompt(tok, "tulu", instruction)
    n_prompt, ins_start = len(ids), instruction_offset(tok, "tulu", instruction)
    force = ForceTurn(n_prompt, list(turn))
    out = []
    for _ in range(N_TOKENS):
        logits = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1]
        combined = torch.log_softmax(logits, -1) + torch.log_softmax(naive_rule_scores(ids, n_prompt, ins_start, adapter, rules), -1)
        combined = force(torch.tensor([ids]), combined.unsqueeze(0))[0]
        nxt = int(combined.argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


TURN = "\n<|user|>\nAnd now?\n<|assistant|>\n"
# every rule together (the start rule included), and the paper's three rules through a generated turn. Each single rule
# and each ablation meets the naive reference on tiny models in tests/fidelity/test_rules.py; on the real model each
# case costs ~1 min of CPU, so the suite keeps the two that exercise every rule at once.
CASES = [(["eos", "uniform", "diversity", "start"], ""), (["eos", "uniform", "diversity"], TURN)]


@pytest.mark.parametrize("rules,turn", CASES, ids=lambda v: "+".join(v) if isinstance(v, list) else ("generated_turn" if v else "no_turn"))
def test_fast_path_equals_naive_reference(real_gemma, shared_data, rules, turn):
    tok = real_gemma.tokenizer
    instructions = [i.instruction for i in read_instructions(shared_data / "lima" / "val_instructions.jsonl")][:N_PROMPTS]
    adapter = RuleAdapter(tok, RuleConfig(rules=rules))
    turn_ids = continuation_ids(tok, turn) if turn else []
    if turn:
        assert _after_last(turn_ids, adapter.assistant_tag_ids, 0) == len(turn_ids)  # the forced turn holds the tags
    fast, _ = generate_responses(
        real_gemma,
        instructions,
        max_new_tokens=N_TOKENS,
        batch_size=8,
        show_progress=False,
        logits_processor_factory=lambda b: [adapter.logits_processor(b), ForceTurn(b.prompt_width, turn_ids)],
    )
    for instruction, result in zip(instructions, fast, strict=True):
        assert result.token_ids == naive_generate(real_gemma.model, tok, instruction, adapter, set(rules), turn_ids), instruction
