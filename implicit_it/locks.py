"""One writer per directory: an exclusive lock file ``DIR/.iit.lock``.

Two ``iit run`` (or ``iit train``) on one directory would both re-run steps and delete each
other's step folders. :func:`directory_lock` takes an exclusive ``fcntl.flock`` on
``DIR/.iit.lock`` and writes its owner (pid, host, start time, command) into the file. The
kernel drops a flock when its process dies (``kill -9`` included), so a lock file left behind by
a dead run holds no lock and is simply taken over. Where the file system has no flock (some
network or FUSE mounts) the lock is the file's exclusive creation instead: a file left by a dead
process of this host is taken over, one from another host is reported with its host and age
(remove it by hand once that run is gone).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import CannotProceed
from .io import read_regular_bytes

LOCK_NAME = ".iit.lock"

log = logging.getLogger(__name__)

# flock is not available on this file system: fall back to exclusive creation
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class DirectoryLocked(CannotProceed):
    """Another process holds the directory's lock; the message names it and the lock file."""


@dataclass(frozen=True)
class LockOwner:
    """What a lock file says about the process that holds (or held) it."""

    pid: int | None = None
    host: str | None = None
    started: float | None = None
    command: str | None = None

    @classmethod
    def read(cls, path: str | Path) -> "LockOwner":
        try:  # never through a link, never blocking on a FIFO, never more than a lock record's size
            data = json.loads(read_regular_bytes(path, 1 << 16, follow_links=False))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        pid, started = data.get("pid"), data.get("started")
        return cls(
            pid=pid if isinstance(pid, int) else None,
            host=data.get("host") if isinstance(data.get("host"), str) else None,
            started=float(started) if isinstance(started, (int, float)) else None,
            command=data.get("command") if isinstance(data.get("command"), str) else None,
        )

    @classmethod
    def me(cls) -> "LockOwner":
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.time(), command=" ".join(sys.argv) or None)

    def describe(self) -> str:
        """``pid 123 on host h, started 4 min ago (iit run ...)``, with what is known."""
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if self.host:
            who += f" on host {self.host}"
        if self.started is not None:
            who += f", started {_age(time.time() - self.started)} ago"
        if self.command:
            who += f" ({self.command[:80]})"
        return who

    def is_dead_here(self) -> bool:
        """The owner ran on this host and its process no longer exists."""
        return self.host == socket.gethostname() and self.pid is not None and not pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _held(directory: Path, path: Path, owner: LockOwner, what: str) -> DirectoryLocked:
    return DirectoryLocked(
        f"{directory} is in use by another {what}: {owner.describe()}; lock file {path}. "
        "Wait for it to finish (or stop it), or use another directory."
    )


def _record(owner: LockOwner, what: str) -> bytes:
    data: dict[str, Any] = {"pid": owner.pid, "host": owner.host, "started": owner.started, "command": owner.command, "what": what}
    return (json.dumps(data) + "\n").encode()


def _write_record(fd: int, owner: LockOwner, what: str) -> None:
    """The owner's record (informational: the flock is the lock); a full disk must not stop the run here."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record(owner, what), 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


@dataclass
class DirectoryLock:
    """A held lock: ``release()`` removes the lock file and drops the lock."""

    directory: Path
    path: Path
    fd: int | None  # the flocked file; None for the exclusive-creation fallback
    previous: LockOwner | None = None  # the owner of a stale lock file this one took over
    created_directory: bool = False

    def release(self) -> None:
        try:
            if self.fd is not None:
                try:
                    if os.path.samestat(os.fstat(self.fd), os.lstat(self.path)):
                        os.unlink(self.path)  # while still holding the flock: a waiter re-checks the path
                except FileNotFoundError:
                    pass
                os.close(self.fd)
                self.fd = None
            elif LockOwner.read(self.path).pid == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            if self.created_directory:
                try:
                    self.directory.rmdir()  # only if it stayed empty (a run that refused before writing anything)
                except OSError:
                    pass


def acquire(directory: str | Path, *, what: str = "run") -> DirectoryLock:
    """Take ``DIRECTORY/.iit.lock`` or raise :class:`DirectoryLocked` naming the owner (pid, host, age) and the file."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory (a run needs a directory here)", str(directory))
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    me = LockOwner.me()
    try:
        lock = _acquire_flock(directory, path, me, what)
        if lock is None:
            lock = _acquire_exclusive(directory, path, me, what)
    except BaseException:
        if created:
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
    lock.created_directory = created
    if lock.previous is not None and lock.previous.pid is not None:
        log.warning("%s: took over the lock left by %s (no longer running)", directory, lock.previous.describe())
    return lock


@contextmanager
def directory_lock(directory: str | Path, *, what: str = "run") -> Iterator[DirectoryLock]:
    """Hold ``DIRECTORY/.iit.lock`` for the block; released on success, on an exception and (by the kernel) on a kill."""
    lock = acquire(directory, what=what)
    try:
        yield lock
    finally:
        lock.release()


class UnsafeLockFile(CannotProceed):
    """The lock file is a link, not a regular file, or another user's: it is never written through."""


def _open_lock(directory: Path, path: Path, flags: int) -> int:
    """Open the lock file without following a link, and only if it is a regular file of this user."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeLockFile(
                f"{path}: the lock file is a symbolic link (to {os.readlink(path)!r}); implicit-it will not write "
                f"through it. Remove the link, then run again"
            ) from None
        if exc.errno in (errno.ENXIO, errno.EWOULDBLOCK, errno.EISDIR):  # a FIFO with no writer, a directory
            raise UnsafeLockFile(f"{path}: the lock file is not a regular file; remove it, then run again") from None
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {st.st_uid})"
    if problem:
        os.close(fd)
        raise UnsafeLockFile(f"{path}: the lock file {problem}; implicit-it will not use it. Remove it, then run again")
    return fd


def _acquire_flock(directory: Path, path: Path, me: LockOwner, what: str) -> DirectoryLock | None:
    import fcntl

    for _ in range(20):
        fd = _open_lock(directory, path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _held(directory, path, LockOwner.read(path), what) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                return None
            raise
        try:  # the file we locked must still be the one at the path (a releasing owner unlinks it first)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = LockOwner.read(path)
        _write_record(fd, me, what)
        return DirectoryLock(directory, path, fd, previous=previous if previous.pid is not None else None)
    raise DirectoryLocked(f"{directory}: could not take the lock file {path} (it kept being replaced); try again")


def _acquire_exclusive(directory: Path, path: Path, me: LockOwner, what: str) -> DirectoryLock:
    previous: LockOwner | None = None
    for _ in range(5):
        try:
            fd = _open_lock(directory, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            if path.is_symlink() or not path.is_file():
                _open_lock(directory, path, os.O_RDONLY)  # raises UnsafeLockFile naming what the path is
            owner = LockOwner.read(path)
            if not owner.is_dead_here():
                raise _held(directory, path, owner, what) from None
            # a dead process of this host: move its file aside (one rename wins) and try again
            aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            previous = owner
            continue
        try:
            os.write(fd, _record(me, what))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
        os.close(fd)
        return DirectoryLock(directory, path, None, previous=previous)
    raise DirectoryLocked(f"{directory}: could not take the lock file {path}; try again")
