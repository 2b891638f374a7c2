"""Cheap behaviour metrics on any outputs: did the model stop, repeat itself, or echo the template?

These need no judge and no reference, and they are the first things the paper's variants change:
a base model rarely emits EOS, loops, and continues the chat template; instruction following
starts when those stop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from implicit_it.errors import UserError

# Chat-template markers whose presence in a response means the model continued the template
# (wrote the next turn) instead of answering. Covers the paper's Tulu tags, ab_tags, Gemma,
# ChatML (SmolLM2, Qwen), Llama-2 and Alpaca-style headers.
TEMPLATE_MARKERS: tuple[str, ...] = (
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "[/INST]",
    "### Instruction:",
    "### Response:",
    "<user>",
    "<assistant>",
)
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_ngram_ratio(tokens: Sequence[str], n: int) -> float | None:
    """Unique n-grams / all n-grams of one response (None when it has fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def echoes_template(text: str, markers: Sequence[str] = TEMPLATE_MARKERS) -> bool:
    return any(m in text for m in markers)


def behaviour_metrics(
    outputs: Sequence[str], ended_with_eos: Sequence[bool | None] | None = None, *, ngram_sizes: Sequence[int] = (2, 3, 4)
) -> dict[str, Any]:
    """EOS-terminated fraction, repetition (1 − distinct-n, averaged over responses), template echo
    rate, empty rate and mean length (words and characters).

    ``eos_fraction`` is ``None`` when the stop flags are unknown (outputs from elsewhere)."""
    if not outputs:
        raise UserError("no outputs to measure")
    toks = [words(o) for o in outputs]
    n = len(outputs)
    flags = list(ended_with_eos) if ended_with_eos is not None else []
    known = [f for f in flags if f is not None]
    repetition = {}
    for k in ngram_sizes:
        ratios = [r for r in (distinct_ngram_ratio(t, k) for t in toks) if r is not None]
        repetition[f"repetition_{k}gram"] = (1.0 - sum(ratios) / len(ratios)) if ratios else None
    return {
        "n": n,
        "eos_fraction": (sum(known) / len(known)) if known and len(known) == n else None,
        **repetition,
        "template_echo_rate": sum(echoes_template(o) for o in outputs) / n,
        "empty_rate": sum(not o.strip() for o in outputs) / n,
        "mean_length_words": sum(len(o.split()) for o in outputs) / n,
        "mean_length_chars": sum(len(o) for o in outputs) / n,
    }


def write_behaviour(
    out_dir: str | Path, outputs: Sequence[str], ended_with_eos: Sequence[bool | None] | None, label: str
) -> dict[str, Any]:
    """``behaviour_metrics`` of one model's outputs, written atomically to ``out_dir/behaviour.json``."""
    from implicit_it.io import atomic_write_json

    metrics = {"model": label, **behaviour_metrics(outputs, ended_with_eos)}
    atomic_write_json(Path(out_dir) / "behaviour.json", metrics)
    return metrics
