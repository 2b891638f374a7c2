"""Epoch sweep and selection: train the grid, keep the epoch count with the best judge-free metric.

Each grid point is its own run (the learning-rate schedule decays to zero over the run's own
length, as in the paper), scored on the held-out split. Selection is a pure function of the
points so it can be tested without training anything.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from implicit_it.config import ExperimentConfig
from implicit_it.io import atomic_write_json
from implicit_it.manifest import build_manifest

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
        raise ValueError(f"unknown selection metric {metric!r}; choose one of {sorted(METRIC_DIRECTIONS)}")
    sign = 1.0 if METRIC_DIRECTIONS[metric] == "min" else -1.0
    scored = [p for p in points if isinstance(p.metrics.get(metric), (int, float)) and math.isfinite(p.metrics[metric])]
    if not scored:
        raise ValueError(f"no sweep point has a finite {metric!r}")
    return min(scored, key=lambda p: (sign * p.metrics[metric], p.epochs))


def epochs_dir_name(epochs: float) -> str:
    return f"epochs-{epochs:g}"


def run_sweep(
    config: ExperimentConfig,
    variant: Variant,
    *,
    out_dir: str | Path | None = None,
    grid: Sequence[float] | None = None,
    seed: int | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``variant`` once per epoch count and select one; writes ``sweep.json`` + manifest.

    With ``resume``, finished grid points are reused and an unfinished one continues from its
    last checkpoint, so a killed sweep picks up where it stopped."""
    if not config.data.heldout_examples:
        raise ValueError("iit sweep selects by held-out response NLL: set data.heldout_examples > 0 in the config")
    grid = list(grid or config.training.epoch_grid)
    metric = config.training.sweep_metric
    root = Path(out_dir) if out_dir is not None else default_out_dir(config, variant).with_name(f"{variant.name}-sweep")
    points: list[SweepPoint] = []
    for epochs in grid:
        cfg = config.model_copy(update={"training": config.training.model_copy(update={"epochs": epochs})})
        point_dir = root / epochs_dir_name(epochs)
        finished = point_dir / "train_manifest.json"
        if resume and finished.is_file():
            results = json.loads(finished.read_text(encoding="utf-8"))["results"]
        else:
            has_ckpt = any((point_dir / "checkpoints").glob("checkpoint-*"))
            results = train_variant(cfg, variant, out_dir=point_dir, seed=seed, resume=resume and has_ckpt,
                                    show_progress=show_progress).results
        if not results:  # not the main process
            continue
        points.append(SweepPoint(epochs, str(point_dir), {k: results[k] for k in METRIC_DIRECTIONS if k in results}))
    if not points:
        return {}
    best = select_best(points, metric)
    summary = {
        "variant": variant.name, "metric": metric, "direction": METRIC_DIRECTIONS[metric],
        "selected_epochs": best.epochs, "selected_dir": best.out_dir,
        "points": [{"epochs": p.epochs, "out_dir": p.out_dir, **p.metrics} for p in points],
    }
    atomic_write_json(root / "sweep.json", summary)
    atomic_write_json(root / "manifest.json", build_manifest(
        command=" ".join(["iit"] + sys.argv[1:]), config=config.model_dump(mode="json"),
        seed=config.seed if seed is None else seed, data_files=[config.data.train], results=summary,
    ))
    return summary
