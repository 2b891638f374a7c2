"""Run a study's steps in order, skipping finished ones, and keep a run manifest.

A failing step stops the run with one message naming the stage, the step and its inputs;
everything finished before it stays on disk (and is skipped by the next run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from implicit_it.config import ExperimentConfig
from implicit_it.errors import ImplicitItError
from implicit_it.manifest import build_manifest, write_manifest

from .stages import StudyPlan
from .steps import Step

RUN_MANIFEST = "manifest.json"


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
    outcome = RunOutcome(run_dir, None)
    started = time.perf_counter()

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
        step.begin()
        try:
            summary = step.run(step)
        except Exception as exc:  # noqa: BLE001 - any failure is reported with its stage and inputs; finished steps stay
            outcome.statuses[step.id] = "failed"
            write_run_manifest()
            raise StageFailed(
                f"stage {step.stage!r} failed at step {step.id} (inputs: {_describe_inputs(step)}): {type(exc).__name__}: {exc}"
            ) from exc
        seconds = time.perf_counter() - t0
        step.finish(summary, seconds)
        outcome.statuses[step.id], outcome.seconds[step.id] = "ran", round(seconds, 2)
        if on_step:
            on_step(step, "ran", seconds)
        write_run_manifest()
    write_run_manifest()
    outcome.report = run_dir / "report" / "report.html"
    return outcome
