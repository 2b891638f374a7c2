"""``iit run`` (the whole study from one config, stage by stage, cached) and ``iit report``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import command_line, console, user_errors

DEFAULT_CONFIG = Path("configs/demo.yaml")


@user_errors
def run(
    config: Path = typer.Argument(
        DEFAULT_CONFIG, help="Experiment YAML (default: configs/demo.yaml, the CPU demo on the embedded Gemma-3-270M)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/study/<config name>)."),
    seeds: Optional[str] = typer.Option(
        None,
        "--seeds",
        help="Training seeds, e.g. 1..5 or 0,1,2: the training-dependent stages run "
        "once per seed and the report gives mean ± std (default: the config's run.seeds or seed).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (one line per step)."),
    sets: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE with a dotted key, e.g. run.mech.enabled=true: set one config field (value read as YAML); repeatable."
    ),
) -> None:
    """Train the variants, generate (base, variants, rule adapter + ablations), rank/probe, diff, evaluate and write the report.

    Every step's output is keyed by a hash of its config and inputs: a re-run skips finished steps,
    a changed config re-runs only what depends on it, and an interrupted run resumes."""
    from implicit_it.app.config import load_config
    from implicit_it.app.pipeline import StageFailed, parse_seeds, run_study

    cfg = load_config(config, sets)
    seed_list = parse_seeds(seeds) if seeds else None
    run_dir = out or Path("runs") / "study" / cfg.name
    t0 = time.perf_counter()
    console.print(f"iit run: {config} → {run_dir}", highlight=False)

    def on_step(step, status: str, seconds: float) -> None:
        if status == "cached":
            console.print(f"  [dim]✓ {step.id} (finished earlier, {seconds:.0f} s; skipped)[/]", highlight=False)
        elif status == "start":
            console.print(f"  [bold]▶ {step.id}[/]", highlight=False)
        else:
            console.print(f"  [green]✓[/] {step.id} ({seconds:.1f} s)", highlight=False)

    try:
        outcome = run_study(
            cfg,
            run_dir,
            seeds=seed_list,
            show_progress=not quiet,
            command=command_line(),
            config_path=config,
            on_step=on_step,
        )
    except StageFailed as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        console.print(f"finished steps are kept under {run_dir}; fix the cause and run the same command again to resume.", highlight=False)
        raise typer.Exit(code=1) from None
    from implicit_it.app.results import register_every_result
    from implicit_it.reports import read_run
    from implicit_it.reports.sections import headline

    register_every_result()

    for line in headline(read_run(run_dir)):
        console.print(line, highlight=False)
    ran = sum(s == "ran" for s in outcome.statuses.values())
    console.print(
        f"done in {(time.perf_counter() - t0) / 60:.1f} min ({ran} steps ran, {len(outcome.statuses) - ran} cached)", highlight=False
    )
    print(outcome.report)


@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `iit run`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write report.html/report.md (default RUN_DIR/report)."),
    check: bool = typer.Option(False, "--check", help="Render the HTML in headless Chromium and check its sections and figures."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="With --check: also save a screenshot (PNG) here."),
) -> None:
    """Write the mechanism report (self-contained report.html and report.md) of a run directory."""
    from implicit_it.app.results import register_every_result
    from implicit_it.reports import report_stage

    register_every_result()

    stage = report_stage(run_dir, out, check=check, screenshot=screenshot)
    for line in stage.lines():
        console.print(line, highlight=False)
    print(stage.paths["html"])
