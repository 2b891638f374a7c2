"""A step's key covers the code version (issue 32): an edit of the package's source re-runs every step, and
``step.json`` names the code that wrote it."""

from __future__ import annotations

import json

import implicit_it.app.pipeline.steps as steps
from implicit_it.app.pipeline.steps import STEP_FILE, Step
from implicit_it.manifest import code_version

OTHER_CODE = {"package_version": "0.1.0", "source_sha256": "0123456789abcdef", "files": 1}


def _steps(tmp_path):
    train = Step("train", "response.s0", {"epochs": 1}, lambda s: {}, tmp_path / "train" / "response.s0")
    evaluate = Step("eval", "ifsuite", {"v": 1}, lambda s: {}, tmp_path / "eval" / "ifsuite", inputs=[train])
    return train, evaluate


def test_the_key_changes_with_the_code_version_and_only_with_it(tmp_path, monkeypatch):
    train, evaluate = _steps(tmp_path)
    again = _steps(tmp_path)
    assert (again[0].key, again[1].key) == (train.key, evaluate.key)  # stable while the code is the same

    monkeypatch.setattr(steps, "code_version", lambda: OTHER_CODE)
    edited = _steps(tmp_path)
    assert edited[0].key != train.key and edited[1].key != evaluate.key
    assert _steps(tmp_path)[1].key == edited[1].key


def test_step_json_records_the_code_and_a_code_change_unfinishes_the_step(tmp_path, monkeypatch):
    train, _ = _steps(tmp_path)
    train.begin()
    train.finish({"loss": 1.0}, 0.5)
    record = json.loads((train.dir / STEP_FILE).read_text())
    assert record["code"] == code_version() and record["key"] == train.key
    assert _steps(tmp_path)[0].finished() == record

    monkeypatch.setattr(steps, "code_version", lambda: OTHER_CODE)
    assert _steps(tmp_path)[0].finished() is None
