"""What every ``iit`` subcommand shares: the stderr console, the one-line error exit, file slugs."""

from __future__ import annotations

import re

import typer
from rich.console import Console

console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    """Print one clear error line and exit with status 2."""
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def _slug(spec: str, default: str) -> str:
    """A file name for a model spec (paths and hub ids flattened)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or default
