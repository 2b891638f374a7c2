"""Bad values are refused when the config is validated, naming the field, never after hours of work.

``iit config validate`` runs the whole check `iit run` makes before step 1: the schema (every value on its own),
the data files, the model spec, the rule constants and the study plan. The property test mutates valid configs at
random and checks that each either validates and plans, or is refused with one ConfigError naming the field."""

from __future__ import annotations

import copy
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.app.config import ExperimentConfig, parse_config
from implicit_it.app.pipeline import StudyPlan, validate_study
from implicit_it.errors import ConfigError
from tests.helpers import study_config_dict

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def study(tiny_llama_dir, shared_data) -> dict:
    return study_config_dict(tiny_llama_dir, shared_data)


@pytest.fixture(scope="module")
def demo(shared_data) -> dict:
    """configs/demo.yaml with its data paths pointing at this machine's shared data."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())

    def absolute(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: absolute(v) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("../shared/data/"):
            return str(shared_data / node.removeprefix("../shared/data/"))
        return node

    return absolute(data)


def _set(data: dict, path: str, value: Any) -> dict:
    data = copy.deepcopy(data)
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return data


def _validate_cli(tmp_path: Path, data: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return runner.invoke(app, ["config", "validate", str(path)])


def _one_error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


BAD_VALUES = [
    ("run.rank.layers", "garbage", "run.rank.layers"),
    ("run.probe.layers", "5-2", "reversed range"),
    ("run.diff.layers", "every:0", "run.diff.layers"),
    ("run.diff.vocab", "frequent:lots", "run.diff.vocab"),
    ("run.diff.vocab", "everything", "run.diff.vocab"),
    ("model.spec", "./no/such/model", "model.spec"),
    ("model.spec", "not a model spec!", "model.spec"),
    ("model.device", "banana", "model.device"),
    ("data.train", "/nonexistent/train.jsonl", "data.train"),
    ("data.train", "hub:nowhere", "data.train"),
    ("data.validation", "/nonexistent/val.json", "data.validation"),
    ("data.single_task", {"gsm": "/nonexistent/gsm.jsonl"}, "data.single_task.gsm"),
    ("run.rank.data", "/nonexistent/rank.json", "run.rank.data"),
    ("run.probe.data", "/nonexistent/probe.json", "run.probe.data"),
    ("run.diff.data", "/nonexistent/diff.json", "run.diff.data"),
    ("run.eval.ifeval_data", "/nonexistent/input_data.jsonl", "run.eval.ifeval_data"),
    ("run.generate.instructions", "/nonexistent/alpaca.json", "run.generate.instructions"),
    ("training.epochs", math.inf, "training.epochs"),
    ("training.learning_rate", math.nan, "training.learning_rate"),
    ("training.epochs_by_variant", {"response": math.inf}, "training.epochs_by_variant"),
    ("training.epoch_grid", [-1, 0], "training.epoch_grid"),
    ("training.epoch_grid", [5, 5], "training.epoch_grid"),
    ("run.seeds", [1, 1], "run.seeds"),
    ("seed", -1, "seed"),
    ("name", "../../../escape", "name"),
    ("name", "a/b", "name"),
    ("name", "..", "name"),
    ("name", "tab\there", "name"),
    ("run.eval.judge", "ftp://judge", "run.eval.judge"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_config_validate_refuses_each_bad_value_in_one_line_naming_the_field(study, tmp_path, field, value, named):
    data = _set(study, field, value)
    if field == "run.eval.judge":
        data = _set(data, "run.generate.instructions", study["run"]["rank"]["data"])
    line = _one_error_line(_validate_cli(tmp_path, data))
    assert named in line


def test_config_validate_accepts_the_shipped_configs_and_says_what_it_did_not_check(study, demo, tmp_path):
    res = _validate_cli(tmp_path, study)
    assert res.exit_code == 0 and "valid" in res.output, res.output
    res = _validate_cli(tmp_path, demo)
    assert res.exit_code == 0 and "valid" in res.output, res.output
    res = _validate_cli(tmp_path, _set(demo, "model.spec", "org/some-model"))
    assert res.exit_code == 0 and "note: model.spec 'org/some-model' is a hub id" in " ".join(res.output.split())


def test_a_data_path_that_is_a_directory_is_refused(study, tmp_path):
    line = _one_error_line(_validate_cli(tmp_path, _set(study, "data.train", str(tmp_path))))
    assert "data.train" in line and "is a directory" in line


def test_rule_constants_must_be_finite(study, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("eos_slope: .nan\n")
    line = _one_error_line(_validate_cli(tmp_path, _set(study, "run.diff.rules_config", str(rules))))
    assert "run.diff.rules_config" in line and "eos_slope" in line and "finite" in line


def test_iit_run_validates_the_whole_study_before_step_one(study, tmp_path):
    """A bad value a late stage reads (the rank data) stops `iit run` before training starts."""
    data = _set(study, "run.rank.data", str(tmp_path / "missing.json"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "-q"])
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "run.rank.data" in errors[0]
    assert not (tmp_path / "run" / "train").exists()


def test_sweep_grid_must_be_positive_and_distinct(study, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(study))
    res = runner.invoke(app, ["sweep", "-c", str(path), "-V", "response", "--epoch-grid", "-1,0", "--out", str(tmp_path / "s"), "-q"])
    assert "training.epoch_grid" in _one_error_line(res)
    res = runner.invoke(app, ["sweep", "-c", str(path), "-V", "response", "--epoch-grid", "5,5", "--out", str(tmp_path / "s"), "-q"])
    assert "training.epoch_grid" in _one_error_line(res) and "distinct" in _one_error_line(res)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- property test
FIXED = st.sampled_from(
    [
        "garbage",
        "",
        "../x",
        "5-2",
        "every:0",
        "frequent:0",
        "hub:nowhere",
        -1,
        -0.5,
        0,
        10**20,
        math.inf,
        -math.inf,
        math.nan,
        True,
        None,
        [],
        [1, 1],
        ["x"],
        {},
        {"x": 1},
    ]
)
GARBAGE = st.one_of(FIXED, st.integers(), st.floats(), st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a config (mappings and list items)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _mutate(data: dict, path: tuple, kind: str, value: Any) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    leaf = path[-1]
    if kind == "delete":
        del node[leaf]
    elif kind == "unknown_key":
        target = node[leaf] if isinstance(node[leaf], dict) else node
        if isinstance(target, dict):
            target["zz_not_a_field"] = value
        else:
            node[leaf] = value
    else:
        node[leaf] = value
    return data


def _names(path: tuple, kind: str) -> list[str]:
    """What an error about this mutation may name: the field or a field above it, or the unknown key."""
    keys = [str(k) for k in path if not isinstance(k, int)]
    return keys + (["zz_not_a_field"] if kind == "unknown_key" else [])


# A field another one contradicts (a variant removed from training.variants, still named in run.probe.systems)
FIELD = re.compile(r"(?:^|\s)(?:" + "|".join(ExperimentConfig.model_fields) + r")(?:\.[\w-]+)*: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_validate_and_plan_or_are_refused_naming_the_field(study, demo, data):
    base = data.draw(st.sampled_from([study, demo]), label="base")
    path = data.draw(st.sampled_from(_paths(base)), label="path")
    kind = data.draw(st.sampled_from(["value", "delete", "unknown_key"]), label="kind")
    value = data.draw(GARBAGE, label="value")
    mutated = _mutate(base, path, kind, value)
    try:
        validate_study(parse_config(mutated))
    except ConfigError as exc:
        message = str(exc)
        assert any(name in message for name in _names(path, kind)) or FIELD.search(message), (path, kind, value, message)
        return
    # accepted: validate_study has built the whole plan (nothing ran); a plan of its own builds too
    with tempfile.TemporaryDirectory() as tmp:
        assert StudyPlan(parse_config(mutated), Path(tmp) / "run").build()
