"""Atomic file output and content hashing.

Every result is written to a temporary file in the destination folder and renamed into place,
so an interrupted run never leaves a half-written file and never clobbers an earlier good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from .errors import DataFormatError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fh: IO[Any]
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be read by others (reports, outputs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# what atomic_write (and the write check of implicit_it.paths) leave behind when killed mid-write
_TEMP_LITTER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp|\.iit-write-check\.[a-z0-9_]{8}")


def remove_temp_litter(directory: str | Path) -> int:
    """Delete the temp files a killed atomic write left under ``directory`` (``.NAME.XXXXXXXX.tmp``); call it only while
    holding the directory's lock, when no write of ours can be in flight. Returns how many went."""
    removed = 0
    for path in Path(directory).rglob(".*"):
        if _TEMP_LITTER.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """One JSON object a line, with ``json.dumps`` defaults (ASCII-escaped) as the paper's
    data scripts wrote them, so converted files are byte-identical to theirs."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (GGUF files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- sealed directories
# A directory written once and read many times (the dequantized GGUF cache) records each file's size and sha256 when
# it is written. A reader re-hashes a file only when its stat (size, mtime, ctime, inode) differs from the one recorded
# at the last successful check: any write to the file changes its ctime, which no user tool can set back.

SEAL_NAME = "implicit_it_seal.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def seal_directory(directory: str | Path) -> Path:
    """Record every file's size and sha256 in ``DIRECTORY/implicit_it_seal.json`` (call it before publishing the folder)."""
    directory = Path(directory)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p), "checked": _stamp(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != SEAL_NAME
    }
    return atomic_write_json(directory / SEAL_NAME, {"files": files})


def sealed_directory_problem(directory: str | Path) -> str | None:
    """Why ``directory`` no longer holds what :func:`seal_directory` recorded (a missing, resized or altered file, a
    missing seal), or None when every file checks out. A file re-hashed successfully gets its new stamp recorded."""
    directory = Path(directory)
    try:
        seal = json.loads((directory / SEAL_NAME).read_text(encoding="utf-8"))
        files = seal["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files recorded")
    except FileNotFoundError:
        return f"no {SEAL_NAME} (written by an older implicit-it, or never finished)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{SEAL_NAME} is unreadable ({type(exc).__name__})"
    restamped = False
    for name, rec in files.items():
        path = directory / name
        try:
            if not path.is_file():
                return f"{name} is missing"
            stamp = _stamp(path)
            if stamp[0] != rec["size"]:
                return f"{name} has {stamp[0]} bytes, {rec['size']} were written"
            if stamp == rec.get("checked"):
                continue
            if sha256_file(path) != rec["sha256"]:
                return f"{name} changed since it was written (sha256 differs)"
        except (OSError, KeyError, TypeError) as exc:
            return f"{name} cannot be checked ({type(exc).__name__}: {exc})"
        rec["checked"], restamped = stamp, True
    if restamped:
        try:
            atomic_write_json(directory / SEAL_NAME, seal)
        except OSError:  # a read-only cache stays valid; it is just hashed again next time
            pass
    return None


# --------------------------------------------------------------------------- bounded reads of input files
MAX_INPUT_BYTES = 2 << 30  # an input file larger than this is refused ($IIT_MAX_INPUT_BYTES changes it)

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def max_input_bytes() -> int:
    return int(os.environ.get("IIT_MAX_INPUT_BYTES") or MAX_INPUT_BYTES)


def input_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file ("file not found", "is a FIFO (named pipe), not a regular file",
    "is a directory, not a file", "is 3.1 GB, over the 2.1 GB limit"), or None. Never opens it, so never blocks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}, not a regular file"
    if st.st_size > max_input_bytes():
        return f"is {st.st_size / 1e9:.1f} GB, over the {max_input_bytes() / 1e9:.1f} GB limit on input files (IIT_MAX_INPUT_BYTES)"
    return None


def read_regular_bytes(path: str | Path, limit: int, *, follow_links: bool = True) -> bytes:
    """Up to ``limit + 1`` bytes of ``path`` if it is a regular file (opened non-blocking, so a FIFO never hangs; with
    ``follow_links=False`` a symlink is refused too). Raises OSError for anything else; a caller seeing more than
    ``limit`` bytes knows the file is over its limit."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path}: not a regular file")
        return fh.read(limit + 1)


def read_input_bytes(path: str | Path) -> bytes:
    """The bytes of a regular input file, at most :func:`max_input_bytes` of them: a FIFO, a device (``/dev/zero``) or a
    directory is one :class:`DataFormatError` naming the path, never a hang or an unbounded read."""
    problem = input_file_problem(path)
    if problem is not None:
        raise DataFormatError(path, None, problem)
    limit = max_input_bytes()
    try:
        data = read_regular_bytes(path, limit)
    except OSError as exc:  # replaced between the check and the open
        raise DataFormatError(path, None, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise DataFormatError(path, None, f"is over the {limit / 1e9:.1f} GB limit on input files (IIT_MAX_INPUT_BYTES)")
    return data
