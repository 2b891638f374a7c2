"""``iit report`` reads a run folder it did not write with its own eyes (issue 34).

Before the fix: a ``step.json`` with ``meta: "x"`` or ``seed: "zero"`` was a traceback, a truncated ``outputs.json`` was
reported without its file name; in report.md the run folder's name landed as raw HTML, ``![](http://…)`` images (fetched
when the file is viewed) and ``[x](javascript:…)`` links in model text stayed live, and ANSI escapes and RTL overrides
passed through.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from tests.reliability.runs import one_error_line
from tests.reliability.test_cli_errors import _fake_run

runner = CliRunner()


@pytest.mark.parametrize("field, value", [("meta", "x"), ("seed", "zero"), ("summary", [1]), ("stage", 5)])
def test_a_hand_edited_step_record_is_one_error_naming_the_file(field, value, tmp_path):
    run = _fake_run(tmp_path / "run", "Hello.")
    step = run / "generate" / "ifsuite" / "base" / "step.json"
    record = json.loads(step.read_text())
    if field == "seed":
        record["meta"]["seed"] = value
    else:
        record[field] = value
    step.write_text(json.dumps(record))
    line = one_error_line(runner.invoke(app, ["report", str(run)]))
    assert str(step) in line and "not a step record" in line


def test_a_truncated_outputs_file_is_named(tmp_path):
    run = _fake_run(tmp_path / "run", "Hello.")
    outputs = run / "generate" / "ifsuite" / "base" / "outputs.json"
    outputs.write_text(outputs.read_text()[:20])  # a full disk or a kill mid-copy
    line = one_error_line(runner.invoke(app, ["report", str(run)]))
    assert str(outputs) in line and "not valid JSON" in line


def test_report_md_makes_no_link_image_or_html_from_text_it_did_not_write(tmp_path):
    from implicit_it.reports import write_report

    text = "![](http://tracker.example/p.png) [click](javascript:alert(1)) \x1b[31mred\x1b[0m \u202egnp.exe"
    run = _fake_run(tmp_path / "<img src=x onerror=alert(1)>", text)
    paths = write_report(run)
    md = paths["markdown"].read_text()
    assert "<img" not in md and not re.search(r"(?<!\\)\]\(", md)  # no unescaped "](": no link, no image
    assert "\x1b" not in md and "\u202e" not in md
    assert "[click\\](" in md and "\\\\u001b" in md and "\\\\u202e" in md  # shown, as text
    html = paths["html"].read_text()
    assert "\x1b" not in html and "\u202e" not in html and "<img src=x" not in html
