"""Steps of a run and their cache keys.

A step is one unit of work with one output directory (``RUN_DIR/<stage>/<name>/``). Its key is a
hash of what its result depends on: its own config, the keys of the steps it reads, the sha256
of its data files and the code version (a hash of the package's source, :func:`implicit_it.manifest.code_version`),
so an edit of the code re-runs every step. A finished step leaves ``step.json`` (written last, holding the key);
a re-run skips a step whose ``step.json`` has the same key, so changing one stage's config
re-runs that stage and whatever reads it, and nothing else. A step that started leaves
``pending.json``; if the run is interrupted, the next run finds it and starts the step again
(training resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from implicit_it.errors import CannotProceed
from implicit_it.io import atomic_write_json, sha256_file
from implicit_it.locks import LOCK_NAME
from implicit_it.manifest import code_version
from implicit_it.paths import PENDING_FILE, STEP_FILE, is_step_directory


@dataclass(eq=False)
class Step:
    """One unit of work: ``run(step)`` writes into ``step.dir`` and returns a JSON summary."""

    stage: str
    name: str
    config: dict[str, Any]
    run: Callable[["Step"], dict[str, Any]]
    dir: Path
    inputs: list["Step"] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # what the report needs to know (system, seed, ...); not keyed
    _key: str | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.name}"

    @property
    def key(self) -> str:
        if self._key is None:
            payload = {
                "stage": self.stage,
                "name": self.name,
                "config": canonical(self.config),
                "inputs": {s.id: s.key for s in self.inputs},
                "data": {str(p): sha256_file(p) for p in self.data_files if Path(p).is_file()},
                "code": code_version()["source_sha256"],
            }
            self._key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self._key

    def finished(self) -> dict[str, Any] | None:
        """The ``step.json`` of an earlier run of exactly this step, or None."""
        record = _read_json(self.dir / STEP_FILE)
        return record if record is not None and record.get("key") == self.key else None

    def interrupted(self) -> bool:
        """An earlier run of exactly this step started and did not finish."""
        pending = _read_json(self.dir / PENDING_FILE)
        return pending is not None and pending.get("key") == self.key

    def begin(self) -> bool:
        """Prepare the directory; True if this resumes an interrupted run of the same step."""
        resume = self.interrupted()
        if not resume and self.dir.exists():
            check_step_dir(self.dir, self.id)
            shutil.rmtree(self.dir)  # a stale result (another key) must not mix with this one
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / PENDING_FILE, {"key": self.key, "step": self.id})
        return resume

    def finish(self, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
        record = {
            "key": self.key,
            "step": self.id,
            "stage": self.stage,
            "name": self.name,
            "config": self.config,
            "inputs": {s.id: s.key for s in self.inputs},
            "data_files": self.data_files,
            "meta": self.meta,
            "code": code_version(),
            "seconds": round(seconds, 2),
            "summary": summary,
        }
        atomic_write_json(self.dir / STEP_FILE, record)
        (self.dir / PENDING_FILE).unlink(missing_ok=True)
        return record


class NotAStepDirectory(CannotProceed):
    """A step's directory holds files that no step wrote: it is never deleted."""


def check_step_dir(path: Path, step_id: str | None = None) -> None:
    """A directory a step may delete: one a step wrote (:func:`is_step_directory`), or an empty one."""
    if not path.is_dir():
        raise NotAStepDirectory(f"{path}: exists and is not a directory; move it away and run again")
    if is_step_directory(path, step_id):
        return
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise NotAStepDirectory(
            f"{path}: holds files that no step of this run wrote ({shown}; no {STEP_FILE} or {PENDING_FILE}), "
            "so it is not deleted; move them away or choose another run directory"
        )


def canonical(value: Any) -> Any:
    """The same config hashes the same however it was written (``7`` and ``7.0`` are one value)."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
