"""Verifiable constraints, IFEval style: each check is a pure function of the response text.

No judge and no tokenizer: every definition is a regex or ``json.loads``, so a score can be
recomputed from a saved output file anywhere. Definitions (IFEval's where it has one):

* words: tokens matching ``\\w+`` (IFEval's ``nltk`` ``RegexpTokenizer(r"\\w+")``; "don't" is 2 words).
* sentences: text split after a run of ``.``, ``!`` or ``?`` followed by whitespace or the end;
  every piece holding a word character is one sentence (an unpunctuated tail counts; "e.g. x" splits).
* paragraphs: ``blank_line`` pieces between blank lines, or ``divider`` pieces between lines that are
  exactly ``***``; an empty paragraph between two dividers fails the check.
* bullets: lines matching ``^\\s*[*-]\\s`` (so ``***`` dividers, ``**bold**`` and ``---`` rules are not bullets).
* case: ``str.islower`` / ``str.isupper`` (non-letters ignored, at least one letter needed).
* keywords: case-insensitive, whole word (``cat`` is not found in ``category``).
* start / end phrase: after stripping whitespace and surrounding double quotes, case-insensitive (as
  IFEval's end checker), and the phrase must not run into a longer word ("Dear Sam" does not start "Dear Samantha").
* JSON: ``json.loads`` of the stripped response, an optional ```` ```json ```` / ```` ``` ```` fence removed;
  the value must be an object or an array (a bare string or number is not "formatted as JSON").
* title: ``<<[^\\n]+>>`` somewhere. No commas: no ``,`` character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from implicit_it.errors import DataFormatError

RELATIONS = ("at_least", "at_most", "exactly")
SEPARATORS = ("blank_line", "divider")

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_DIVIDER_LINE = re.compile(r"^[ \t]*\*\*\*[ \t]*$", re.MULTILINE)
_BULLET = re.compile(r"^\s*[*-]\s", re.MULTILINE)
_TITLE = re.compile(r"<<[^\n]+>>")
_FENCE = re.compile(r"^```[A-Za-z]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def compare(count: int, relation: str, n: int) -> bool:
    if relation == "at_least":
        return count >= n
    if relation == "at_most":
        return count <= n
    return count == n


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    return sum(1 for piece in _SENTENCE_END.split(text) if _WORD.search(piece))


def split_paragraphs(text: str, separator: str) -> list[str] | None:
    """The paragraphs, or None when dividers leave an empty paragraph in the middle."""
    if separator == "blank_line":
        return [p for p in _BLANK_LINE.split(text.strip()) if p.strip()]
    pieces = [p.strip() for p in _DIVIDER_LINE.split(text.strip())]
    if any(not p for p in pieces[1:-1]):
        return None
    return [p for p in pieces if p]


def count_bullets(text: str) -> int:
    return len(_BULLET.findall(text))


def contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _unquoted(text: str) -> str:
    return text.strip().strip('"').strip()


def parse_json_response(text: str) -> Any:
    """The JSON value of a response (fence allowed); raises ``ValueError`` when it is not JSON."""
    text = text.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def word_count(response: str, *, relation: str, n: int) -> bool:
    return compare(count_words(response), relation, n)


def sentence_count(response: str, *, relation: str, n: int) -> bool:
    return compare(count_sentences(response), relation, n)


def paragraph_count(response: str, *, n: int, separator: str) -> bool:
    paragraphs = split_paragraphs(response, separator)
    return paragraphs is not None and len(paragraphs) == n


def bullet_count(response: str, *, n: int) -> bool:
    return count_bullets(response) == n


def keywords_required(response: str, *, words: list[str]) -> bool:
    return all(contains_word(response, w) for w in words)


def keywords_forbidden(response: str, *, words: list[str]) -> bool:
    return not any(contains_word(response, w) for w in words)


def lowercase(response: str) -> bool:
    return response.islower()


def uppercase(response: str) -> bool:
    return response.isupper()


def start_phrase(response: str, *, phrase: str) -> bool:
    text, phrase = _unquoted(response).lower(), phrase.strip().lower()
    return text.startswith(phrase) and not (phrase[-1:].isalnum() and text[len(phrase) : len(phrase) + 1].isalnum())


def end_phrase(response: str, *, phrase: str) -> bool:
    text, phrase = _unquoted(response).lower(), phrase.strip().lower()
    before = text[len(text) - len(phrase) - 1 : len(text) - len(phrase)] if len(text) > len(phrase) else ""
    return text.endswith(phrase) and not (phrase[:1].isalnum() and before.isalnum())


def json_format(response: str, *, keys: list[str] | None = None) -> bool:
    try:
        value = parse_json_response(response)
    except ValueError:
        return False
    if keys is not None:
        return isinstance(value, dict) and all(k in value for k in keys)
    return isinstance(value, dict | list)


def title(response: str) -> bool:
    return _TITLE.search(response) is not None


def no_commas(response: str) -> bool:
    return "," not in response


CHECKS: dict[str, Callable[..., bool]] = {
    "word_count": word_count,
    "sentence_count": sentence_count,
    "paragraph_count": paragraph_count,
    "bullet_count": bullet_count,
    "keywords_required": keywords_required,
    "keywords_forbidden": keywords_forbidden,
    "lowercase": lowercase,
    "uppercase": uppercase,
    "start_phrase": start_phrase,
    "end_phrase": end_phrase,
    "json_format": json_format,
    "title": title,
    "no_commas": no_commas,
}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _word_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(w, str) and w.strip() for w in v)


def _phrase(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


# kind -> {argument: (required, is_valid, what a valid value is)}
_COUNT = {"relation": (True, lambda v: v in RELATIONS, f"one of {list(RELATIONS)}"), "n": (True, _positive_int, "an integer >= 1")}
_WORDS = {"words": (True, _word_list, "a non-empty list of non-empty strings")}
_PHRASE = {"phrase": (True, _phrase, "a non-empty string")}
ARGUMENTS: dict[str, dict[str, tuple[bool, Callable[[Any], bool], str]]] = {
    "word_count": _COUNT,
    "sentence_count": _COUNT,
    "paragraph_count": {"n": _COUNT["n"], "separator": (True, lambda v: v in SEPARATORS, f"one of {list(SEPARATORS)}")},
    "bullet_count": {"n": _COUNT["n"]},
    "keywords_required": _WORDS,
    "keywords_forbidden": _WORDS,
    "lowercase": {},
    "uppercase": {},
    "start_phrase": _PHRASE,
    "end_phrase": _PHRASE,
    "json_format": {"keys": (False, _word_list, "a non-empty list of non-empty strings")},
    "title": {},
    "no_commas": {},
}


def validate_check(check: Any, where: str, line: int | None = None, field: str = "check") -> None:
    """Raise one ``DataFormatError(where, line, ...)`` naming the first bad field of ``check``."""
    if not isinstance(check, dict):
        raise DataFormatError(where, line, f"{field}: expected an object, got {type(check).__name__}")
    kind = check.get("kind")
    if kind not in CHECKS:
        raise DataFormatError(where, line, f"{field}.kind: unknown check kind {kind!r}; known: {sorted(CHECKS)}")
    spec = ARGUMENTS[kind]
    for name in check:
        if name != "kind" and name not in spec:
            raise DataFormatError(where, line, f"{field}.{name}: unexpected argument for {kind!r}; allowed: {sorted(spec)}")
    for name, (required, is_valid, expected) in spec.items():
        if name not in check:
            if required:
                raise DataFormatError(where, line, f"{field}.{name}: missing argument for {kind!r}")
            continue
        if not is_valid(check[name]):
            raise DataFormatError(where, line, f"{field}.{name}: expected {expected}, got {check[name]!r}")


def run_check(response: str, check: dict[str, Any]) -> bool:
    """Strict: the check on the response exactly as generated."""
    return CHECKS[check["kind"]](response, **{k: v for k, v in check.items() if k != "kind"})


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose variants: as is, without the first line, the last line, both; each also without ``*``."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def run_check_loosely(response: str, check: dict[str, Any]) -> bool:
    """Loose: passes on the response or on any non-empty loose variant (so loose >= strict always;
    IFEval skips empty variants, which would otherwise pass "at most N words" by deleting everything). The check alone:
    ``score_responses`` also requires the variant it passes on to be an answer (``suite.loose_answers``)."""
    return run_check(response, check) or any(run_check(v, check) for v in loose_variants(response)[1:] if v.strip())
