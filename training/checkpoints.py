"""Checkpoints that count only when complete, and the output directories that are ours.

HF ``Trainer`` writes ``checkpoints/checkpoint-N/`` in place: weights, optimizer, scheduler, RNG
state, then ``trainer_state.json``, then it rotates older checkpoints away. A kill or a full disk
in between leaves a folder that ``resume_from_checkpoint=True`` would pick (the highest number)
and fail on at every retry. Here a checkpoint counts only once Trainer has finished it: the
:func:`completion_callback` writes ``COMPLETE_MARKER`` into it from ``on_save`` (which Trainer
calls after ``_save_checkpoint`` returned, rotation included), atomically and on the main process
only; :func:`latest_complete_checkpoint` is what a resume starts from, by path, and
:func:`discard_incomplete` removes the half-written ones (with a note) before it does.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from implicit_it.io import atomic_write_json

CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "iit_checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoints/checkpoint-N`` folder of ``out_dir``, complete or not, by step."""
    root = Path(out_dir) / CHECKPOINT_DIR
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = _CHECKPOINT_RE.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def is_complete(path: str | Path) -> bool:
    """Trainer finished writing this checkpoint: our marker is there and its ``trainer_state.json`` reads back
    with the folder's own step."""
    path = Path(path)
    m = _CHECKPOINT_RE.match(path.name)
    if not m:
        return False
    step = int(m.group(1))
    state = _read_json(path / TRAINER_STATE)
    if not isinstance(state, dict) or state.get("global_step") != step:
        return False
    marker = _read_json(path / COMPLETE_MARKER)
    return isinstance(marker, dict) and marker.get("global_step") == step


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints of ``out_dir``, oldest first."""
    return [p for _, p in checkpoints(out_dir) if is_complete(p)]


def latest_complete_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint a resume starts from: the newest complete one (None: nothing to resume)."""
    done = complete_checkpoints(out_dir)
    return done[-1] if done else None


def incomplete_checkpoints(out_dir: str | Path) -> list[Path]:
    done = set(complete_checkpoints(out_dir))
    return [p for _, p in checkpoints(out_dir) if p not in done]


def discard_incomplete(out_dir: str | Path) -> list[Path]:
    """Delete the half-written checkpoints (a kill or a full disk mid-save), each with a note; returns them."""
    gone = incomplete_checkpoints(out_dir)
    for path in gone:
        log.warning("%s: incomplete checkpoint (interrupted while it was being saved); deleting it", path)
        shutil.rmtree(path, ignore_errors=True)
    return gone


def remove_checkpoints(out_dir: str | Path) -> None:
    """Delete the run's ``checkpoint-N`` folders, and ``checkpoints/`` if nothing else is in it."""
    for _, path in checkpoints(out_dir):
        shutil.rmtree(path, ignore_errors=True)
    try:
        (Path(out_dir) / CHECKPOINT_DIR).rmdir()
    except OSError:
        pass


def mark_complete(path: str | Path, global_step: int) -> None:
    atomic_write_json(Path(path) / COMPLETE_MARKER, {"global_step": global_step})


def completion_callback() -> Any:
    """A ``TrainerCallback`` that marks each checkpoint complete once Trainer has finished saving it."""
    from transformers import TrainerCallback

    class MarkCompleteCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if (path / TRAINER_STATE).is_file():
                mark_complete(path, state.global_step)

    return MarkCompleteCheckpoints()
