"""implicit-it's rule adapter equals the port of the paper's InsTunerModel, exactly.

On hand-built sequences that contain a chat turn the "model" wrote itself (``<|user|>…<|assistant|>``
after some response tokens), over 300 positions so that the EOS ramp, its cut-off at 250 and the
restart after the generated turn are all exercised; and through batched, left-padded, KV-cached
generation with the ``RuleLogitsProcessor`` on a tiny random model, against the paper's loop
(batch 1, no cache, the rules recomputed on the whole prefix every step).
"""

from __future__ import annotations

import pytest
import torch

from implicit_it.formats import continuation_ids, encode_prompt, instruction_offset
from implicit_it.generation import generate_ids
from implicit_it.models import load_model
from implicit_it.rules import RuleAdapter, RuleConfig
from tests.conftest import save_tiny_model
from tests.fidelity.paper_rules import PaperRules

RULE_SETS = [["eos"], ["uniform"], ["diversity"], ["start"], ["eos", "uniform", "diversity"], ["eos", "uniform", "diversity", "start"]]


def _port(tok, adapter: RuleAdapter, rules, first_token_penalty=False) -> PaperRules:
    uniform = {int(i): float(adapter.uniform_vector[i]) for i in torch.nonzero(adapter.uniform_vector).flatten()}
    return PaperRules(
        tok,
        user_tag=adapter.user_tag_ids,
        assistant_tag=adapter.assistant_tag_ids,
        uniform=uniform,
        bang_id=adapter._second,
        newline_id=adapter._third,
        eos_id=tok.eos_token_id,
        magic_string=",".join(rules),
        first_token_penalty=first_token_penalty,
        space_marker="Ġ",
    )


def _with_generated_turn(tok, instruction="Name three fruits", before=80, after=220, turn_user=True, turn_assistant=True):
    prompt = encode_prompt(tok, "tulu", instruction)
    g = torch.Generator().manual_seed(0)
    filler = lambda n: torch.randint(10, len(tok), (n,), generator=g).tolist()  # noqa: E731
    turn = ("\n<|user|>\n" if turn_user else "\n") + "Write a poem." + ("\n<|assistant|>\n" if turn_assistant else "\n")
    ids = prompt + filler(before) + continuation_ids(tok, turn) + filler(after)
    return prompt, ids, instruction_offset(tok, "tulu", instruction, prompt)


@pytest.fixture(scope="module")
def tok(bytelevel_tokenizer):
    return bytelevel_tokenizer  # its tags are separate tokens, as Llama-2's are


def test_tags_are_found_where_the_chat_writes_them(tok):
    adapter = RuleAdapter(tok)
    prompt, ids, _ = _with_generated_turn(tok)
    a, u = adapter.assistant_tag_ids, adapter.user_tag_ids
    assert prompt[-len(a) :] == a  # the prompt's own assistant tag
    found = lambda tag: [i for i in range(len(ids)) if ids[i : i + len(tag)] == tag]  # noqa: E731
    assert found(u) == [1, found(u)[1]] and len(found(a)) == 2  # after BOS, and in the generated turn


@pytest.mark.parametrize("turn", ["user+assistant", "user only"])
@pytest.mark.parametrize("rules", RULE_SETS, ids="+".join)
def test_scores_equal_the_paper_port(tok, rules, turn):
    prompt, ids, off = _with_generated_turn(tok, turn_assistant=turn == "user+assistant")
    adapter = RuleAdapter(tok, RuleConfig(rules=rules, start_first_instruction_token=0.0))
    port = _port(tok, adapter, rules)
    positions = torch.arange(len(prompt) - 1, len(ids))
    ours = adapter.scores(torch.tensor([ids]), positions, torch.tensor([len(prompt)]), instruction_start=torch.tensor([off]))[0]
    for j, t in enumerate(positions.tolist()):
        assert torch.equal(ours[j], port.scores(ids[: t + 1])), (rules, t - len(prompt) + 1)


def test_start_rule_first_instruction_token_equals_d63f9f8(tok):
    prompt, ids, off = _with_generated_turn(tok)
    adapter = RuleAdapter(tok, RuleConfig(rules=["start"]))  # default -6, as at d63f9f8
    port = _port(tok, adapter, ["start"], first_token_penalty=True)
    positions = torch.arange(len(prompt) - 1, len(ids))
    ours = adapter.scores(torch.tensor([ids]), positions, torch.tensor([len(prompt)]), instruction_start=torch.tensor([off]))[0]
    assert all(torch.equal(ours[j], port.scores(ids[: t + 1])) for j, t in enumerate(positions.tolist()))


def test_the_generated_turn_restarts_the_response(tok):
    """What re-finding the tags changes: the EOS ramp and the diversity set restart after the turn."""
    prompt, ids, off = _with_generated_turn(tok)  # 80 tokens, the turn, 220 tokens
    x, t = torch.tensor([ids]), torch.tensor([len(ids) - 200])  # 21 tokens after the generated turn
    kw = dict(response_start=torch.tensor([len(prompt)]), instruction_start=torch.tensor([off]))

    def run(rules, anchor):
        return RuleAdapter(tok, RuleConfig(rules=rules, scope_anchor=anchor)).scores(x, t, **kw)[0, 0]

    eos = tok.eos_token_id
    n_total = len(ids) - 200 + 1 - len(prompt)
    assert run(["eos"], "last_tag")[eos].item() == pytest.approx(0.06 * 21)
    assert run(["eos"], "prompt")[eos].item() == pytest.approx(0.06 * n_total)
    u = RuleAdapter(tok).user_tag_ids
    after_user_tag = max(i for i in range(len(ids)) if ids[i : i + len(u)] == u) + len(u)
    assert after_user_tag > len(prompt)
    assert set(torch.nonzero(run(["diversity"], "last_tag")).flatten().tolist()) == set(ids[after_user_tag : len(ids) - 199])
    assert set(torch.nonzero(run(["diversity"], "prompt")).flatten().tolist()) == set(ids[off : len(ids) - 199])


@torch.no_grad()
def test_batched_generation_equals_the_paper_loop(tok, tmp_path_factory):
    """Batched, left-padded, KV-cached generation = the paper's loop, through a forced generated turn."""
    loaded = load_model(save_tiny_model("llama", tok, tmp_path_factory.mktemp("fid-rules")), device="cpu")
    model = loaded.model
    rules = ["eos", "uniform", "diversity", "start"]
    adapter = RuleAdapter(tok, RuleConfig(rules=rules, start_first_instruction_token=0.0))
    port = _port(tok, adapter, rules)
    turn = continuation_ids(tok, "\n<|user|>\nMore.\n<|assistant|>\n")
    force_at = 4  # response step at which the scripted turn starts

    class Force:  # after the rules: replaces the choice with the scripted turn at its steps
        def __init__(self, width):
            self.width = width

        def __call__(self, input_ids, scores):
            k = input_ids.shape[1] - self.width - force_at
            if 0 <= k < len(turn):
                scores = torch.full_like(scores, -1e9)
                scores[:, turn[k]] = 0
            return scores

    instructions = ["Name three fruits", "Tell me a very short story about a cat please", "Hi"]
    prompts = [encode_prompt(tok, "tulu", i) for i in instructions]
    offsets = [instruction_offset(tok, "tulu", i, p) for i, p in zip(instructions, prompts, strict=True)]
    n_new = 40
    fast, _, _ = generate_ids(
        model,
        prompts,
        pad_token_id=tok.pad_token_id,
        stop_token_ids=(),
        max_new_tokens=n_new,
        batch_size=3,
        instruction_offsets=offsets,
        logits_processor_factory=lambda b: [adapter.logits_processor(b), Force(b.prompt_width)],
    )
    for prompt, got in zip(prompts, fast, strict=True):
        ids = list(prompt)
        for _ in range(n_new):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            scores = port.combined(logits, ids).unsqueeze(0)
            scores = Force(len(prompt))(torch.tensor([ids]), scores)
            ids.append(int(scores.argmax()))
        assert got == ids[len(prompt) :]
        assert got[force_at : force_at + len(turn)] == turn
