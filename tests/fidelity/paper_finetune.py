"""A port of the paper's training-side logic, written small, to test implicit-it against.

Source: john-hewitt/implicit-ins @ fe1c2d8, ``open_instruct/finetune.py``
(``encode_with_messages_format``; the training loop with ``reduce_loss='mean'`` under
``accelerator.accumulate``; ``get_scheduler`` with ``num_warmup_steps=int(steps * warmup_ratio)``),
``data/processed/lima/remove_instructions.py`` (response tuning blanks every user turn) and
``open_instruct/utils.py`` (the tags). The logic is re-expressed here for a Hugging Face
tokenizer; nothing implicit-it ships is imported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

USER_TAG, ASSISTANT_TAG = "<|user|>", "<|assistant|>"


def remove_instructions(messages: list[dict]) -> list[dict]:
    """``remove_instructions.py``: every user turn's content becomes ''."""
    return [{**m, "content": ""} if m["role"] == "user" else dict(m) for m in messages]


def _concat(messages: list[dict], eos: str) -> str:
    text = ""
    for m in messages:
        if m["role"] == "user":
            text += f"{USER_TAG}\n" + m["content"].strip() + "\n"
        elif m["role"] == "assistant":
            text += f"{ASSISTANT_TAG}\n" + m["content"].strip() + eos + "\n"
        else:
            raise ValueError(m["role"])
    return text


def encode_with_messages_format(messages: list[dict], tokenizer, max_seq_length: int) -> dict[str, list[int]]:
    """The whole conversation as one string, tokenized once; every non-assistant span masked by
    the token length of its text prefix (the paper's method)."""
    eos = tokenizer.eos_token

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"])

    text = _concat(messages, eos).strip()
    input_ids = tokenizer(text, max_length=max_seq_length, truncation=True)["input_ids"]
    labels = list(input_ids)
    for idx, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if idx == 0 else n_tokens(_concat(messages[:idx], eos))
        if idx < len(messages) - 1 and messages[idx + 1]["role"] == "assistant":
            end = n_tokens(_concat(messages[: idx + 1], eos) + f"{ASSISTANT_TAG}\n")
        else:
            end = n_tokens(_concat(messages[: idx + 1], eos))
        labels[start:end] = [-100] * (end - start)
        if end >= max_seq_length:
            break
    return {"input_ids": list(input_ids), "labels": labels}


def keep_example(encoded: dict[str, list[int]]) -> bool:
    """``lm_datasets.filter(lambda ex: (ex['labels'] != -100).any())``."""
    return any(label != -100 for label in encoded["labels"])


def accumulated_loss(model, examples: list[dict[str, list[int]]], accumulation_steps: int) -> torch.Tensor:
    """One optimizer step of the paper's loop at micro-batch 1: each example's loss is the model's
    own mean over its labelled tokens (``outputs.loss``), divided by the accumulation steps
    (``accelerator.backward`` under ``accumulate``), summed over the micro-batches."""
    total = torch.zeros(())
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor([ex["labels"]])
        logits = model(input_ids=ids).logits.float()
        loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
        total = total + loss / accumulation_steps
    return total


def lr_multipliers(
    *, n_examples: int, per_device_batch: int, accumulation_steps: int, n_processes: int, epochs: int, warmup_ratio: float
) -> list[float]:
    """The LR factor at each optimizer step: a linear schedule planned over the single-process
    dataloader (``epochs * ceil(len / accumulation)``), warmup ``int(planned * ratio)``, stepped
    ``n_processes`` times per optimizer step by accelerate's scheduler wrapper."""
    planned = epochs * math.ceil(math.ceil(n_examples / per_device_batch) / accumulation_steps)
    warmup = int(planned * warmup_ratio)
    per_process_batches = math.ceil(math.ceil(n_examples / n_processes) / per_device_batch)
    real_steps = epochs * math.ceil(per_process_batches / accumulation_steps)

    def lam(s: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if s < warmup:
            return s / max(1, warmup)
        return max(0.0, (planned - s) / max(1, planned - warmup))

    return [lam(step * n_processes) for step in range(real_steps)]
