"""Errors that name exactly what is wrong, so a researcher can fix the input in one go."""

from __future__ import annotations

from pathlib import Path


class ImplicitItError(Exception):
    """Base class for every error this package raises on purpose."""


class UserError(ImplicitItError, ValueError):
    """Input a user can fix: an option value, a model/layer spec, a file's content, a config field.

    ``iit`` prints it as ONE line ``error: ...`` (exit 2) instead of a traceback; a plain ``ValueError`` is a bug and
    keeps its traceback. It stays a ``ValueError`` so that pydantic validators (which turn a ``ValueError`` into a
    ValidationError naming the field) and existing callers that catch ``ValueError`` keep working."""


class CannotProceed(ImplicitItError):
    """A situation the user resolves before the command can run: an output locked by another run or not writable, an
    engine or judge that is not there. Printed as one line like a :class:`UserError`, but not a ``ValueError``: code
    that catches bad values must not catch these."""


class DataFormatError(UserError):
    """A data file is malformed. The message names ``file:line`` and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(UserError):
    """A YAML config is invalid. The message names the file and each bad field."""


class ModelSpecError(UserError):
    """A model spec cannot be resolved to weights."""
