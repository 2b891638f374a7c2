"""Assertions shared by the unit and integration tiers."""

from __future__ import annotations

from pathlib import Path

from implicit_it.formats import IGNORE_INDEX, encode_example, encode_prompt, get_format


def check_mask_invariants(tok, fmt_name: str, instruction: str, response: str) -> bool:
    """The properties every encoded example must have; returns whether the boundary merged."""
    fmt = get_format(fmt_name)
    ex = encode_example(tok, fmt, instruction, response)
    prompt_ids = encode_prompt(tok, fmt, instruction)
    n = ex.n_prompt_tokens
    # 1. the prompt part is exactly what the generator is given
    assert ex.input_ids[:n] == prompt_ids
    # 2. loss only after the prompt, and labels equal the inputs there
    assert ex.labels[:n] == [IGNORE_INDEX] * n
    assert ex.labels[n:] == ex.input_ids[n:]
    # 3. the labelled tokens are the response followed by the end token
    end_ids = fmt.train_end_token_ids(tok)
    assert ex.input_ids[-len(end_ids) :] == end_ids
    resp_ids = ex.input_ids[n : -len(end_ids)]
    assert tok.decode(prompt_ids + resp_ids) == tok.decode(prompt_ids) + response
    assert not ex.truncated
    return ex.boundary_merged


def assert_resolved_ids_spell_their_strings(tok, adapter) -> None:
    """Each rule string resolved to an id must be that text mid-sequence (after a newline)."""
    anchor = tok("\n", add_special_tokens=False)["input_ids"]
    resolved = [r for r in adapter.resolved if r.token_id is not None]
    assert resolved, "no rule string resolved at all"
    for r in resolved:
        assert tok.decode(anchor + [r.token_id]) == "\n" + r.text, (r.text, r.token)


def study_config_dict(model_dir: Path, shared_data: Path) -> dict:
    """A tiny ``iit run`` study: every stage, 2 optimizer steps per variant, a handful of prompts."""
    return {
        "name": "tiny-study",
        "seed": 0,
        "model": {"spec": str(model_dir)},
        "data": {
            "train": str(shared_data / "lima" / "train.jsonl"),
            "max_train_examples": 8,
            "heldout_examples": 4,
            "single_task": {"gsm": str(shared_data / "gsm8k" / "train_1k.jsonl")},
        },
        "training": {
            "variants": ["instruction", "response", "single_task"],
            "single_task_sources": ["gsm"],
            "learning_rate": 1e-3,
            "max_steps": 2,
            "effective_batch_size": 4,
            "per_device_batch_size": 2,
            "max_length": 96,
            "warmup_ratio": 0.0,
            "save_steps": 1,
        },
        "run": {
            "generate": {"ifsuite_prompts": 5, "max_new_tokens": 6, "batch_size": 4, "rule_sets": ["all", "no_eos"], "samples": 2},
            "rank": {
                "data": str(shared_data / "lima" / "val_reference_gpt35.json"),
                "systems": ["base", "response"],
                "instructions": 6,
                "negatives": 2,
                "max_length": 64,
                "layers": "all",
            },
            "probe": {
                "data": str(shared_data / "lima" / "val_reference_gpt35.json"),
                "systems": ["base", "instruction"],
                "instructions": 12,
                "layers": "all",
                "folds": 2,
                "max_length": 64,
            },
            "diff": {
                "data": str(shared_data / "lima" / "val_reference_gpt35.json"),
                "limit": 4,
                "layers": "all",
                "vocab": "frequent:64",
                "max_length": 96,
                "max_new_tokens": 6,
            },
            "eval": {"ifeval_data": str(shared_data / "ifeval" / "input_data.jsonl"), "ifeval_prompts": 4},
        },
    }
