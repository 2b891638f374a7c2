"""User mistakes end a command with one line ``error: ...`` (exit 2) naming what to fix, before the work they would spoil:
a directory given for a file, an output that cannot be written, a reversed layer range, a prompt longer than the
model's context, non-finite rule constants. Model text is escaped in report.md, and an API key about to travel in
clear text to a judge is refused unless the user opts in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from implicit_it.app.cli import app
from tests.helpers import study_config_dict
from tests.reliability.runs import one_error_line

runner = CliRunner()


def _commands(folder: Path, tmp_path: Path, tiny: Path, shared: Path, instructions: Path) -> dict[str, list[str]]:
    ranking = str(shared / "lima" / "val_reference_gpt35.json")
    return {
        "config validate": ["config", "validate", str(folder)],
        "run": ["run", str(folder), "--out", str(tmp_path / "run")],
        "rules --rules-config": ["rules", "-m", str(tiny), "--rules-config", str(folder)],
        "generate --instructions": ["generate", "-m", str(tiny), "--instructions", str(folder), "--out", str(tmp_path / "o.json")],
        "rank --data": ["rank", "-m", str(tiny), "--data", str(folder), "--out", str(tmp_path / "r")],
        "generate --rules-config": [
            "generate",
            "-m",
            str(tiny),
            "-i",
            str(instructions),
            "--rules-config",
            str(folder),
            "--out",
            str(tmp_path / "o.json"),
        ],
        "probe --config": ["probe", "-m", str(tiny), "--data", ranking, "--config", str(folder), "--out", str(tmp_path / "p")],
    }


COMMANDS = [
    "config validate",
    "run",
    "rules --rules-config",
    "generate --instructions",
    "rank --data",
    "generate --rules-config",
    "probe --config",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_directory_where_a_file_is_expected_is_one_line_naming_it(
    command, tmp_path, tiny_llama_dir, shared_data, instructions, no_model_loads
):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = _commands(folder, tmp_path, tiny_llama_dir, shared_data, instructions)[command]
    line = one_error_line(runner.invoke(app, args))
    assert str(folder) in line and "directory" in line.lower()


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_an_unwritable_output_is_refused_before_the_model_loads(where, tmp_path, tiny_llama_dir, instructions, no_model_loads):
    a_file = tmp_path / "somefile.txt"
    a_file.write_text("not a folder")
    out = a_file / "out.json" if where == "under-a-file" else Path("/proc/iit-out.json")
    res = runner.invoke(app, ["generate", "-m", str(tiny_llama_dir), "-i", str(instructions), "--out", str(out), "-q"])
    line = one_error_line(res)
    assert str(out) in line and "cannot be written" in line


def test_an_unwritable_output_directory_is_refused_before_ranking(tmp_path, tiny_llama_dir, shared_data, no_model_loads):
    a_file = tmp_path / "somefile.txt"
    a_file.write_text("not a folder")
    data = str(shared_data / "lima" / "val_reference_gpt35.json")
    res = runner.invoke(app, ["rank", "-m", str(tiny_llama_dir), "-d", data, "--out", str(a_file / "r"), "-q"])
    assert "cannot be written" in one_error_line(res)


def test_a_reversed_layer_range_is_one_error_before_any_result(tmp_path, tiny_llama_dir, shared_data, no_model_loads):
    data = str(shared_data / "lima" / "val_reference_gpt35.json")
    out = tmp_path / "r"
    args = ["rank", "-m", str(tiny_llama_dir), "-d", data, "--layers", "2-1", "--instructions", "4", "--negatives", "1", "--out", str(out)]
    line = one_error_line(runner.invoke(app, [*args, "-q"]))
    assert "--layers" in line and "reversed range" in line and "2-1" in line
    assert not out.exists()  # no partial result


def test_parse_layers_refuses_a_reversed_range_and_checks_syntax_without_a_model():
    from implicit_it.lens import check_layer_spec, parse_layers

    with pytest.raises(ValueError, match="reversed range"):
        parse_layers("5-2", 10)
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("0-99999999999", 10)  # checked before the range is built
    assert check_layer_spec("0,4,8-12") == "0,4,8-12"
    with pytest.raises(ValueError, match="reversed range"):
        check_layer_spec("3,9-7")


@pytest.fixture
def short_context_model(tiny_llama_dir, tmp_path) -> Path:
    model = tmp_path / "short-context"
    shutil.copytree(tiny_llama_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_a_prompt_longer_than_the_context_is_refused_before_generating(short_context_model, tmp_path, monkeypatch):
    from transformers import GenerationMixin

    def no_generate(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(GenerationMixin, "generate", no_generate)
    instructions = tmp_path / "long.json"
    instructions.write_text(json.dumps([{"instruction": "Hi."}, {"instruction": "word " * 200}]))
    out = tmp_path / "o.json"
    res = runner.invoke(app, ["generate", "-m", str(short_context_model), "-i", str(instructions), "--out", str(out), "-q"])
    line = one_error_line(res)
    assert "context of 64 tokens" in line and "#1" in line
    assert not out.exists()


def test_non_finite_rule_constants_are_refused(tmp_path, tiny_llama_dir, instructions, no_model_loads):
    from implicit_it.rules import RuleConfig

    rules = tmp_path / "rules.yaml"
    for text in ("eos_slope: .nan\n", "diversity_penalty: .inf\n", "uniform: [{text: x, score: .nan}]\n"):
        rules.write_text(text)
        res = runner.invoke(
            app,
            [
                "generate",
                "-m",
                str(tiny_llama_dir),
                "-i",
                str(instructions),
                "--rules-config",
                str(rules),
                "--out",
                str(tmp_path / "o.json"),
            ],
        )
        assert "finite" in one_error_line(res)
    with pytest.raises(ValueError, match="finite"):
        RuleConfig(eos_slope=float("nan"))


def _fake_run(run_dir: Path, output: str) -> Path:
    step = run_dir / "generate" / "ifsuite" / "base"
    step.mkdir(parents=True)
    meta = {"system": "base", "kind": "base", "label": "base", "seed": None, "rules": [], "set": "ifsuite"}
    (step / "step.json").write_text(json.dumps({"stage": "generate", "name": "ifsuite/base", "meta": meta, "summary": {}}))
    record = {"instruction": "Say <b>hi</b> | twice", "output": output, "generator": "base", "dataset": "ifsuite", "ended_with_eos": True}
    (step / "outputs.json").write_text(json.dumps([record]))
    return run_dir


def test_report_md_escapes_model_text(tmp_path):
    from implicit_it.reports import write_report

    run_dir = _fake_run(tmp_path / "run", "<script>alert('x')</script> a|b & <img src=x onerror=alert(1)>")
    paths = write_report(run_dir)
    md = paths["markdown"].read_text()
    assert "<script>" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;alert('x')&lt;/script&gt; a\\|b &amp; &lt;img" in md
    assert "Say &lt;b&gt;hi&lt;/b&gt; \\| twice" in md
    html = paths["html"].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html  # the HTML report escapes too


def test_an_api_key_is_never_sent_to_a_plain_http_judge_unless_the_user_opts_in(tmp_path, monkeypatch, capsys):
    """Issue 34: a warning was not enough (the key still went out); now it is a refusal, before any work."""
    from implicit_it.evaluation import parse_judge
    from implicit_it.evaluation.judges import KeyInClear

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    url = "http://judge.example.org:8000/v1"
    with pytest.raises(KeyInClear, match=r"unencrypted.*IIT_ALLOW_PLAIN_HTTP_KEY=1"):
        parse_judge(url, "some-model")
    for fine in ("http://localhost:8000/v1", "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1", "https://judge.example.org/v1"):
        parse_judge(fine, "some-model").write_config(tmp_path / "c")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("IIT_ALLOW_PLAIN_HTTP_KEY", "1")  # the user's explicit choice: sent, with one warning
    judge = parse_judge(url, "some-model")
    judge.write_config(tmp_path / "a")
    judge.write_config(tmp_path / "b")
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and url in err and "unencrypted" in err
    monkeypatch.delenv("IIT_ALLOW_PLAIN_HTTP_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    parse_judge("http://other.example.org/v1", "m").write_config(tmp_path / "d")  # no key, nothing to leak
    assert capsys.readouterr().err == ""


def test_the_cli_refuses_a_plain_http_judge_with_a_key_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = ["--outputs", str(tmp_path / "o.json"), "--reference", str(tmp_path / "r.json"), "--out", str(tmp_path / "a")]
    res = runner.invoke(app, ["eval", "alpaca", *args, "--judge", "http://judge.example.org/v1"])
    line = one_error_line(res)
    assert "IIT_ALLOW_PLAIN_HTTP_KEY" in line and not (tmp_path / "a").exists()


def test_run_uses_a_validated_name_for_its_directory(tmp_path, tiny_llama_dir, shared_data, monkeypatch):
    data = study_config_dict(tiny_llama_dir, shared_data) | {"name": "../../escape"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # runs/study/<name> by default
    line = one_error_line(runner.invoke(app, ["run", str(path)]))
    assert "name" in line and "not a safe name" in line
