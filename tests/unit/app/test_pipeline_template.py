"""The pipeline's template steps: opt-in, one per selected system, keyed by their block; the report shows them generically."""

from __future__ import annotations

import pytest

from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import StudyPlan
from tests.helpers import study_config_dict


def _steps(data, run_dir):
    return {s.id: s for s in StudyPlan(parse_config(data), run_dir).build()}


def test_template_steps_are_opt_in_keyed_and_reported(tiny_llama_dir, shared_data, tmp_path):
    from implicit_it.reports.collect import read_run
    from implicit_it.reports.sections import generic_sections

    data = study_config_dict(tiny_llama_dir, shared_data)
    assert not any(sid.startswith("template/") for sid in _steps(data, tmp_path / "run"))  # off by default
    data["run"]["template"] = {"enabled": True, "systems": ["base", "response"], "n": 3, "max_new_tokens": 5, "embedder": None}
    steps = _steps(data, tmp_path / "run")
    assert {sid for sid in steps if sid.startswith("template/")} == {"template/base", "template/response.s0"}
    data["run"]["template"]["temperature"] = 0.7
    changed = {sid for sid, s in _steps(data, tmp_path / "run").items() if s.key != steps[sid].key}
    assert changed == {"template/base", "template/response.s0", "report/report"}
    data["run"]["template"]["systems"] = ["nope"]
    with pytest.raises(ValueError, match="run.template.systems"):
        _steps(data, tmp_path / "run")

    step = steps["template/base"]  # the base needs no training: run this one step alone
    assert not step.begin()  # a fresh step, not a resumed one
    summary = step.run(step)
    step.finish(summary, 0.1)
    assert summary["n"] == 3 and 0 <= summary["instruction_like"]["fraction"] <= 1
    sections = [s for s in generic_sections(read_run(tmp_path / "run")) if "template" in s.id]
    assert len(sections) == 1 and sections[0].tables[0].rows[0][0] == "base"
