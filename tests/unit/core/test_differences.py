"""docs/fidelity.md's differences table is generated from implicit_it.differences, and every switch it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from implicit_it.app.config import ExperimentConfig
from implicit_it.differences import DIFFERENCES, differences_markdown

REPO = Path(__file__).resolve().parents[3]


def test_the_fidelity_pages_table_is_generated_from_the_registry():
    page = (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8")
    assert differences_markdown() in page
    res = subprocess.run([sys.executable, "scripts/render_differences.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _field_exists(path: str) -> bool:
    model: type[BaseModel] | None = ExperimentConfig
    for part in path.split("."):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


def test_every_difference_is_complete_and_its_switches_exist():
    keys = [d.key for d in DIFFERENCES]
    assert len(keys) == len(set(keys)) and len(keys) >= 5
    for d in DIFFERENCES:
        assert all(getattr(d, f).strip() for f in ("component", "paper", "default", "reason", "switch")), d.key
        for path in re.findall(r"\b(?:model|data|training|run)\.[a-z_0-9]+(?:\.[a-z_0-9]+)*", d.switch + " " + d.default):
            assert _field_exists(path), f"{d.key}: {path} is not a config field"
