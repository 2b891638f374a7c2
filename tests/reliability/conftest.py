"""Fixtures of the reliability tier: a model load that fails the test, a one-instruction file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import implicit_it.models as models


@pytest.fixture
def no_model_loads(monkeypatch):
    """A command that loads a model fails the test: the error must come before any model work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)


@pytest.fixture
def instructions(tmp_path) -> Path:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps([{"instruction": "Name three colours."}]))
    return path
