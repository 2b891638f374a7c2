"""Output locations checked before the work that fills them: a command that would spend minutes generating or
scoring first makes sure it can write its result (``iit generate --out``, ``--out DIR``, a run directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ImplicitItError


class OutputNotWritable(ImplicitItError):
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
    try:
        fd, probe = tempfile.mkstemp(prefix=".iit-write-check.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputNotWritable(f"{path}: cannot be written: no file can be created in {base} ({reason})") from None
    return path
