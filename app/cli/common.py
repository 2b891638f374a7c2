"""What every ``iit`` subcommand shares: the stderr console, the one error path, file slugs.

User errors (a bad config, a missing file, an invalid option value) end a command with ONE line
``error: ...`` on stderr and exit status 2 (:func:`user_errors`); anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from implicit_it.errors import ImplicitItError

console = Console(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (
    ImplicitItError,
    ValueError,  # pydantic's ValidationError is one
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

F = TypeVar("F", bound=Callable[..., Any])


def error_message(exc: BaseException) -> str:
    """The one line a user error prints: pydantic's errors name the field, the rest say what they say."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def fail(exc: BaseException | str) -> NoReturn:
    """Print ``error: MESSAGE`` (the message's own brackets printed literally) and exit with status 2."""
    message = exc if isinstance(exc, str) else error_message(exc)
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def user_errors(func: F) -> F:
    """Run a command; a user error (:data:`USER_ERRORS`) becomes :func:`fail`, any other exception propagates (a bug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


def naming(label: str, exc: BaseException) -> ValueError:
    """``exc`` as a user error whose message starts with ``label`` (which model, which variant failed)."""
    return ValueError(f"{label}: {error_message(exc)}")


def command_line() -> str:
    return " ".join(["iit"] + sys.argv[1:])


def slug(spec: str, default: str) -> str:
    """A file name for a model spec (paths and hub ids flattened)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or default
