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
from implicit_it.errors import UserError
from implicit_it.io import read_input_bytes

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
        return read_json(path)

    def results(self, filename: str) -> list[dict[str, Any]]:
        """The entries of an AnalysisResult JSON (its envelope); [] if the step wrote none."""
        data = self.read(filename)
        return [] if data is None else entries_of(data, self.dir / filename)

    def result(self, name: str) -> AnalysisResult | None:
        """``<name>.json`` as its registered result class; None if the step wrote none or no class reads it."""
        data = self.read(f"{name}.json")
        if data is None:
            return None
        try:
            return result_class(name).from_json(data, self.dir / f"{name}.json")
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


def read_json(path: Path) -> Any:
    """A JSON file the run wrote; a damaged one (truncated by a full disk, edited by hand) is an error naming it."""
    try:
        return json.loads(read_input_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); re-run the step that wrote it (iit run) or remove it") from None


def _step_record(path: Path, record: Any) -> StepRecord:
    """A ``step.json`` with its fields' types checked: a hand-edited ``meta: "x"`` is one error naming the file."""

    def field(name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = record.get(name, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # True is an int to Python
            raise UserError(f"{path}: not a step record (field {name!r} is {type(value).__name__} {value!r})")
        return value

    if not isinstance(record, dict):
        raise UserError(f"{path}: not a step record (a JSON {type(record).__name__}, not an object)")
    meta = field("meta", dict, {})
    seed = meta.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UserError(f"{path}: not a step record (meta.seed is {type(seed).__name__} {seed!r}, not an integer)")
    return StepRecord(
        field("stage", str, None),
        field("name", str, None),
        path.parent,
        meta,
        field("summary", dict, {}),
        float(field("seconds", (int, float), 0.0)),
        field("config", dict, {}),
    )


def _own_step_files(run_dir: Path, manifest: dict[str, Any] | None) -> list[Path]:
    """The ``step.json`` files of this run's plan: ``RUN/<stage>/<name>/step.json`` whose record names that very
    folder, and no deeper. A run started inside another (``iit run -o RUN/generate``) has its own steps one level down,
    named for its own plan: they are not this run's, and are not counted twice."""
    results = (manifest or {}).get("results")
    steps = results.get("steps") if isinstance(results, dict) else None
    planned = set(steps) if isinstance(steps, dict) else set()
    found = []
    for path in sorted(run_dir.glob("*/**/step.json")):
        rel = path.parent.relative_to(run_dir).as_posix()
        if planned and rel not in planned:
            continue
        found.append(path)
    return found


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    manifest_path = run_dir / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and not isinstance(manifest, dict):
        raise UserError(f"{manifest_path}: not a run manifest (a JSON {type(manifest).__name__})")
    steps = []
    for path in _own_step_files(run_dir, manifest):
        record = read_json(path)
        if isinstance(record, dict) and record.get("stage") == "report":
            continue
        step = _step_record(path, record)
        if f"{step.stage}/{step.name}" != path.parent.relative_to(run_dir).as_posix():
            continue  # a step of another run's plan (nested inside this one, or copied in)
        steps.append(step)
    if not steps:
        raise UserError(f"{run_dir}: no finished steps (run `iit run` first)")
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
