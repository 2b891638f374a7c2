"""Training data and loss: implicit-it against the port of the paper's ``finetune.py``.

Every LIMA example (1,000 single-turn and 30 multi-turn), for instruction and response tuning,
is encoded by both; ids and labels must be equal, token for token. The loss of one optimizer
step (per-example mean, then mean over the step's examples) and the LR schedule are compared
on a tiny model.
"""

from __future__ import annotations

import json

import pytest
import torch

from implicit_it.app.config import parse_config
from implicit_it.formats import conversation_turns, encode_conversation
from implicit_it.models import load_model
from implicit_it.training.engine import example_mean_loss, open_instruct_schedule
from implicit_it.training.variants import EncodedDataset, MaskedLMCollator, Variant, build_variant_data

from . import paper_finetune as paper


def _lima(shared_data) -> list[dict]:
    return [json.loads(line) for line in (shared_data / "lima" / "train.jsonl").read_text(encoding="utf-8").splitlines()]


def _config(shared_data, model_spec: str, **data) -> object:
    d = {"train": str(shared_data / "lima" / "train.jsonl"), **data}
    return parse_config(
        {"name": "fidelity", "model": {"spec": model_spec}, "data": d, "training": {"max_length": 512, "overlong": "truncate"}}
    )


@pytest.mark.parametrize("variant", ["instruction", "response"])
def test_every_lima_example_encodes_as_the_paper(variant, bytelevel_tokenizer, tiny_llama_dir, shared_data):
    records = _lima(shared_data)
    assert len(records) == 1030 and sum(len(r["messages"]) > 2 for r in records) == 30
    cfg = _config(shared_data, str(tiny_llama_dir))
    ours = build_variant_data(cfg, Variant(variant), bytelevel_tokenizer)
    theirs = []
    for r in records:
        messages = paper.remove_instructions(r["messages"]) if variant == "response" else r["messages"]
        enc = paper.encode_with_messages_format(messages, bytelevel_tokenizer, max_seq_length=512)
        if paper.keep_example(enc):
            theirs.append(enc)
    # all of LIMA is read, multi-turn included; both drop the same examples whose prompt fills the 512 tokens
    assert ours.n_read == 1030 and len(ours.examples) == len(theirs) and len(theirs) > 1000 - 60 * (variant == "instruction")
    mismatches = [
        i for i, (a, b) in enumerate(zip(ours.examples, theirs, strict=True)) if a.input_ids != b["input_ids"] or a.labels != b["labels"]
    ]
    assert not mismatches, f"{len(mismatches)} examples differ, first at {mismatches[0]}"
    assert ours.n_truncated > 0  # the 512-token cap is exercised
    # multi-turn: loss on every assistant turn (and the newline after a non-final EOS, as the paper's mask leaves it)
    multi = [e for e in ours.examples[-30:] if not e.truncated]  # LIMA's multi-turn examples come last
    eos = bytelevel_tokenizer.eos_token_id
    assert multi and all(sum(1 for i, l in zip(e.input_ids, e.labels, strict=True) if l == i == eos) >= 2 for e in multi)


def test_whitespace_is_stripped_and_switchable(bytelevel_tokenizer):
    messages = [{"role": "user", "content": "  Hi there \n"}, {"role": "assistant", "content": "\n - a list\n\n"}]
    stripped = encode_conversation(bytelevel_tokenizer, "tulu", conversation_turns(messages))
    assert stripped.input_ids == paper.encode_with_messages_format(messages, bytelevel_tokenizer, 512)["input_ids"]
    kept = encode_conversation(bytelevel_tokenizer, "tulu", conversation_turns(messages, strip=False))
    labelled = [i for i, lab in zip(kept.input_ids, kept.labels, strict=True) if lab != -100]
    assert bytelevel_tokenizer.decode(labelled[:-1]) == "\n - a list\n\n"  # as written: the '\n', EOS ending the paper avoids
    assert (
        bytelevel_tokenizer.decode([i for i, lab in zip(stripped.input_ids, stripped.labels, strict=True) if lab != -100][:-1])
        == "- a list"
    )


def test_multi_turn_can_be_dropped(bytelevel_tokenizer, tiny_llama_dir, shared_data):
    cfg = _config(shared_data, str(tiny_llama_dir), multi_turn=False)
    assert build_variant_data(cfg, Variant("instruction"), bytelevel_tokenizer).n_read == 1000


def _tiny_batch(shared_data, tokenizer, n: int) -> list[dict[str, list[int]]]:
    out = []
    for r in _lima(shared_data):
        enc = paper.encode_with_messages_format(r["messages"], tokenizer, max_seq_length=64 + 32 * len(out))
        if sum(x != -100 for x in enc["labels"]) >= 8:
            out.append(enc)
        if len(out) == n:
            return out


@pytest.mark.parametrize("per_device,accumulation", [(1, 4), (2, 2), (4, 1)])
def test_one_step_loss_and_gradient_equal_the_papers(per_device, accumulation, bytelevel_tokenizer, tiny_llama_dir, shared_data):
    """Per-example mean, then mean over the step's 4 examples, for any micro-batch split (the paper: 1 x 4)."""
    model = load_model(tiny_llama_dir, dtype="float32", use_process_cache=False).model.train()
    torch.manual_seed(0)
    examples = _tiny_batch(shared_data, bytelevel_tokenizer, 4)  # up to 64..160 tokens: token and example means differ
    model.zero_grad()
    expected = paper.accumulated_loss(model, examples, accumulation_steps=4)
    expected.backward()
    expected_grad = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    loss_fn = example_mean_loss(per_device * accumulation)
    collate = MaskedLMCollator(bytelevel_tokenizer.pad_token_id)
    ds = EncodedDataset([type("E", (), {"input_ids": e["input_ids"], "labels": e["labels"]})() for e in examples])
    total = torch.zeros(())
    for start in range(0, 4, per_device):
        batch = collate([ds[i] for i in range(start, start + per_device)])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = loss_fn(out, batch["labels"])
        loss.backward()
        total = total + loss.detach()
    assert torch.allclose(total, expected.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected_grad[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("n_processes,n_examples,epochs", [(1, 1030, 5), (2, 1030, 5), (2, 1030, 15), (4, 301, 7)])
def test_lr_schedule_counts_steps_as_the_paper(n_processes, n_examples, epochs):
    accumulation = 64 // n_processes
    expected = paper.lr_multipliers(
        n_examples=n_examples,
        per_device_batch=1,
        accumulation_steps=accumulation,
        n_processes=n_processes,
        epochs=epochs,
        warmup_ratio=0.03,
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = open_instruct_schedule(
        opt,
        n_examples=n_examples,
        per_device_batch_size=1,
        accumulation_steps=accumulation,
        n_processes=n_processes,
        epochs=epochs,
        warmup_ratio=0.03,
        kind="linear",
    )
    got = []
    for _ in expected:
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(expected, abs=1e-12)
    if n_processes == 2:
        assert expected[-1] == 0.0  # two scheduler steps per optimizer step: the paper's LR reaches 0 before the end
