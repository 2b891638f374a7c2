"""What every ``iit`` subcommand shares: the stderr console, the one error path, file slugs.

User errors (:data:`USER_ERRORS`: a bad config, a missing file, an invalid option value, a locked or unwritable
output) end a command with ONE line ``error: ...`` on stderr and exit status 2 (:func:`user_errors`); anything else,
a plain ``ValueError`` included, is a bug and keeps its traceback. Code that rejects what a user gave raises
:class:`~implicit_it.errors.UserError` (a ``ValueError`` too, so pydantic validators and callers that catch
``ValueError`` keep working)."""

from __future__ import annotations

import contextlib
import errno
import functools
import re
import sys
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from implicit_it.errors import CannotProceed, UserError

console = Console(stderr=True)


class VERBOSE:
    """``iit --verbose``: set by the app's callback; user errors then keep their traceback as well."""

    on = False


# What a user can fix, printed as one line. Not ValueError as a whole (a bug raises it too), nor ImplicitItError as a
# whole: StageFailed wraps whatever a step raised, bugs included (`iit run` reports it itself).
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,  # bad input: ConfigError, DataFormatError, ModelSpecError, ...
    CannotProceed,  # what the user changes to go on: a locked or unwritable output, an engine or judge that is not there
    ValidationError,  # pydantic's, naming the field
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

F = TypeVar("F", bound=Callable[..., Any])

# Options that many commands share: declared once.
FORMAT_OPTION = typer.Option("tulu", "--format", "-f", help="Chat format: tulu (the paper's), native (instruct models' own template), ...")
RULES_OPTION = typer.Option(
    None,
    "--rules",
    help="Combine the model with the paper's rule adapter: 'all' (= eos,uniform,diversity), "
    "or any subset of eos,uniform,diversity,start. Off by default.",
)
RULES_CONFIG_OPTION = typer.Option(None, "--rules-config", help="YAML with rule constants (see configs/rules/paper.yaml).")
DTYPE_OPTION = typer.Option(None, "--dtype", help="float32 / bfloat16 (default: fp32 on CPU, bf16 on GPU).")
DEVICE_OPTION = typer.Option(None, "--device", help="cpu / cuda (default: cuda if available).")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bar.")
OUT_DIR_OPTION = typer.Option(..., "--out", "-o", help="Output directory.")
BASE_OPTION = typer.Option("gemma-3-270m", "--base", "-b", help="Base model SPEC.")
VARIANTS_OPTION = typer.Option(
    ...,
    "--variant",
    "-V",
    help="Variant SPEC (an HF directory, e.g. runs/study/demo/train/response.s0, or a LoRA adapter directory); repeat for several.",
)


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
            if VERBOSE.on:  # `iit -v`: the traceback too (where in the code the input was rejected)
                raise
            fail(exc)
        except OSError as exc:  # the machine's, not the program's: a full disk, a read-only file system
            if exc.errno not in DISK_ERRNOS or VERBOSE.on:
                raise
            hint = "nothing was left half-written; free space or choose another --out, then run again"
            fail(f"{exc.filename or 'output'}: {exc.strerror} ({hint})")

    return wrapper  # type: ignore[return-value]


def naming(label: str, exc: BaseException) -> UserError:
    """``exc`` as a user error whose message starts with ``label`` (which model, which variant failed)."""
    return UserError(f"{label}: {error_message(exc)}")


@contextlib.contextmanager
def per_variant(spec: str, quiet: bool) -> Iterator[Callable[[str, int], Any]]:
    """One variant's work in a multi-variant command: yields a progress-bar factory whose bars live as long as this
    block, and re-raises a user error as one naming ``spec``."""
    from implicit_it.generation import progress_bar

    try:
        with contextlib.ExitStack() as stack:
            yield lambda label, total: stack.enter_context(progress_bar(total, not quiet, label))
    except USER_ERRORS as exc:
        raise naming(spec, exc) from exc


def command_line() -> str:
    return " ".join(["iit"] + sys.argv[1:])


def slug(spec: str, default: str) -> str:
    """A file name for a model spec (paths and hub ids flattened)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or default
