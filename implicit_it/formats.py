"""Chat formats and the one function that turns (instruction, response) into training tensors.

Formats (the paper's, plus the tokenizer's own):

* ``tulu``: ``<|user|>\\n{instruction}\\n<|assistant|>\\n{response}`` + EOS (the paper's format)
* ``ab_tags``: ``<|A|>\\n{instruction}\\n<|B|>\\n{response}`` + EOS (the paper's tag ablation)
* ``empty_instruction``: Tulu with the instruction replaced by ``""`` (response tuning)
* ``native``: the tokenizer's chat template (instruct models)
* ``raw``: no template, the instruction is the whole prompt (lm-eval's untemplated tasks, plain continuation)

Loss is on response + EOS only. How the token boundary is drawn matters: the prompt part of a
training sequence is *exactly* the token ids a generator is later given (``encode_prompt``), so
training conditions on what inference conditions on. When the tokenizer would merge characters
across the prompt/response boundary (a BPE merge of ``"\\n"`` with the response's first
characters, say), tokenizing the full string would hide part of the response inside a prompt
token; we then tokenize the response as a continuation instead, so that the labelled tokens
always decode to the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UserError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ChatFormat:
    """A prompt template around one instruction; the response follows the prompt directly."""

    name: str
    user_tag: str = ""
    assistant_tag: str = ""
    drop_instruction: bool = False
    description: str = ""
    raw: bool = False  # no template at all: the prompt is the instruction itself

    def prompt_text(self, instruction: str, tokenizer: Any = None) -> str:
        """The text before the response (no BOS: the tokenizer adds it)."""
        if self.raw:
            return instruction
        if self.name == "native":
            return _native_prompt(instruction, tokenizer)
        text = "" if self.drop_instruction else instruction
        return f"{self.user_tag}\n{text}\n{self.assistant_tag}\n"

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Tokens that end a response: EOS, plus the chat template's end-of-turn for ``native``."""
        ids = [tokenizer.eos_token_id]
        if self.name == "native":
            for tok in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>"):
                tid = tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
                    ids.append(tid)
        return [i for i in ids if i is not None]

    def train_end_token_ids(self, tokenizer: Any) -> list[int]:
        """What follows the response in training: EOS (``native`` ends with its end-of-turn)."""
        return [self.stop_token_ids(tokenizer)[-1]] if self.name == "native" else [tokenizer.eos_token_id]


def _native_prompt(instruction: str, tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "this tokenizer")
        raise UserError(f"format 'native' needs a tokenizer with a chat template; {name} has none (use 'tulu')")
    text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    # The template writes BOS itself; encode_prompt adds special tokens, so strip it here.
    return text[len(bos) :] if bos and text.startswith(bos) else text


FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in [
        ChatFormat("tulu", "<|user|>", "<|assistant|>", description="the paper's format (Tulu tags)"),
        ChatFormat("ab_tags", "<|A|>", "<|B|>", description="the paper's ablation with uninformative tags"),
        ChatFormat(
            "empty_instruction",
            "<|user|>",
            "<|assistant|>",
            drop_instruction=True,
            description="response tuning: Tulu with the instruction replaced by an empty string",
        ),
        ChatFormat("native", description="the tokenizer's own chat template (instruct models)"),
        ChatFormat("raw", raw=True, description="no template: the instruction is the whole prompt (untemplated lm-eval tasks)"),
    ]
}


def get_format(name: str | ChatFormat) -> ChatFormat:
    if isinstance(name, ChatFormat):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise UserError(f"unknown chat format {name!r}; choose one of {sorted(FORMATS)}") from None


def encode_prompt(tokenizer: Any, fmt: str | ChatFormat, instruction: str) -> list[int]:
    """Token ids a generator is given for ``instruction`` (BOS included when the tokenizer adds one)."""
    fmt = get_format(fmt)
    return list(tokenizer(fmt.prompt_text(instruction, tokenizer), add_special_tokens=True)["input_ids"])


_SENTINEL = "INSTRUCTIONSENTINEL7F3A"


def instruction_offset(tokenizer: Any, fmt: str | ChatFormat, instruction: str, prompt_ids: Sequence[int] | None = None) -> int:
    """Number of prompt tokens before the instruction's first token (BOS and user tag).

    The paper's diversity rule penalises tokens from the instruction onwards; this finds that
    point in the token ids for any format. If the tokenizer merges the tag's last characters
    with the instruction, the merged token counts as the instruction's first."""
    fmt = get_format(fmt)
    text = fmt.prompt_text(_SENTINEL, tokenizer)
    prefix = text[: text.index(_SENTINEL)] if _SENTINEL in text else text
    ids = list(prompt_ids) if prompt_ids is not None else encode_prompt(tokenizer, fmt, instruction)
    pre = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    while pre and ids[: len(pre)] != pre:
        pre = pre[:-1]
    return len(pre)


def instruction_span(tokenizer: Any, fmt: str | ChatFormat, instruction: str, prompt_ids: Sequence[int] | None = None) -> tuple[int, int]:
    """[start, end) of the instruction's tokens in the prompt (activation patching's position classes).

    ``end`` is the longest prefix of the prompt that tokenizes like the prompt text up to the
    instruction's last character; a token merging the instruction's end with the tag after it
    counts as the tag's."""
    fmt = get_format(fmt)
    ids = list(prompt_ids) if prompt_ids is not None else encode_prompt(tokenizer, fmt, instruction)
    start = instruction_offset(tokenizer, fmt, instruction, ids)
    text = fmt.prompt_text(instruction, tokenizer)
    if fmt.drop_instruction or not instruction or instruction not in text:
        return start, start
    upto = list(tokenizer(text[: text.index(instruction) + len(instruction)], add_special_tokens=True)["input_ids"])
    while upto and ids[: len(upto)] != upto:
        upto = upto[:-1]
    return start, max(start, len(upto))


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    n_prompt_tokens: int
    boundary_merged: bool  # True when the tokenizer merged across the prompt/response boundary
    truncated: bool


def continuation_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` as it is tokenized mid-sequence (without a dummy-prefix space).

    SentencePiece tokenizers with a dummy prefix prepend ``▁`` to a standalone string, and
    their decoder hides it again, so the standalone ids cannot be trusted. Tokenizing behind
    an anchor and dropping the anchor's ids gives the mid-sequence form; an anchor is only
    used if the tokenizer keeps it separate from ``text``."""
    for anchor in ("\n", ".", "a", " "):
        anchor_ids = tokenizer(anchor, add_special_tokens=False)["input_ids"]
        both = tokenizer(anchor + text, add_special_tokens=False)["input_ids"]
        if both[: len(anchor_ids)] == anchor_ids:
            return list(both[len(anchor_ids) :])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(
    tokenizer: Any,
    fmt: str | ChatFormat,
    instruction: str,
    response: str,
    *,
    max_length: int | None = None,
) -> EncodedExample:
    """``input_ids`` and ``labels`` for one example, with loss on response + EOS only.

    Invariants (property-tested): ``input_ids[:n_prompt_tokens] == encode_prompt(...)``;
    labels are ``-100`` on the prompt and equal ``input_ids`` after it; the labelled ids
    decode to ``response`` followed by the end token. Truncation (``max_length``) cuts the
    response from the right; an example whose prompt alone exceeds ``max_length`` raises.
    """
    fmt = get_format(fmt)
    prompt = fmt.prompt_text(instruction, tokenizer)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    full_ids = list(tokenizer(prompt + response, add_special_tokens=True)["input_ids"])
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids, merged = full_ids[len(prompt_ids) :], False
    else:
        response_ids, merged = continuation_ids(tokenizer, response), True
    end_ids = fmt.train_end_token_ids(tokenizer)
    input_ids = prompt_ids + response_ids + end_ids
    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        if len(prompt_ids) >= max_length:
            raise UserError(f"prompt is {len(prompt_ids)} tokens, not shorter than max_length={max_length}")
        input_ids, truncated = input_ids[:max_length], True
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids) :]
    return EncodedExample(input_ids, labels, len(prompt_ids), merged, truncated)


def _split_continuation(tokenizer: Any, context: str, addition: str) -> tuple[list[int], list[int], bool]:
    """Mid-sequence ids of ``context`` and of ``addition`` right after it (see :func:`continuation_ids`).

    When the tokenizer merges characters across the seam, ``addition`` is tokenized on its own
    (third value True), so its ids still decode to exactly ``addition``."""
    ctx = continuation_ids(tokenizer, context)
    both = continuation_ids(tokenizer, context + addition)
    if both[: len(ctx)] == ctx:
        return ctx, both[len(ctx) :], False
    return ctx, continuation_ids(tokenizer, addition), True


def conversation_turns(messages: Sequence[Any], *, strip: bool = True, drop_instructions: bool = False) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a conversation, as the paper's ``finetune.py`` reads them.

    ``strip`` removes surrounding whitespace from every turn (the paper's encoder does; 289 of
    LIMA's 1,030 responses carry some, and unstripped they teach ``"\n", EOS`` endings).
    ``drop_instructions`` blanks every user turn (response tuning; the paper's
    ``remove_instructions.py``). A trailing user turn without an answer carries no loss and is
    dropped."""
    pairs = [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in messages]  # dicts or data.Message
    roles, texts = [r for r, _ in pairs], [t for _, t in pairs]
    turns = []
    for i in range(0, len(roles) - 1, 2):
        if roles[i] != "user" or roles[i + 1] != "assistant":
            raise UserError(f"turns {i}/{i + 1} are {roles[i]}/{roles[i + 1]}, expected user/assistant")
        user, assistant = texts[i], texts[i + 1]
        if strip:
            user, assistant = user.strip(), assistant.strip()
        turns.append(("" if drop_instructions else user, assistant))
    if not turns:
        raise UserError("a conversation needs at least one user turn followed by an assistant turn")
    return turns


def encode_conversation(
    tokenizer: Any,
    fmt: str | ChatFormat,
    turns: Sequence[tuple[str, str]],
    *,
    max_length: int | None = None,
) -> EncodedExample:
    """``input_ids`` and ``labels`` for a whole conversation, loss on every assistant turn + EOS.

    The layout is the paper's (``open_instruct/finetune.py``, ``encode_with_messages_format``)::

        <|user|>\n{u1}\n<|assistant|>\n{a1}EOS\n<|user|>\n{u2}\n<|assistant|>\n{a2}EOS

    The newline after a non-final EOS is labelled, as the paper's mask leaves it. The first turn
    is exactly :func:`encode_example` (so its prompt ids are what a generator is given); later
    turns are tokenized as continuations, each labelled span decoding to its text. Truncation
    cuts from the right, like the paper's ``tokenizer(..., truncation=True)``."""
    fmt = get_format(fmt)
    first = encode_example(tokenizer, fmt, *turns[0])
    input_ids, labels, merged = list(first.input_ids), list(first.labels), first.boundary_merged
    if len(turns) > 1 and fmt.name == "native":
        raise UserError("multi-turn examples need a tag format (tulu, ab_tags, empty_instruction), not 'native'")
    end_ids = fmt.train_end_token_ids(tokenizer)
    for user, assistant in turns[1:]:
        prompt = fmt.prompt_text(user, tokenizer)
        sep, prompt_ids, m1 = _split_continuation(tokenizer, "\n", prompt)
        _, response_ids, m2 = _split_continuation(tokenizer, "\n" + prompt, assistant)
        merged = merged or m1 or m2
        input_ids += sep + prompt_ids + response_ids + end_ids
        labels += sep + [IGNORE_INDEX] * len(prompt_ids) + response_ids + end_ids
    truncated = first.truncated
    if max_length is not None and len(input_ids) > max_length:
        if first.n_prompt_tokens >= max_length:
            raise UserError(f"prompt is {first.n_prompt_tokens} tokens, not shorter than max_length={max_length}")
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    return EncodedExample(input_ids, labels, first.n_prompt_tokens, merged, truncated)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, side: str = "left", label_sequences: Sequence[Sequence[int]] | None = None
) -> dict[str, Any]:
    """Pad to a rectangle: ``input_ids``, ``attention_mask`` (and ``labels`` padded with -100)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long) if label_sequences else None
    for i, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq, dtype=torch.long)
        mask[i, sl] = 1
        if labels is not None:
            assert label_sequences is not None
            labels[i, sl] = torch.tensor(label_sequences[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = labels
    return out
