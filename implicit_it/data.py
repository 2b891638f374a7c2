"""Reading and validating the data every room uses.

Three layouts are accepted:

* chat JSONL in the LIMA layout: ``{"id", "dataset"?, "messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}``
* instruction lists: ``{"instruction": ...}`` JSONL, or a JSON list of AlpacaEval records
  (``{"instruction", "output"?, "generator"?, "dataset"?}``)
* the paper's raw sources by hub id (see :mod:`implicit_it.sources`).

Validation is strict and one error names ``file:line`` and the problem, because a silently
skipped example changes what a finetune learns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DataFormatError
from .io import read_input_bytes


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ChatExample:
    """One conversation; single-turn examples are (user, assistant)."""

    id: str
    messages: tuple[Message, ...]
    dataset: str = ""

    @property
    def instruction(self) -> str:
        """The first user turn: what the paper formats as the instruction."""
        return self.messages[0].content

    @property
    def response(self) -> str:
        """The first assistant turn: what the paper trains on."""
        return self.messages[1].content

    @property
    def is_single_turn(self) -> bool:
        return len(self.messages) == 2

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "id": self.id,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
        }


@dataclass(frozen=True)
class Instruction:
    """An instruction to generate for, with optional reference output (AlpacaEval layout)."""

    instruction: str
    dataset: str = ""
    reference_output: str | None = None
    generator: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


_ROLES = ("user", "assistant")


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; errors name file:line."""
    raw = read_input_bytes(path)
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, lineno, f"not valid UTF-8 (byte {exc.start}: {line[exc.start : exc.start + 1]!r})") from None
        try:
            yield lineno, json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, lineno, f"malformed JSON: {exc.msg} at column {exc.colno}") from None


def parse_chat_record(obj: Any, path: Path | str, lineno: int | None, *, index: int = 0) -> ChatExample:
    """Validate one chat record; roles must alternate user/assistant and every turn be non-empty."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(path, lineno, "field 'messages' must be a non-empty list")
    parsed = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataFormatError(path, lineno, f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        expected = _ROLES[i % 2]
        if role is None:
            raise DataFormatError(path, lineno, f"messages[{i}] has no 'role' (expected {expected!r})")
        if role != expected:
            raise DataFormatError(
                path, lineno, f"messages[{i}].role is {role!r}, expected {expected!r} (roles must alternate user/assistant)"
            )
        if not isinstance(content, str):
            raise DataFormatError(path, lineno, f"messages[{i}].content must be a string")
        if not content.strip():
            raise DataFormatError(path, lineno, f"messages[{i}] ({role}) has an empty content")
        parsed.append(Message(role, content))
    if len(parsed) < 2:
        raise DataFormatError(path, lineno, "missing role 'assistant': a chat record needs a user turn and an assistant response")
    ex_id = obj.get("id", f"{Path(path).stem}_{index}")
    return ChatExample(id=str(ex_id), messages=tuple(parsed), dataset=str(obj.get("dataset", "")))


def read_chat_jsonl(path: str | Path, *, limit: int | None = None, single_turn_only: bool = False) -> list[ChatExample]:
    """Read a LIMA-layout chat JSONL. ``single_turn_only`` keeps only (user, assistant) pairs."""
    path = Path(path)
    out: list[ChatExample] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        ex = parse_chat_record(obj, path, lineno, index=len(out))
        if ex.id in seen:
            raise DataFormatError(path, lineno, f"duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = lineno
        if single_turn_only and not ex.is_single_turn:
            continue
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataFormatError(path, None, "no examples found")
    return out


def _parse_instruction(obj: Any, path: Path, lineno: int | None, where: str) -> Instruction:
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "instruction" not in obj:
        if "messages" in obj:  # a chat record: its first user turn is the instruction
            ex = parse_chat_record(obj, path, lineno)
            return Instruction(ex.instruction, dataset=ex.dataset, reference_output=ex.response)
        raise DataFormatError(path, lineno, f"{where}: missing field 'instruction'")
    text = obj["instruction"]
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(path, lineno, f"{where}: field 'instruction' must be a non-empty string")
    for name in ("generator", "dataset"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise DataFormatError(path, lineno, f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}")
    known = {"instruction", "dataset", "output", "generator"}
    return Instruction(
        instruction=text,
        dataset=str(obj.get("dataset", "")),
        reference_output=obj.get("output"),
        generator=obj.get("generator"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def read_instructions(path: str | Path, *, limit: int | None = None) -> list[Instruction]:
    """Read instructions from ``{"instruction"}`` JSONL, an AlpacaEval JSON list, or chat JSONL."""
    path = Path(path)
    raw = read_input_bytes(path)
    out: list[Instruction] = []
    if raw[:4096].lstrip().startswith(b"["):  # a JSON list (AlpacaEval layout)
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, None, f"not valid UTF-8 (byte offset {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, exc.lineno, f"malformed JSON: {exc.msg} at column {exc.colno}") from None
        for i, obj in enumerate(records):
            out.append(_parse_instruction(obj, path, None, f"record {i}"))
    else:
        for lineno, obj in iter_jsonl(path):
            out.append(_parse_instruction(obj, path, lineno, "record"))
    if not out:
        raise DataFormatError(path, None, "no instructions found")
    return out[:limit] if limit is not None else out


def write_chat_jsonl(path: str | Path, examples: Iterable[ChatExample]) -> Path:
    from .io import atomic_write_jsonl

    return atomic_write_jsonl(path, [ex.to_json() for ex in examples])


# Instructions with their responses: what response ranking, the probes and the layer diffs all read.
@dataclass(frozen=True)
class RankingSource:
    """Instructions with the pool index of their own response, and the response pool."""

    instructions: tuple[str, ...]
    own_response: tuple[int, ...]  # pool index of instruction i's real response
    pool: tuple[str, ...]
    path: str = ""


def read_ranking_source(path: str | Path, *, limit: int | None = None) -> RankingSource:
    """Read (instruction, response) pairs from a chat JSONL or an AlpacaEval-style file.

    Chat JSONL: every assistant turn joins the pool (the paper's pool). AlpacaEval-style
    (``{"instruction", "output"}`` records): each record's ``output`` is its response.
    Text is stripped, as the paper's formatting does."""
    path = Path(path)
    head = read_input_bytes(path)[:65536]
    if b'"messages"' in head:
        examples = read_chat_jsonl(path, limit=limit)
        instructions: list[str] = []
        own: list[int] = []
        pool: list[str] = []
        for ex in examples:
            instructions.append(ex.instruction.strip())
            own.append(len(pool))
            pool.extend(m.content.strip() for m in ex.messages if m.role == "assistant")
        return RankingSource(tuple(instructions), tuple(own), tuple(pool), str(path))
    items = read_instructions(path, limit=limit)
    responses = []
    for i, it in enumerate(items):
        if not isinstance(it.reference_output, str) or not it.reference_output.strip():
            raise DataFormatError(path, None, f"record {i}: a ranking pair needs a non-empty 'output' (the instruction's response)")
        responses.append(it.reference_output.strip())
    return RankingSource(tuple(it.instruction.strip() for it in items), tuple(range(len(items))), tuple(responses), str(path))
