"""The ``iit`` command line: thin commands over the rooms' stage functions."""

from .main import app, main

__all__ = ["app", "main"]
