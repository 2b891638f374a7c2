"""The prompt suite and its scoring: prompt-level and instruction-level accuracy, strict and loose.

A prompt counts as followed only when every one of its checks passes (IFEval's prompt-level
accuracy); instruction-level accuracy counts checks one by one.

Before any check, the response must be an *answer* (:func:`answer_problem`): not empty, not a
restatement of the instruction, and not a continuation of the chat template. IFEval needs no such
gate because the models it grades answer; a base model instead repeats the prompt, and the
repeated instruction contains its own keywords, its example ``<<title>>`` and no commas, which
the checks would otherwise reward (measured: base Gemma-3-270M scored like SmolLM2-Instruct
without the gate, by echoing). Loose scoring gates each of IFEval's variants the same way
(:func:`loose_answers`): a check passes loosely only on a variant that is itself an answer, so the
echoed instruction can never be the text a check passes on (measured before: a response whose first
line repeated the instruction scored loose 1.0 on ``keywords_required`` and ``title`` with a body
that ignored the constraint). Responses come either aligned
with the prompts or keyed by instruction text, as in an AlpacaEval-format outputs file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.errors import DataFormatError, UserError
from implicit_it.evaluation.behaviour import echoes_template
from implicit_it.io import read_input_bytes

from .checks import loose_variants, run_check, validate_check

PROMPTS_PATH = Path(__file__).with_name("prompts.jsonl")
FIELDS = ("id", "category", "instruction", "checks")


@dataclass(frozen=True)
class IfPrompt:
    id: str
    category: str
    instruction: str
    checks: tuple[dict[str, Any], ...]


def parse_prompt(line: str, path: str, lineno: int) -> IfPrompt:
    """One JSONL line as a prompt; raises one ``DataFormatError`` naming the bad field."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, lineno, f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataFormatError(path, lineno, f"expected a JSON object, got {type(record).__name__}")
    for name in record:
        if name not in FIELDS:
            raise DataFormatError(path, lineno, f"{name}: unexpected field; allowed: {list(FIELDS)}")
    for name in ("id", "category", "instruction"):
        if name not in record:
            raise DataFormatError(path, lineno, f"{name}: missing field")
        if not isinstance(record[name], str) or not record[name].strip():
            raise DataFormatError(path, lineno, f"{name}: expected a non-empty string, got {record[name]!r}")
    checks = record.get("checks")
    if not isinstance(checks, list) or not checks:
        raise DataFormatError(path, lineno, f"checks: expected a non-empty list of checks, got {checks!r}")
    for i, check in enumerate(checks):
        validate_check(check, path, lineno, field=f"checks[{i}]")
    return IfPrompt(record["id"], record["category"], record["instruction"], tuple(checks))


def interleave_categories(prompts: Sequence[IfPrompt]) -> list[IfPrompt]:
    """Round-robin over categories (in order of first appearance), file order within each."""
    by_category: dict[str, list[IfPrompt]] = {}
    for p in prompts:
        by_category.setdefault(p.category, []).append(p)
    return [p for row in zip_longest(*by_category.values()) for p in row if p is not None]


def load_suite(path: str | Path | None = None, limit: int | None = None) -> list[IfPrompt]:
    """The prompts of ``path`` (default: the packaged suite) in file order; with ``limit``, the first
    ``limit`` of the category-interleaved order, so that a small limit still covers every category."""
    path = Path(path) if path is not None else PROMPTS_PATH
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    prompts: list[IfPrompt] = []
    seen_ids: dict[str, int] = {}
    seen_instructions: dict[str, int] = {}
    for lineno, line in enumerate(read_input_bytes(path).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        prompt = parse_prompt(line, str(path), lineno)
        if prompt.id in seen_ids:
            raise DataFormatError(path, lineno, f"id: duplicate id {prompt.id!r} (first on line {seen_ids[prompt.id]})")
        if prompt.instruction in seen_instructions:
            raise DataFormatError(
                path, lineno, f"instruction: duplicate instruction (first on line {seen_instructions[prompt.instruction]})"
            )
        seen_ids[prompt.id], seen_instructions[prompt.instruction] = lineno, lineno
        prompts.append(prompt)
    if not prompts:
        raise DataFormatError(path, None, "no prompts")
    return prompts if limit is None else interleave_categories(prompts)[:limit]


def align_responses(prompts: Sequence[IfPrompt], responses: Mapping[str, str] | Sequence[str]) -> list[str]:
    if isinstance(responses, Mapping):
        missing = [p.instruction for p in prompts if p.instruction not in responses]
        if missing:
            shown = "; ".join(repr(m[:80]) for m in missing[:3])
            raise UserError(f"{len(missing)} of {len(prompts)} prompts have no response, e.g. {shown}")
        aligned = [responses[p.instruction] for p in prompts]
    else:
        if isinstance(responses, str) or len(responses) != len(prompts):
            raise UserError(f"got {len(responses)} responses for {len(prompts)} prompts; a sequence must align with the prompts")
        aligned = list(responses)
    for p, r in zip(prompts, aligned, strict=True):
        if not isinstance(r, str):
            raise UserError(f"response to prompt {p.id!r} is {type(r).__name__}, not a string")
    return aligned


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def answer_problem(response: str, instruction: str) -> str | None:
    """Why ``response`` is not an answer to ``instruction`` (``None`` when it is one)."""
    if not response.strip():
        return "empty"
    if echoes_template(response):
        return "template_echo"
    if _normalise(instruction) in _normalise(response):
        return "instruction_echo"
    return None


def loose_answers(response: str, instruction: str) -> list[str]:
    """The non-empty loose variants of ``response`` that are answers themselves. Besides the strict
    gate, a trimmed variant that is only a piece of the instruction (what is left of a multi-line
    echo once lines are dropped) is not an answer. The response itself keeps the strict gate only,
    so loose >= strict."""
    answers = []
    for i, variant in enumerate(loose_variants(response)):
        if not variant.strip() or answer_problem(variant, instruction) is not None:
            continue
        if i > 0 and _normalise(variant) in _normalise(instruction):
            continue
        answers.append(variant)
    return answers


def score_responses(prompts: Sequence[IfPrompt], responses: Mapping[str, str] | Sequence[str], model: str | None = None) -> IfSuiteResult:
    """Run every check strictly and loosely; a Mapping is keyed by instruction text."""
    if not prompts:
        raise UserError("no prompts to score")
    per_prompt = []
    for prompt, response in zip(prompts, align_responses(prompts, responses), strict=True):
        problem = answer_problem(response, prompt.instruction)
        # loose: the check passes on some IFEval variant (e.g. without a first line restating the task)
        # that is itself an answer; a variant holding the echoed instruction never counts
        answers = loose_answers(response, prompt.instruction)
        checks = [
            {"kind": c["kind"], "strict": problem is None and run_check(response, c), "loose": any(run_check(v, c) for v in answers)}
            for c in prompt.checks
        ]
        per_prompt.append(
            {
                "id": prompt.id,
                "category": prompt.category,
                "strict": all(c["strict"] for c in checks),
                "loose": all(c["loose"] for c in checks),
                "not_an_answer": problem,
                "checks": checks,
            }
        )
    per_category: dict[str, dict[str, Any]] = {}
    for category in dict.fromkeys(p["category"] for p in per_prompt):
        rows = [p for p in per_prompt if p["category"] == category]
        per_category[category] = {
            "strict_accuracy": _mean([p["strict"] for p in rows]),
            "loose_accuracy": _mean([p["loose"] for p in rows]),
            "n": len(rows),
        }
    all_checks = [c for p in per_prompt for c in p["checks"]]
    entry = {
        "strict_accuracy": _mean([p["strict"] for p in per_prompt]),
        "loose_accuracy": _mean([p["loose"] for p in per_prompt]),
        "per_category": per_category,
        "n": len(per_prompt),
        "not_an_answer": {
            reason: sum(p["not_an_answer"] == reason for p in per_prompt) for reason in ("empty", "template_echo", "instruction_echo")
        },
        "instruction_level": {
            "strict_accuracy": _mean([c["strict"] for c in all_checks]),
            "loose_accuracy": _mean([c["loose"] for c in all_checks]),
            "n_checks": len(all_checks),
        },
        "model": model,
        "per_prompt": per_prompt,
    }
    return IfSuiteResult([entry])


@register_result
class IfSuiteResult(AnalysisResult):
    """Judge-free instruction following of one model (or several, after ``merge``)."""

    name = "ifsuite"

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for e in self.entries:
            for category, c in e["per_category"].items():
                rows.append(
                    {
                        "model": e["model"],
                        "category": category,
                        "strict_accuracy": c["strict_accuracy"],
                        "loose_accuracy": c["loose_accuracy"],
                        "n": c["n"],
                    }
                )
            rows.append(
                {
                    "model": e["model"],
                    "category": "overall",
                    "strict_accuracy": e["strict_accuracy"],
                    "loose_accuracy": e["loose_accuracy"],
                    "n": e["n"],
                }
            )
        return pd.DataFrame(rows, columns=["model", "category", "strict_accuracy", "loose_accuracy", "n"])

    def plot(self) -> Any:
        categories = ["overall"] + list(dict.fromkeys(c for e in self.entries for c in e["per_category"]))
        n_bars = 2 * len(self.entries)
        height = 0.8 / n_bars
        fig, ax = new_figure(figsize=(7, 1 + 0.22 * n_bars * len(categories)))
        colors = [f"C{i % 10}" for i in range(len(self.entries))]
        for m, (e, color) in enumerate(zip(self.entries, colors, strict=True)):
            label = e["model"] or f"model {m + 1}"
            for s, mode in enumerate(("strict", "loose")):
                values = [self._accuracy(e, c, mode) for c in categories]
                y = [i - 0.4 + height * (2 * m + s + 0.5) for i in range(len(categories))]
                ax.barh(y, values, height=height, color=color, alpha=1.0 if mode == "strict" else 0.45, label=f"{label}: {mode}")
        ax.set_yticks(range(len(categories)), categories, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("prompt-level accuracy (all checks of a prompt pass)")
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
        return fig

    @staticmethod
    def _accuracy(entry: dict[str, Any], category: str, mode: str) -> float:
        if category == "overall":
            return entry[f"{mode}_accuracy"]
        return entry["per_category"].get(category, {}).get(f"{mode}_accuracy", float("nan"))  # not scored: no bar
