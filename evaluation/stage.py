"""The scoring stages of IFEval and the IF suite: what ``iit eval ifeval/ifsuite`` and the pipeline's eval steps both call.

Each scores responses, saves the result (``ifeval.json`` / ``ifsuite.json`` + .parquet, .png) and, given the
outputs' texts and EOS flags, ``behaviour.json`` into ``out_dir``; it returns the result and the summary a manifest
or a step records. Manifests are the caller's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .behaviour import write_behaviour
from .ifeval import METRICS, IfEvalPrompt, score_ifeval
from .ifsuite import IfPrompt, score_responses


@dataclass
class ScoreStage:
    result: Any  # IfEvalResult | IfSuiteResult
    summary: dict[str, Any]
    behaviour: dict[str, Any] | None = field(default=None)


def _behaviour(out_dir: Path, outputs: tuple[Sequence[str], Sequence[bool | None] | None] | None, label: str) -> dict[str, Any] | None:
    if outputs is None:
        return None
    texts, ended_with_eos = outputs
    return write_behaviour(out_dir, list(texts), list(ended_with_eos) if ended_with_eos is not None else None, label)


def ifeval_stage(
    prompts: Sequence[IfEvalPrompt],
    responses: Mapping[str, str] | Sequence[str] | Any,
    out_dir: str | Path,
    *,
    model: str,
    seed: int = 0,
    outputs: tuple[Sequence[str], Sequence[bool | None] | None] | None = None,
) -> ScoreStage:
    """IFEval's four metrics with CIs; ``ifeval.json`` holds the per-prompt outcomes the report's paired tests read.
    ``outputs``: (texts, ended_with_eos) of the generations, for ``behaviour.json``."""
    out_dir = Path(out_dir)
    result = score_ifeval(prompts, responses, model=model, seed=seed)
    result.save(out_dir)
    entry = result.entries[0]
    summary = {
        **{m: entry[m] for m in METRICS},
        "n_prompts": entry["n_prompts"],
        "n_instructions": entry["n_instructions"],
        "n_matched_by_position": entry["n_matched_by_position"],
    }
    return ScoreStage(result, summary, _behaviour(out_dir, outputs, model))


def ifsuite_stage(
    prompts: Sequence[IfPrompt],
    responses: Mapping[str, str] | Sequence[str],
    out_dir: str | Path,
    *,
    model: str,
    outputs: tuple[Sequence[str], Sequence[bool | None] | None] | None = None,
) -> ScoreStage:
    """The judge-free suite, strict and loose; ``outputs``: (texts, ended_with_eos) for ``behaviour.json``."""
    out_dir = Path(out_dir)
    result = score_responses(prompts, responses, model=model)
    result.save(out_dir)
    entry = result.entries[0]
    summary = {"strict_accuracy": entry["strict_accuracy"], "loose_accuracy": entry["loose_accuracy"], "n": entry["n"]}
    return ScoreStage(result, summary, _behaviour(out_dir, outputs, model))
