"""Read a run directory back: every finished step's record and the files it wrote.

The report never re-computes anything: it reads ``step.json`` (summary, timings, which system
and seed) and the JSON each stage wrote, so ``iit report RUN_DIR`` works on any finished or
partly finished run, without the config.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from implicit_it.analysis import AnalysisResult, entries_of, result_class
from implicit_it.errors import ImplicitItError

# files a step writes that are not analysis results (skipped when a step's results are listed)
NOT_RESULTS = frozenset({"step.json", "manifest.json", "outputs.json", "behaviour.json", "annotations.json", "train_manifest.json"})


@dataclass
class StepRecord:
    stage: str
    name: str
    dir: Path
    meta: dict[str, Any]
    summary: dict[str, Any]
    seconds: float
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return self.meta.get("label") or self.meta.get("system") or self.name

    @property
    def system(self) -> str:
        return self.meta.get("system") or self.name

    def read(self, filename: str) -> Any:
        path = self.dir / filename
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def results(self, filename: str) -> list[dict[str, Any]]:
        """The entries of an AnalysisResult JSON (the envelope, or an older layout: see ``entries_of``)."""
        data = self.read(filename)
        return [] if data is None else entries_of(data)

    def result(self, name: str) -> AnalysisResult | None:
        """``<name>.json`` as its registered result class; None if the step wrote none or no class reads it."""
        data = self.read(f"{name}.json")
        if data is None:
            return None
        where = data.get("class") if isinstance(data, dict) else None
        try:
            return result_class(name, where).from_json(data)
        except (KeyError, ValueError):
            return None

    def result_names(self) -> list[str]:
        """Names of the analysis results this step wrote (files in the envelope, whose ``analysis`` is their name)."""
        names = []
        for path in sorted(self.dir.glob("*.json")):
            if path.name in NOT_RESULTS:
                continue
            with path.open(encoding="utf-8") as fh:
                head = fh.read(256)
            if '"analysis"' in head and f'"{path.stem}"' in head:
                names.append(path.stem)
        return names


@dataclass
class RunData:
    run_dir: Path
    manifest: dict[str, Any] | None
    steps: list[StepRecord] = field(default_factory=list)

    def stage(self, stage: str, *, set_name: str | None = None) -> list[StepRecord]:
        return [s for s in self.steps if s.stage == stage and (set_name is None or s.meta.get("set", s.name.split("/")[0]) == set_name)]

    def by_label(self, stage: str, *, set_name: str | None = None) -> dict[str, list[StepRecord]]:
        """Steps of a stage grouped by system label (one per seed for trained variants), in run order."""
        out: dict[str, list[StepRecord]] = {}
        for s in self.stage(stage, set_name=set_name):
            out.setdefault(s.label, []).append(s)
        return out

    def merged(self, stage: str, name: str, *, first_seed: bool = False) -> AnalysisResult | None:
        """One result with the ``name`` results of every step of ``stage`` side by side (in run order;
        ``first_seed``: only the first step of each system label). None when no step has one."""
        steps = [recs[0] for recs in self.by_label(stage).values()] if first_seed else self.stage(stage)
        merged: AnalysisResult | None = None
        for step in steps:
            result = step.result(name)
            if result is not None:
                merged = result if merged is None else merged.merge(result)
        return merged

    @property
    def seeds(self) -> list[int]:
        return sorted({s.meta["seed"] for s in self.steps if s.meta.get("seed") is not None})


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ImplicitItError(f"{run_dir}: no such run directory")
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    steps = []
    for path in sorted(run_dir.glob("*/**/step.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("stage") == "report":
                continue
            steps.append(
                StepRecord(
                    record["stage"],
                    record["name"],
                    path.parent,
                    record.get("meta", {}),
                    record.get("summary", {}),
                    record.get("seconds", 0.0),
                    record.get("config", {}),
                )
            )
        except (ValueError, KeyError, AttributeError) as exc:
            raise ImplicitItError(f"{path}: not a step record ({type(exc).__name__}: {exc})") from None
    if not steps:
        raise ImplicitItError(f"{run_dir}: no finished steps (run `iit run` first)")
    order = {sid: i for i, sid in enumerate((manifest or {}).get("results", {}).get("steps", {}))}
    steps.sort(key=lambda s: order.get(f"{s.stage}/{s.name}", len(order)))
    return RunData(run_dir, manifest, steps)


def finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Iterable[Any], *, scale: float = 1.0, digits: int = 1) -> str:
    """``12.3`` for one value, ``12.3 ± 0.4`` (sample std over seeds) for several; ``–`` for none."""
    vals = [v * scale for v in finite(values)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"
