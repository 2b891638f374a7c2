"""Output locations checked before the work that fills them: a command that would spend minutes generating or
scoring first makes sure it can write its result (``iit generate --out``, ``--out DIR``, a run directory)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .errors import CannotProceed

PROBE_BYTES = 64 * 1024


class OutputNotWritable(CannotProceed):
    """The output location cannot be written: raised before any work."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_writable(path: str | Path, *, directory: bool = False) -> Path:
    """Make sure ``path`` can be written (a file, or with ``directory`` a folder to write files into), without
    leaving anything behind: the nearest existing folder on the way must be a folder in which a file can be
    created (tested by creating and removing one; permission bits alone do not stop root, a read-only mount or
    ``/proc`` does). Raises :class:`OutputNotWritable` naming the path; returns ``path``."""
    path = Path(path).expanduser()
    if path.is_dir() and not directory:
        raise OutputNotWritable(f"{path}: is a directory; give a file name to write")
    if path.exists() and directory and not path.is_dir():
        raise OutputNotWritable(f"{path}: exists and is not a directory")
    target = path if directory else path.parent
    base = _nearest_existing(target)
    if not base.is_dir():
        raise OutputNotWritable(f"{path}: cannot be written: {base} is a file, not a directory")
    probe = None
    try:  # a full disk still creates an empty file: write and sync a little data to see it now, not after the work
        fd, probe = tempfile.mkstemp(prefix=".iit-write-check.", dir=base)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputNotWritable(f"{path}: cannot be written: no file can be written in {base} ({reason})") from None
    finally:
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass
    return path


def write_or_rescue(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; if that fails (the disk filled up while the work ran), save it under the
    temp directory instead and raise :class:`OutputNotWritable` naming both, so minutes of generation are not lost."""
    from .io import atomic_write_text

    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        rescue = Path(tempfile.gettempdir()) / f"iit-rescued-{os.getpid()}-{Path(path).name}"
        try:
            atomic_write_text(rescue, text)
            kept = f"the result was saved to {rescue} instead"
        except OSError as exc2:
            kept = f"it could not be saved to {rescue} either ({exc2.strerror or type(exc2).__name__})"
        raise OutputNotWritable(f"{path}: could not be written ({reason}); {kept}") from None


# --------------------------------------------------------------------------- a run's own folders
STEP_FILE = "step.json"  # a finished pipeline step's record (written last)
PENDING_FILE = "pending.json"  # a started, unfinished step's record
_KEY = re.compile(r"[0-9a-f]{16}")


def is_step_directory(path: Path, step_id: str | None = None) -> bool:
    """``path`` holds a record a step wrote about itself: ``step.json`` or ``pending.json`` with the step's 16-hex key
    and its id (``stage/name``): ``step_id`` when the caller knows which step owns the folder, else an id whose last
    part is the folder's name. A file merely called ``pending.json`` (``{}``, or another step's record copied in) is no
    proof: the folder is never deleted on its word."""
    for name in (STEP_FILE, PENDING_FILE):
        record = _read_json_object(path / name)
        if not isinstance(record, dict):
            continue
        key, recorded = record.get("key"), record.get("step")
        if not (isinstance(key, str) and _KEY.fullmatch(key) and isinstance(recorded, str) and "/" in recorded):
            continue
        if recorded == step_id if step_id is not None else recorded.rsplit("/", 1)[1] == path.name:
            return True
    return False


def _read_json_object(path: Path) -> object:
    """A small JSON record, or None: never blocks on a FIFO, never reads more than 1 MiB of a stranger's file."""
    from .io import read_regular_bytes

    try:
        return json.loads(read_regular_bytes(path, 1 << 20))
    except (OSError, ValueError):
        return None
