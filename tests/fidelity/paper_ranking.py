"""A port of the paper's response ranking: ``open_instruct/ratio_eval.py`` and ``plot_ratios.py``.

john-hewitt/implicit-ins at fe1c2d8, as ``scripts/do_preference_scripts.sh`` runs it
(``--max_seq_length 1024 --per_device_train_batch_size 1``):

* ``shuffleify_dataset``: ``random.seed(0)``; the pool is every assistant message in file order;
  example i is kept as pair (i, i), then 5 copies whose assistant message is
  ``assts[random.randint(0, len(assts) - 1)]``, pair (i, index);
* each example is the Tulu text (``<|user|>\\n…\\n<|assistant|>\\n…`` + EOS, stripped), tokenized whole
  and truncated at ``max_seq_length``; loss on what follows the prompt; score ``exp(-loss)``;
* ``plot_ratios.get_ratios``: for instruction i, the element with pair (i, i) is the real one
  (the last such, so a self-draw takes its place), every other (i, j) is a negative; the
  accuracy is the fraction of real − other > 0.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Sequence

import torch


def shuffleify(examples: Sequence[dict[str, Any]], negatives: int = 5) -> list[dict[str, Any]]:
    random.seed(0)
    assts = [m for ex in examples for m in ex["messages"] if m["role"] == "assistant"]
    out = []
    for i, ex in enumerate(examples):
        real = copy.deepcopy(ex)
        real["pair"] = (i, i)
        out.append(real)
        for _ in range(negatives):
            new = copy.deepcopy(ex)
            index = random.randint(0, len(assts) - 1)
            new["pair"] = (i, index)
            new["messages"][1] = assts[index]
            out.append(new)
    return out


def encode(example: dict[str, Any], tokenizer: Any, max_seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_with_messages_format`` for one user + one assistant message."""
    user, asst = example["messages"][0], example["messages"][1]
    prompt = "<|user|>\n" + user["content"].strip() + "\n"
    text = (prompt + "<|assistant|>\n" + asst["content"].strip() + tokenizer.eos_token + "\n").strip()
    ids = tokenizer(text, return_tensors="pt", max_length=max_seq_length, truncation=True).input_ids
    labels = ids.clone()
    end = tokenizer(prompt + "<|assistant|>\n", return_tensors="pt", max_length=max_seq_length, truncation=True).input_ids.shape[1]
    labels[:, :end] = -100
    return ids, labels


@torch.no_grad()
def scores(
    model: Any, tokenizer: Any, dataset: Sequence[dict[str, Any]], max_seq_length: int = 1024
) -> list[tuple[tuple[int, int], float]]:
    out = []
    for ex in dataset:
        ids, labels = encode(ex, tokenizer, max_seq_length)
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        out.append((ex["pair"], torch.exp(-loss).item()))
    return out


def get_ratios(scored: Sequence[tuple[tuple[int, int], float]]) -> dict[int, tuple[float, list[tuple[int, float]]]]:
    """Per instruction: (real score, [(pool index, other score)]), as plot_ratios.get_ratios groups them."""
    data = {}
    for ins_index in range(max(p[0] for p, _ in scored) + 1):
        real, others = None, []
        for pair, prob in scored:
            if pair == (ins_index, ins_index):
                real = prob
            elif pair[0] == ins_index:
                others.append((pair[1], prob))
        data[ins_index] = (real, others)
    return data


def accuracy(data: dict[int, tuple[float, list[tuple[int, float]]]]) -> float:
    ratios = [real - p for real, others in data.values() for _, p in others]
    return sum(r > 0 for r in ratios) / len(ratios)
