"""Errors that name exactly what is wrong, so a researcher can fix the input in one go."""

from __future__ import annotations

from pathlib import Path


class ImplicitItError(Exception):
    """Base class for every error this package raises on purpose."""


class DataFormatError(ImplicitItError, ValueError):
    """A data file is malformed. The message names ``file:line`` and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(ImplicitItError, ValueError):
    """A YAML config is invalid. The message names the file and each bad field."""


class ModelSpecError(ImplicitItError, ValueError):
    """A model spec cannot be resolved to weights."""
