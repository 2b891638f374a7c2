"""Judge-free validation: how likely a model finds held-out responses given their instructions.

Held-out response NLL is scored in the experiment's format *with* the instruction, whatever the
variant was trained on: it asks how well the model answers this instruction with the reference
response, which is the question epoch selection needs answered, and it costs one forward pass.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from implicit_it.data import ChatExample
from implicit_it.errors import UserError
from implicit_it.formats import IGNORE_INDEX, encode_example, pad_batch

# metric name -> "min" or "max": which direction is better (used by epoch selection)
METRIC_DIRECTIONS: dict[str, str] = {
    "heldout_nll": "min",
    "val_nll": "min",
    "val_win_rate": "max",
    "ifeval_loose": "max",
    "ifsuite_loose": "max",
}


def _pairs(examples: Sequence[Any], strip: bool) -> list[tuple[str, str]]:
    """(instruction, response) of chat examples (first turn) or AlpacaEval records (reference output)."""
    out = []
    for e in examples:
        if isinstance(e, ChatExample):
            instruction, response = e.instruction, e.response
        else:
            instruction, response = e.instruction, e.reference_output
            if response is None:
                raise UserError(f"validation instruction {instruction[:60]!r} has no reference output to score")
        out.append((instruction.strip(), response.strip()) if strip else (instruction, response))
    return out


@torch.no_grad()
def response_nll(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    fmt: str,
    *,
    max_length: int,
    batch_size: int = 8,
    strip: bool = True,
    prefix: str = "heldout",
) -> dict[str, float]:
    """Mean negative log-likelihood (nats per token) of response + EOS given the prompt.

    ``examples`` are chat examples (their first turn) or instructions with reference outputs.
    Token-weighted over all examples (long responses count per token, as in training).
    Responses longer than ``max_length`` are truncated like training data; an example whose
    prompt alone does not fit is skipped (and counted), the same ones for every model. Keys are
    ``{prefix}_nll``, ``{prefix}_perplexity``, ``{prefix}_tokens``, ``{prefix}_examples``, ``{prefix}_skipped``."""
    if not examples:
        raise UserError(f"no {prefix} examples to score")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = []
    for instruction, response in _pairs(examples, strip):
        try:
            encoded.append(encode_example(tokenizer, fmt, instruction, response, max_length=max_length))
        except ValueError:  # prompt longer than max_length
            continue
    if not encoded:
        raise UserError(f"no {prefix} example has a prompt shorter than max_length={max_length}")
    total, n_tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = pad_batch([e.input_ids for e in chunk], tokenizer.pad_token_id, side="right", label_sequences=[e.labels for e in chunk])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        labels = batch["labels"].to(device)
        for row in range(logits.shape[0]):  # one row at a time: (T, V) temporaries, not (B, T, V)
            target = labels[row, 1:]
            keep = target != IGNORE_INDEX
            total += F.cross_entropy(logits[row, :-1][keep].float(), target[keep], reduction="sum").item()
            n_tokens += int(keep.sum())
    model.train(was_training)
    nll = total / n_tokens
    return {
        f"{prefix}_nll": nll,
        f"{prefix}_perplexity": math.exp(nll),
        f"{prefix}_tokens": n_tokens,
        f"{prefix}_examples": len(encoded),
        f"{prefix}_skipped": len(examples) - len(encoded),
    }


def heldout_response_nll(
    model: Any, tokenizer: Any, examples: Sequence[ChatExample], fmt: str, *, max_length: int, batch_size: int = 8, strip: bool = True
) -> dict[str, float]:
    """NLL of held-out training examples (``data.heldout_examples``); see :func:`response_nll`."""
    if not examples:
        raise UserError("no held-out examples to score (set data.heldout_examples)")
    return response_nll(model, tokenizer, examples, fmt, max_length=max_length, batch_size=batch_size, strip=strip, prefix="heldout")
