"""docs/config-reference.md is generated from the configs, and every option it names is one its command takes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import typer

from implicit_it.app.cli.main import app
from implicit_it.app.cli.reference import config_reference_markdown

REPO = Path(__file__).resolve().parents[3]


def _params(path: str) -> set[str]:
    command = typer.main.get_command(app)
    for part in path.split():
        command = command.commands[part]
    return {opt for p in command.params for opt in p.opts}


def test_the_config_reference_is_generated_and_current():
    page = config_reference_markdown()
    assert "## `run.diff`" in page and "| `analysis_options` |" in page and "| `learning_rate` |" in page
    res = subprocess.run([sys.executable, "scripts/render_config_reference.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_option_the_reference_names_exists_under_the_fields_name():
    named = re.findall(r"(iit [a-z ]+?(?: / iit [a-z]+)?) `(--[a-z-]+)`", config_reference_markdown())
    assert len(named) > 80
    for commands, flag in named:
        for command in commands.split(" / "):
            assert flag in _params(command.removeprefix("iit ")), (command, flag)
