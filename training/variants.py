"""The paper's training variants and the tokenized data each one trains on.

* ``instruction``: (instruction, response) pairs from ``data.train`` (LIMA) in the config's format.
* ``response``: the same responses with the instruction replaced by ``""`` (response tuning);
  in Tulu that is ``<|user|>\\n\\n<|assistant|>\\n{response}`` + EOS.
* ``single_task:<source>``: one narrow dataset (gsm, mbpp, poetry, recipes, chess), converted
  with the paper's transformation, first 1,000 examples.
* ``delusive``: instruction tuning on the same data with every response paired to *another* example's
  instruction (Kung & Peng 2023's "delusive" instructions): the user turns of the whole set are
  re-paired by a random cyclic permutation seeded by ``data.delusive_seed`` (a derangement: no turn
  keeps its own instruction; multi-turn examples have each user turn replaced the same way).
* ``content_free``: instruction tuning with every user turn replaced by one fixed instruction,
  ``data.content_free_instruction`` (their "simplified" instructions: the chat's shape, none of the task).

The two controls ask whether instruction tuning's gain needs the *right* instruction at all.

Every variant uses :func:`implicit_it.formats.encode_conversation`, so loss is on responses + EOS only.
The held-out split (``data.heldout_examples``, 0 in the paper) is always cut from ``data.train``
before anything else, so instruction and response tuning never see it and every variant is scored
on the same examples. Epochs are selected on ``data.validation`` (the paper's 56 LIMA validation
instructions), which no variant trains on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from implicit_it.data import ChatExample
from implicit_it.errors import UserError
from implicit_it.formats import EncodedExample, conversation_turns, encode_conversation, pad_batch
from implicit_it.sources import SOURCES, load_chat_source

from .config import TrainingExperiment

BASE_VARIANTS = ("instruction", "response", "single_task", "delusive", "content_free")


@dataclass(frozen=True)
class Variant:
    """What to train: ``kind`` is one of :data:`BASE_VARIANTS`; ``task`` names the single task."""

    kind: str
    task: str | None = None

    @property
    def name(self) -> str:
        """Directory-friendly name: ``instruction``, ``response``, ``single_task-gsm``."""
        return f"single_task-{self.task}" if self.task else self.kind

    @property
    def drops_instruction(self) -> bool:
        return self.kind == "response"


def parse_variant(text: str, config: TrainingExperiment | None = None) -> list[Variant]:
    """``instruction``, ``response``, ``delusive``, ``content_free``, ``single_task:gsm``; bare ``single_task`` means every
    source in ``training.single_task_sources``."""
    kind, _, task = text.replace("-", ":").partition(":")
    if kind not in BASE_VARIANTS:
        raise UserError(f"unknown variant {text!r}; choose instruction, response, delusive, content_free, or single_task[:SOURCE]")
    if kind != "single_task":
        if task:
            raise UserError(f"variant {kind!r} takes no task (got {text!r})")
        return [Variant(kind)]
    tasks = [task] if task else list(config.training.single_task_sources if config else [])
    if not tasks:
        raise UserError("variant single_task needs a source: single_task:gsm, or training.single_task_sources in the config")
    for t in tasks:
        if t not in SOURCES or t == "lima":
            raise UserError(f"unknown single task {t!r}; choose one of {sorted(set(SOURCES) - {'lima'})}")
    return [Variant("single_task", t) for t in tasks]


def config_variants(config: TrainingExperiment) -> list[Variant]:
    """Every variant a config asks for, in order."""
    return [v for kind in config.training.variants for v in parse_variant(kind, config)]


@dataclass
class VariantData:
    """The tokenized training set of one variant, the held-out split, and what went into them."""

    variant: Variant
    examples: list[EncodedExample]
    heldout: list[ChatExample]
    source: str  # path or hub:<name>
    n_read: int
    n_dropped_overlong: int
    n_truncated: int

    @property
    def data_files(self) -> list[str]:
        return [self.source] if not self.source.startswith("hub:") else []

    def describe(self) -> dict[str, Any]:
        n_tokens = sum(len(e.input_ids) for e in self.examples)
        n_labelled = sum(len(e.input_ids) - e.n_prompt_tokens for e in self.examples)
        return {
            "variant": self.variant.name,
            "source": self.source,
            "n_read": self.n_read,
            "n_train_examples": len(self.examples),
            "n_heldout_examples": len(self.heldout),
            "n_dropped_overlong": self.n_dropped_overlong,
            "n_truncated": self.n_truncated,
            "n_tokens": n_tokens,
            "n_labelled_tokens": n_labelled,
        }


def train_source(config: TrainingExperiment, variant: Variant) -> str:
    if variant.kind != "single_task":
        return config.data.train
    return config.data.single_task.get(variant.task, f"hub:{variant.task}")


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point (Sattolo's algorithm: one random cycle through all ``n``)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never the item itself
        order[i], order[j] = order[j], order[i]
    return order


def control_turns(kind: str, conversations: Sequence[list[tuple[str, str]]], *, seed: int, instruction: str) -> list[list[tuple[str, str]]]:
    """The (user, assistant) turns of the controls: ``delusive`` gives every user turn another turn's user text (one
    derangement over all user turns of the set), ``content_free`` gives every user turn ``instruction``; the responses,
    and every conversation's shape, stay as they were."""
    if kind == "content_free":
        return [[(instruction, a) for _, a in turns] for turns in conversations]
    if kind != "delusive":
        return [list(turns) for turns in conversations]
    users = [u for turns in conversations for u, _ in turns]
    order = derangement(len(users), seed)
    out, k = [], 0
    for turns in conversations:
        out.append([(users[order[k + i]], a) for i, (_, a) in enumerate(turns)])
        k += len(turns)
    return out


def split_heldout(examples: Sequence[ChatExample], n_heldout: int) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, heldout): the last ``n_heldout`` examples are held out (a fixed, seed-free split)."""
    if n_heldout >= len(examples):
        raise UserError(f"heldout_examples={n_heldout} leaves no training data ({len(examples)} examples)")
    cut = len(examples) - n_heldout
    return list(examples[:cut]), list(examples[cut:])


def build_variant_data(config: TrainingExperiment, variant: Variant, tokenizer: Any) -> VariantData:
    """Read, split, format and tokenize one variant's training data.

    As the paper's ``finetune.py`` (with ``data.strip_whitespace`` and ``data.multi_turn`` on, the
    default): every turn stripped, multi-turn conversations trained on every assistant turn, and
    response tuning blanking every user turn."""
    t, d = config.training, config.data
    single_turn_only = not d.multi_turn
    lima = load_chat_source(d.train, single_turn_only=single_turn_only)
    lima_train, heldout = split_heldout(lima, d.heldout_examples) if d.heldout_examples else (lima, [])
    source = train_source(config, variant)
    rows = lima_train if variant.kind != "single_task" else load_chat_source(source, single_turn_only=single_turn_only)
    conversations = [conversation_turns(ex.messages, strip=d.strip_whitespace, drop_instructions=variant.drops_instruction) for ex in rows]
    conversations = control_turns(variant.kind, conversations, seed=d.delusive_seed, instruction=d.content_free_instruction)
    examples: list[EncodedExample] = []
    dropped = truncated = 0
    for turns in conversations:
        try:
            enc = encode_conversation(tokenizer, config.format, turns, max_length=None if t.overlong == "drop" else t.max_length)
        except ValueError:  # the prompt alone does not fit: nothing of the response could be learnt
            enc = None
        if enc is None or len(enc.input_ids) > t.max_length:
            dropped += 1
            continue
        truncated += enc.truncated
        examples.append(enc)
        if d.max_train_examples and len(examples) >= d.max_train_examples:
            break
    if not examples:
        raise UserError(f"{source}: no {variant.name} examples fit max_length={t.max_length} (overlong: {t.overlong})")
    return VariantData(variant, examples, heldout, str(source), len(rows), dropped, truncated)


class EncodedDataset(torch.utils.data.Dataset):
    """A list of :class:`EncodedExample` as the dicts ``Trainer`` expects."""

    def __init__(self, examples: Sequence[EncodedExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels}


@dataclass(frozen=True)
class MaskedLMCollator:
    """Right-pad a batch; labels are padded with -100 so padding is never learnt."""

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch(
            [f["input_ids"] for f in features], self.pad_token_id, side="right", label_sequences=[f["labels"] for f in features]
        )
