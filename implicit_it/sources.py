"""The paper's training sources, converted from their hub datasets exactly as the paper did.

Each source is a pure ``transform(rows) -> list[ChatExample]`` (tested here on local raw copies)
plus the hub id and split it is read from. Hub loading is real code for users with network;
on this project's machines the same transforms run on files under ``../shared/data``.
The transformations follow the paper's ``data/processed/*/make_*.py`` scripts.
"""

from __future__ import annotations

import ast
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .data import ChatExample, Message
from .errors import UserError
from .io import read_input_bytes

PAPER_LIMIT = 1000  # the paper keeps the first 1,000 examples of each single-task source


def _chat(dataset: str, ex_id: str, user: str, assistant: str) -> ChatExample:
    return ChatExample(id=ex_id, dataset=dataset, messages=(Message("user", user), Message("assistant", assistant)))


def lima_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[ChatExample]:
    """GAIR/lima rows (``conversations``: alternating turns, user first) -> chat examples."""
    out = []
    for i, row in enumerate(rows):
        turns = row["conversations"]
        msgs = tuple(Message("user" if j % 2 == 0 else "assistant", t) for j, t in enumerate(turns))
        out.append(ChatExample(id=f"lima_{i}", dataset="lima", messages=msgs))
    return out


def gsm8k_from_rows(rows: Iterable[Mapping[str, Any]], limit: int = PAPER_LIMIT) -> list[ChatExample]:
    """openai/gsm8k (main, train): question -> answer, verbatim (keeps ``<<calc>>`` and ``#### N``)."""
    out = []
    for i, row in enumerate(rows):
        if i >= limit:
            break
        out.append(_chat("gsm8k", f"gsm8k_{i}", row["question"], row["answer"]))
    return out


def mbpp_from_rows(rows: Iterable[Mapping[str, Any]], limit: int = PAPER_LIMIT) -> list[ChatExample]:
    """MBPP rows (``text``, ``code``) -> text -> code. The paper used the HF 'full' train split."""
    out = []
    for i, row in enumerate(rows):
        if i >= limit:
            break
        out.append(_chat("mbpp", f"mbpp_{i}", row["text"], row["code"]))
    return out


def poetry_from_rows(rows: Iterable[Mapping[str, Any]], limit: int = PAPER_LIMIT) -> list[ChatExample]:
    """merve/poetry rows -> "Write a poem called <title>" -> poem. Untitled rows are skipped;
    ids keep the source row index (so they have gaps), as in the paper."""
    out: list[ChatExample] = []
    for i, row in enumerate(rows):
        if len(out) >= limit:
            break
        title = row.get("poem name")
        if title is None:
            continue
        out.append(_chat("merve_poetry", f"merve_poetry_{i}", "Write a poem called " + title, row["content"]))
    return out


def recipes_from_rows(rows: Iterable[Mapping[str, Any]], limit: int = PAPER_LIMIT) -> list[ChatExample]:
    """Hieu-Pham/kaggle_food_recipes -> "Recipe for <Title>" -> ingredient list + instructions.

    ``Cleaned_Ingredients`` is a Python-literal list; the paper used ``eval``, we use
    ``ast.literal_eval`` (same result, no code execution)."""
    out = []
    for i, row in enumerate(rows):
        if i >= limit:
            break
        ingredients = ast.literal_eval(row["Cleaned_Ingredients"])
        body = "".join(" - " + x + "\n" for x in ingredients) + "\n\n" + row["Instructions"]
        out.append(_chat("kfr", f"kfr_{i}", "Recipe for " + row["Title"], body))
    return out


def chess_from_lines(lines: Iterable[str], limit: int = PAPER_LIMIT) -> list[ChatExample]:
    """patrickfrank1/chess-pgn-games text lines -> Elo headers -> move text.

    Keeps the latest ``WhiteElo`` and ``BlackElo`` header lines; every line starting with
    ``"1. "`` is a game's move text. This is the task the paper found does *not* teach
    instruction following."""
    out = []
    white = black = None
    for lineno, line in enumerate(lines):
        if "WhiteElo" in line:
            white = line
        if "BlackElo" in line:
            black = line
        if line.startswith("1. "):
            if white is None or black is None:
                continue
            out.append(_chat("pgn-patrickfrank1", f"pgn-patrickfrank1-{lineno}", white + "\n" + black + "\n", line))
            if len(out) >= limit:
                break
    return out


@dataclass(frozen=True)
class HubSource:
    """Where a paper source lives on the hub and how to turn it into chat examples."""

    name: str
    hub_id: str
    config: str | None
    split: str
    transform: Callable[[Iterable[Mapping[str, Any]]], list[ChatExample]]
    description: str

    def load(self, *, limit: int | None = None) -> list[ChatExample]:
        """Download (or read from the HF cache) and convert. Needs the ``datasets`` package."""
        from datasets import load_dataset  # imported lazily: only hub users need it

        examples = self.transform(load_dataset(self.hub_id, self.config, split=self.split))
        return examples[:limit] if limit is not None else examples

    def convert_local(self, path: str | Path) -> list[ChatExample]:
        """The same conversion on a local copy of the hub rows (see :func:`read_rows`)."""
        return self.transform(read_rows(path))


def _chess_rows(rows: Iterable[Mapping[str, Any]]) -> list[ChatExample]:
    """The hub dataset is one text line a row."""
    return chess_from_lines(r["text"] for r in rows)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local copy of a hub dataset: CSV (empty cells -> None, as the hub gives them),
    ``.txt`` (one ``{"text": line}`` a line, like the chess dump), or JSONL."""
    from .data import iter_jsonl

    path = Path(path)
    if path.suffix == ".csv":
        text = read_input_bytes(path).decode("utf-8")
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text, newline=""))]
    if path.suffix == ".txt":
        return [{"text": line} for line in read_input_bytes(path).decode("utf-8").split("\n")]
    return [obj for _, obj in iter_jsonl(path)]


SOURCES: dict[str, HubSource] = {
    s.name: s
    for s in [
        HubSource("lima", "GAIR/lima", None, "train", lima_from_rows, "LIMA, 1,030 curated conversations (instruction/response tuning)"),
        HubSource("gsm", "openai/gsm8k", "main", "train", gsm8k_from_rows, "grade-school math word problems, first 1,000"),
        HubSource("mbpp", "google-research-datasets/mbpp", "full", "train", mbpp_from_rows, "Python problems -> code (374 train tasks)"),
        HubSource("poetry", "merve/poetry", None, "train", poetry_from_rows, "'Write a poem called X' -> poem (571 titled poems)"),
        HubSource(
            "recipes",
            "Hieu-Pham/kaggle_food_recipes",
            None,
            "train",
            recipes_from_rows,
            "'Recipe for X' -> ingredients + steps, first 1,000",
        ),
        HubSource(
            "chess",
            "patrickfrank1/chess-pgn-games",
            None,
            "train",
            _chess_rows,
            "Elo headers -> PGN moves, first 1,000 (fails to teach instruction following)",
        ),
    ]
}


def load_chat_source(spec: str, *, limit: int | None = None, single_turn_only: bool = False) -> list[ChatExample]:
    """A chat dataset from a path (chat JSONL) or ``hub:<source>`` (converted like the paper)."""
    from .data import read_chat_jsonl

    if spec.startswith("hub:"):
        name = spec.removeprefix("hub:")
        if name not in SOURCES:
            raise UserError(f"unknown hub source {name!r}; choose one of {sorted(SOURCES)}")
        examples = SOURCES[name].load()
        if single_turn_only:
            examples = [e for e in examples if e.is_single_turn]
        return examples[:limit] if limit is not None else examples
    return read_chat_jsonl(spec, limit=limit, single_turn_only=single_turn_only)
