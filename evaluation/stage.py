"""The scoring stages of IFEval, the IF suite and AlpacaEval: what ``iit eval ifeval/ifsuite/alpaca`` and the pipeline's
eval steps both call.

Each scores responses, saves the result (``ifeval.json`` / ``ifsuite.json`` / ``alpaca_eval.json`` + .parquet, .png)
and, given the outputs' texts and EOS flags, ``behaviour.json`` into ``out_dir``; it returns the result and the summary
a manifest or a step records. Manifests are the caller's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from implicit_it.io import atomic_write_json

from .alpaca import AlpacaEvalResult, LCData, alpaca_metrics, annotate, load_reference, pair_with_reference
from .behaviour import write_behaviour
from .ifeval import METRICS, IfEvalPrompt, score_ifeval
from .ifsuite import IfPrompt, score_responses
from .judge_agreement import gold_answers
from .outputs import ModelOutput, read_model_outputs


@dataclass
class ScoreStage:
    result: Any  # IfEvalResult | IfSuiteResult
    summary: dict[str, Any]
    behaviour: dict[str, Any] | None = field(default=None)

    def record(self) -> dict[str, Any]:
        """What a pipeline step records: the summary, with the EOS rate and template echo when behaviour was scored."""
        b = self.behaviour
        return self.summary if b is None else self.summary | {k: b[k] for k in ("eos_fraction", "template_echo_rate")}


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


ALPACA_SUMMARY = ("win_rate", "standard_error", "lc_win_rate", "lc_standard_error", "lc_note", "n")


def alpaca_stage(
    outputs: str | Path | Sequence[ModelOutput],
    reference: str | Path | Sequence[ModelOutput],
    out_dir: str | Path,
    *,
    judge: Any,
    generator: str,
    cache_path: str | Path,
    gold_answers_path: str | Path | None = None,
    lc: LCData | None = None,
    eval_set: Sequence[str] | None = None,
    limit: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ScoreStage:
    """Judge ``outputs`` (an AlpacaEval JSON list, or the outputs themselves) against ``reference`` (a file,
    ``alpaca_eval`` for the library's own, or the outputs themselves) with ``judge``, then score: ``annotations.json``
    (the per-instruction verdicts) and ``alpaca_eval.json``.
    A ``metric:`` judge scores both outputs against ``gold_answers_path``'s answers (AlpacaEval's GPT-4 references).
    ``eval_set``: the whole instruction set, which places each instruction for the length-controlled win rate (None:
    the reference's instructions)."""
    out_dir = Path(out_dir)
    outputs_path = outputs if isinstance(outputs, (str, Path)) else None
    model_outputs = read_model_outputs(outputs_path, limit=limit) if outputs_path is not None else list(outputs)[:limit]
    reference_outputs = load_reference(reference) if isinstance(reference, (str, Path)) else list(reference)
    pairs = pair_with_reference(model_outputs, reference_outputs, outputs_path=outputs_path or "outputs")
    eval_set = eval_set if eval_set is not None else [r.instruction for r in reference_outputs]
    gold = gold_answers(judge, gold_answers_path)
    frame = annotate(pairs, judge, out_dir / "judge", generator=generator, cache_path=cache_path, gold=gold)
    return alpaca_scores(frame, out_dir, judge_name=judge.name, lc=lc, eval_set=eval_set, meta=meta)


def alpaca_scores(
    frame: Any,
    out_dir: str | Path,
    *,
    judge_name: str,
    lc: LCData | None = None,
    eval_set: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ScoreStage:
    """Win rate and LC win rate of judged pairs (``frame``: annotations, fresh or stored), saved into ``out_dir``."""
    out_dir = Path(out_dir)
    metrics = alpaca_metrics(frame, judge=judge_name, lc=lc, eval_set=eval_set)
    metrics.update(meta or {})
    atomic_write_json(out_dir / "annotations.json", frame.to_dict("records"))
    result = AlpacaEvalResult([metrics])
    result.save(out_dir)
    return ScoreStage(result, {k: metrics.get(k) for k in ALPACA_SUMMARY})
