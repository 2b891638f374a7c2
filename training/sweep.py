"""Epoch sweep and selection: train the grid, keep the epoch count with the best metric.

Each grid point is its own run (the learning-rate schedule is planned over the run's own length,
as in the paper). The paper selected each variant's epochs by AlpacaEval win rate against GPT-3.5
on its 56 LIMA validation instructions; ``training.sweep_metric`` picks that (``val_win_rate``,
with a judge), a judge-free generation metric (``ifsuite_loose``), or a likelihood
(``val_nll``, ``heldout_nll``, computed by training itself). Generation metrics come from a
``scorer`` the caller passes (the application layer builds it from the evaluation room), so
training stays independent of evaluation. Selection is a pure function of the points so it can
be tested without training anything.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from implicit_it.errors import UserError
from implicit_it.io import atomic_write_json
from implicit_it.manifest import build_manifest

from .checkpoints import latest_complete_checkpoint
from .config import TrainingExperiment
from .engine import default_out_dir, train_variant
from .validation import METRIC_DIRECTIONS
from .variants import Variant


@dataclass(frozen=True)
class SweepPoint:
    epochs: float
    out_dir: str
    metrics: dict[str, float]


def select_best(points: Sequence[SweepPoint], metric: str) -> SweepPoint:
    """The point with the best ``metric`` (direction from :data:`METRIC_DIRECTIONS`).

    Points without a finite value are skipped; ties go to fewer epochs (cheaper, and less
    overfit to the small training set)."""
    if metric not in METRIC_DIRECTIONS:
        raise UserError(f"unknown selection metric {metric!r}; choose one of {sorted(METRIC_DIRECTIONS)}")
    sign = 1.0 if METRIC_DIRECTIONS[metric] == "min" else -1.0
    scored = [p for p in points if isinstance(p.metrics.get(metric), (int, float)) and math.isfinite(p.metrics[metric])]
    if not scored:
        raise ValueError(f"no sweep point has a finite {metric!r}")
    return min(scored, key=lambda p: (sign * p.metrics[metric], p.epochs))


def epochs_dir_name(epochs: float) -> str:
    return f"epochs-{epochs:g}"


def run_sweep(
    config: TrainingExperiment,
    variant: Variant,
    *,
    out_dir: str | Path | None = None,
    grid: Sequence[float] | None = None,
    seed: int | None = None,
    resume: bool = False,
    show_progress: bool = True,
    scorer: Callable[[Path], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train ``variant`` once per epoch count and select one; writes ``sweep.json`` + manifest.

    With ``resume``, finished grid points are reused and an unfinished one continues from its
    last checkpoint, so a killed sweep picks up where it stopped."""
    metric = config.training.sweep_metric or ("val_nll" if config.data.validation else "heldout_nll")
    if metric == "heldout_nll" and not config.data.heldout_examples:
        raise UserError("training.sweep_metric heldout_nll needs data.heldout_examples > 0 in the config")
    if metric == "val_nll" and not config.data.validation:
        raise UserError("training.sweep_metric val_nll needs data.validation (instructions with reference outputs)")
    if metric in ("val_win_rate", "ifeval_loose", "ifsuite_loose") and scorer is None:
        raise ValueError(
            f"training.sweep_metric {metric} scores generations: pass a scorer (iit sweep builds one; val_win_rate also needs --judge)"
        )
    grid = list(grid or config.training.epoch_grid)
    root = Path(out_dir) if out_dir is not None else default_out_dir(config, variant).with_name(f"{variant.name}-sweep")
    points: list[SweepPoint] = []
    for epochs in grid:
        cfg = config.model_copy(update={"training": config.training.model_copy(update={"epochs": epochs, "epochs_by_variant": {}})})
        point_dir = root / epochs_dir_name(epochs)
        finished = point_dir / "train_manifest.json"
        if resume and finished.is_file():
            results = json.loads(finished.read_text(encoding="utf-8"))["results"]
        else:
            has_ckpt = latest_complete_checkpoint(point_dir) is not None
            results = train_variant(
                cfg, variant, out_dir=point_dir, seed=seed, resume=resume and has_ckpt, show_progress=show_progress
            ).results
        if not results:  # not the main process
            continue
        metrics = {k: results[k] for k in METRIC_DIRECTIONS if k in results}
        if scorer is not None and metric not in metrics:
            cached = point_dir / "sweep_scores.json"
            if resume and cached.is_file():
                metrics.update(json.loads(cached.read_text(encoding="utf-8")))
            else:
                scores = scorer(point_dir)
                atomic_write_json(cached, scores)
                metrics.update(scores)
        points.append(SweepPoint(epochs, str(point_dir), metrics))
    if not points:
        return {}
    best = select_best(points, metric)
    summary = {
        "variant": variant.name,
        "metric": metric,
        "direction": METRIC_DIRECTIONS[metric],
        "selected_epochs": best.epochs,
        "selected_dir": best.out_dir,
        "points": [{"epochs": p.epochs, "out_dir": p.out_dir, **p.metrics} for p in points],
    }
    atomic_write_json(root / "sweep.json", summary)
    atomic_write_json(
        root / "manifest.json",
        build_manifest(
            command=" ".join(["iit"] + sys.argv[1:]),
            config=config.model_dump(mode="json"),
            seed=config.seed if seed is None else seed,
            data_files=[config.data.train, *([config.data.validation] if config.data.validation else [])],
            results=summary,
        ),
    )
    return summary
