"""Rule adapter semantics on hand-built sequences and tiny models."""

from __future__ import annotations

import pytest
import torch

from implicit_it.errors import ConfigError
from implicit_it.formats import encode_prompt, instruction_offset
from implicit_it.generation import generate_responses
from implicit_it.models import load_model
from implicit_it.rules import (
    PAPER_UNIFORM,
    RuleAdapter,
    RuleConfig,
    TokenScore,
    load_rule_config,
    parse_rules,
    rule_logit_delta,
    single_token_id,
)
from tests.helpers import assert_resolved_ids_spell_their_strings


@pytest.fixture(scope="module")
def tok(bytelevel_tokenizer):
    return bytelevel_tokenizer


def _adapter(tok, rules, **kw):
    return RuleAdapter(tok, RuleConfig(rules=rules, **kw))


def test_parse_rules():
    assert parse_rules("all") == ["eos", "uniform", "diversity"]
    assert parse_rules("eos, uniform,eos") == ["eos", "uniform"]
    assert parse_rules("none") == []
    with pytest.raises(ValueError, match="unknown rule"):
        parse_rules("eos,length")


def test_paper_constants():
    by_text = {t.text: t.score for t in PAPER_UNIFORM}
    assert len(PAPER_UNIFORM) == 15
    assert by_text["What"] == -5 and by_text[" should"] == -6 and by_text["\n"] == 1 and by_text[" I"] == -5
    cfg = RuleConfig()
    assert cfg.rules == ["eos", "uniform", "diversity"] and cfg.diversity_penalty == 1.5
    assert cfg.eos_slope * cfg.eos_max_length == pytest.approx(15.0)


@pytest.mark.parametrize("tokenizer_fixture", ["bytelevel_tokenizer", "merging_tokenizer"])
def test_resolution_by_string(request, tokenizer_fixture):
    """Byte-level BPE (GPT-2/OLMo/SmolLM2 style) and SentencePiece-style with "▁" (Llama/Gemma style)."""
    tok = request.getfixturevalue(tokenizer_fixture)
    ad = RuleAdapter(tok)
    assert_resolved_ids_spell_their_strings(tok, ad)
    report = ad.report()
    assert sum("no single-token match" in line for line in report) == sum(r.token_id is None for r in ad.resolved)
    assert single_token_id(tok, "zqxjv zqxjv") is None  # several tokens: no single-token match
    nl = single_token_id(tok, "\n")
    assert nl is not None and ad.uniform_vector[nl] == 1


def _row(tok, instruction="List fruits", response_ids=()):
    prompt = encode_prompt(tok, "tulu", instruction)
    return prompt, list(prompt) + list(response_ids), instruction_offset(tok, "tulu", instruction)


def test_eos_ramp_and_cap(tok):
    prompt, ids, _ = _row(tok, response_ids=[tok.eos_token_id + 5] * 300)
    x = torch.tensor([ids])
    positions = torch.tensor([len(prompt) - 1 + n for n in (0, 1, 100, 249, 250, 260)])
    eos = tok.eos_token_id
    zero = _adapter(tok, ["eos"]).scores(x, positions, torch.tensor([len(prompt)]))[0, :, eos]
    assert zero.tolist() == pytest.approx([0, 0.06, 6.0, 14.94, 0, 0])
    hold = _adapter(tok, ["eos"], eos_after_max="hold").scores(x, positions, torch.tensor([len(prompt)]))[0, :, eos]
    assert hold.tolist() == pytest.approx([0, 0.06, 6.0, 14.94, 15.0, 15.0])
    other = _adapter(tok, ["eos"]).scores(x, positions, torch.tensor([len(prompt)]))[0, :, eos + 1]
    assert other.abs().sum() == 0


def test_uniform_is_the_same_everywhere(tok):
    prompt, ids, _ = _row(tok, response_ids=[10, 11, 12])
    ad = _adapter(tok, ["uniform"])
    s = ad.scores(torch.tensor([ids]), torch.arange(len(prompt) - 1, len(ids)), torch.tensor([len(prompt)]))[0]
    assert torch.equal(s, ad.uniform_vector.expand_as(s))
    nl = single_token_id(tok, "\n")
    assert ad.uniform_vector[nl] == 1


def test_diversity_scopes(tok):
    resp = [200, 201, 200]
    prompt, ids, off = _row(tok, "Name three fruits", resp)
    x, last = torch.tensor([ids]), torch.tensor([len(ids) - 1])
    rs, ins = torch.tensor([len(prompt)]), torch.tensor([off])
    paper = _adapter(tok, ["diversity"]).scores(x, last, rs, instruction_start=ins)[0, 0]
    expected = set(ids[off:])  # instruction, assistant tag and response so far
    assert set(torch.nonzero(paper).flatten().tolist()) == expected
    assert paper[200].item() == -1.5  # once per distinct id, not per occurrence
    resp_only = _adapter(tok, ["diversity"], diversity_scope="response").scores(x, last, rs)[0, 0]
    assert set(torch.nonzero(resp_only).flatten().tolist()) == {200, 201}
    early = _adapter(tok, ["diversity"], diversity_scope="response").scores(x, torch.tensor([len(prompt)]), rs)[0, 0]
    assert set(torch.nonzero(early).flatten().tolist()) == {200}  # only what precedes that position
    with pytest.raises(ValueError, match="instruction_start"):
        _adapter(tok, ["diversity"]).scores(x, last, rs)


def test_start_rule(tok):
    prompt, ids, off = _row(tok, "Okay now", [300, 301, 302])
    ad = _adapter(tok, ["start"])
    x, rs, ins = torch.tensor([ids]), torch.tensor([len(prompt)]), torch.tensor([off])
    s = ad.scores(x, torch.arange(len(prompt) - 1, len(prompt) + 3), rs, instruction_start=ins)[0]
    first_ins = ids[off]
    assert s[0, first_ins] == pytest.approx(5 * ad.start_vector()[first_ins].item() - 6)
    bang, nl = single_token_id(tok, "!"), single_token_id(tok, "\n")
    assert s[1, bang] == 15 and s[2, nl] == -10 and s[3].abs().sum() == 0
    vec = ad.start_vector()
    assert vec[tok.convert_tokens_to_ids("I")] == -3 and vec[tok.convert_tokens_to_ids(".")] == -1


def test_logit_delta_exact_and_centred(tok):
    prompt, ids, off = _row(tok, response_ids=[50, 51])
    ad = _adapter(tok, ["eos", "uniform", "diversity"])
    x, pos = torch.tensor([ids]), torch.arange(len(prompt) - 1, len(ids))
    kw = dict(response_start=torch.tensor([len(prompt)]), instruction_start=torch.tensor([off]))
    base = torch.randn(1, len(pos), len(tok))
    delta = rule_logit_delta(ad, x, pos, base_logits=base, **kw)
    combined = torch.log_softmax(torch.log_softmax(base, -1) + torch.log_softmax(ad.scores(x, pos, **kw), -1), -1)
    assert torch.allclose(torch.log_softmax(base, -1) + delta, combined, atol=1e-5)
    centred = rule_logit_delta(ad, x, pos, **kw)
    assert torch.allclose(centred.exp().sum(-1), torch.ones(len(pos)).unsqueeze(0), atol=1e-4)


def test_rules_change_generation_and_eos_ends_it(tiny_llama_dir):
    loaded = load_model(tiny_llama_dir, device="cpu")
    ins = ["Hi", "List three fruits.", "What is 2+2?"]
    base, _ = generate_responses(loaded, ins, max_new_tokens=30, show_progress=False)
    steep = RuleAdapter(loaded.tokenizer, RuleConfig(rules=["eos"], eos_slope=5.0))
    ruled, _ = generate_responses(loaded, ins, max_new_tokens=30, logits_processor_factory=steep.logits_processor, show_progress=False)
    assert all(r.stopped and len(r.token_ids) <= 6 for r in ruled)
    assert [r.token_ids for r in ruled] != [r.token_ids for r in base]
    # batched == one at a time with the diversity rule (per-row instruction starts under left padding)
    div = RuleAdapter(loaded.tokenizer, RuleConfig(rules=["diversity", "uniform"]))
    b3, _ = generate_responses(
        loaded, ins, max_new_tokens=12, batch_size=3, logits_processor_factory=div.logits_processor, show_progress=False
    )
    b1, _ = generate_responses(
        loaded, ins, max_new_tokens=12, batch_size=1, logits_processor_factory=div.logits_processor, show_progress=False
    )
    assert [r.token_ids for r in b3] == [r.token_ids for r in b1]


def test_rule_config_yaml(tmp_path):
    good = load_rule_config("configs/rules/paper.yaml")
    assert good == RuleConfig()
    p = tmp_path / "r.yaml"
    p.write_text("rules: [eos]\nuniform:\n  - text: ' I'\n    scor: -5\n")
    with pytest.raises(ConfigError, match=r"uniform\.0\.scor"):
        load_rule_config(p)
    p.write_text("rules: [eos]\nuniform: [{text: x, score: 2}]\n")
    assert load_rule_config(p).uniform == [TokenScore(text="x", score=2)]


def test_start_space_markers_switch_to_the_papers_marker(bytelevel_tokenizer):
    """With the paper's '▁' only, a byte-level word after a space ('Ġ...') scores as an upper-case letter: +1."""
    tokens = bytelevel_tokenizer.convert_ids_to_tokens(list(range(len(bytelevel_tokenizer))))
    spaced_punct = [i for i, t in enumerate(tokens) if t and len(t) > 1 and t[0] == "Ġ" and t[1] in ".,:;!?-"]
    assert spaced_punct
    ours = RuleAdapter(bytelevel_tokenizer, RuleConfig(rules=["start"])).start_vector()
    paper = RuleAdapter(bytelevel_tokenizer, RuleConfig(rules=["start"], start_space_markers=["▁"])).start_vector()
    assert ours[spaced_punct].eq(-1).all() and paper[spaced_punct].eq(1).all()
