"""Run a study's steps in order, skipping finished ones, and keep a run manifest.

A failing step stops the run with one message naming the stage, the step and its inputs;
everything finished before it stays on disk (and is skipped by the next run). A full disk is
such a failure too: result files are written atomically, so the failed step leaves no partial
result and no ``step.json``, and the run manifest is written on a best-effort basis so that it never
hides the step's own error. One run at a time per directory: ``RUN_DIR/.iit.lock``
(:mod:`implicit_it.locks`) makes a second ``iit run`` stop at once, naming the first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from implicit_it.app.config import ExperimentConfig
from implicit_it.errors import ImplicitItError
from implicit_it.io import remove_temp_litter
from implicit_it.locks import directory_lock
from implicit_it.manifest import build_manifest, write_manifest

from .stages import StudyPlan
from .steps import Step

RUN_MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


class StageFailed(ImplicitItError):
    """A step raised: the message names the stage, the step and what it read."""


@dataclass
class RunOutcome:
    run_dir: Path
    report: Path | None
    statuses: dict[str, str] = field(default_factory=dict)  # step id -> ran | cached | failed
    seconds: dict[str, float] = field(default_factory=dict)


def _describe_inputs(step: Step) -> str:
    parts = [str(s.dir) for s in step.inputs if s.stage != "report"][:3] + [str(p) for p in step.data_files]
    return ", ".join(parts) if parts else "the config"


def run_study(
    config: ExperimentConfig,
    run_dir: str | Path,
    *,
    seeds: list[int] | None = None,
    show_progress: bool = True,
    command: str = "iit run",
    config_path: str | Path | None = None,
    on_step: Callable[[Step, str, float], None] | None = None,
) -> RunOutcome:
    """Plan and run every step of ``config`` under ``run_dir``; finished steps with the same key are skipped."""
    run_dir = Path(run_dir)
    plan = StudyPlan(config, run_dir, seeds=seeds, show_progress=show_progress, command=command)
    steps = plan.build()  # a bad plan (unknown system, missing reference) fails here, before any work
    if config.run.eval.judge:  # no key / server down / no judge model: one error now, not after hours of training
        from implicit_it.evaluation import parse_judge

        parse_judge(config.run.eval.judge, config.run.eval.judge_model).preflight()
    from implicit_it.engines import close_engine

    with directory_lock(run_dir, what="iit run"):  # a second run on this directory stops here, naming this one
        try:
            return _run_steps(config, run_dir, plan, steps, command, config_path, on_step)
        finally:
            close_engine()  # a vLLM engine (generate.backend: vllm) ends with the run


def _run_steps(
    config: ExperimentConfig,
    run_dir: Path,
    plan: StudyPlan,
    steps: list[Step],
    command: str,
    config_path: str | Path | None,
    on_step: Callable[[Step, str, float], None] | None,
) -> RunOutcome:
    outcome = RunOutcome(run_dir, None)
    started = time.perf_counter()
    remove_temp_litter(run_dir)  # temp files of a write killed in an earlier run (we hold the lock: none is in flight)

    def write_run_manifest() -> None:
        write_manifest(
            run_dir,
            build_manifest(
                command=command,
                config={"config_file": str(config_path) if config_path else None, **config.model_dump(mode="json")},
                seed=config.seed,
                model={"spec": config.model.spec, "systems": [s.meta() for s in plan.systems]},
                data_files=sorted({f for s in steps for f in s.data_files}),
                results={
                    "seeds": plan.seeds,
                    "steps": {
                        s.id: {"key": s.key, "status": outcome.statuses.get(s.id, "not run"), "seconds": outcome.seconds.get(s.id)}
                        for s in steps
                    },
                },
                timings={"total": round(time.perf_counter() - started, 2), **{k: v for k, v in outcome.seconds.items()}},
            ),
        )

    def try_run_manifest() -> None:
        """The manifest between steps: a failure (a full disk) must not mask a step's own error; the last write reports it."""
        try:
            write_run_manifest()
        except OSError as exc:
            log.warning("%s: could not write %s: %s", run_dir, RUN_MANIFEST, exc)

    for step in steps:
        record = step.finished()
        if record is not None:
            outcome.statuses[step.id] = "cached"
            outcome.seconds[step.id] = record.get("seconds", 0.0)
            if on_step:
                on_step(step, "cached", record.get("seconds", 0.0))
            continue
        t0 = time.perf_counter()
        if on_step:
            on_step(step, "start", 0.0)
        try:
            step.begin()
            summary = step.run(step)
            seconds = time.perf_counter() - t0
            step.finish(summary, seconds)  # step.json, atomically: the step counts as finished only once it is whole
        except Exception as exc:  # noqa: BLE001 - any failure is reported with its stage and inputs; finished steps stay
            outcome.statuses[step.id] = "failed"
            try_run_manifest()
            raise StageFailed(
                f"stage {step.stage!r} failed at step {step.id} (inputs: {_describe_inputs(step)}): {type(exc).__name__}: {exc}"
            ) from exc
        outcome.statuses[step.id], outcome.seconds[step.id] = "ran", round(seconds, 2)
        if on_step:
            on_step(step, "ran", seconds)
        try_run_manifest()
    try:
        write_run_manifest()
    except OSError as exc:
        raise StageFailed(f"every step finished, but {run_dir / RUN_MANIFEST} could not be written: {type(exc).__name__}: {exc}") from exc
    outcome.report = run_dir / "report" / "report.html"
    return outcome
