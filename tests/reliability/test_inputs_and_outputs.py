"""Every input checked before the first expensive step, every output target before any work (issue 34).

Before the fix: ``-i`` a FIFO hung, ``/dev/zero`` was read without bound (MemoryError), special files were reported as
"file not found"; IFEval data with a wrong type (``num_words: "many"``, ``key: null``, ``kwargs: [5]``) crashed with a
TypeError traceback after generation (in ``iit mech``, after 54 s of analysis, writing nothing); a ``generator`` that is
a dict was a traceback; ``--max-new-tokens`` beyond the context decoded past it silently (10**12 ran until killed);
``--seed -1`` was named only after the model loaded, without the option's name; a layer range beyond the model passed
``iit config validate`` and failed at ``rank/base`` after training and generation; ``iit generate --out`` on a disk that
filled up lost the generation in an ``Errno 28`` traceback; and ``iit report --out`` checked its target not at all.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import implicit_it.models as models
from implicit_it.app.cli import app
from tests.helpers import study_config_dict
from tests.reliability.runs import one_error_line

runner = CliRunner()


# ---- special files: named for what they are, never hung on, never read without bound ------------------------------
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-null-dir"])
def test_a_special_file_as_input_is_named_for_what_it_is_without_hanging(kind, tmp_path, tiny_llama_dir, no_model_loads):
    if kind == "fifo":
        path, what = tmp_path / "pipe", "FIFO"
        os.mkfifo(path)
    elif kind == "dev-zero":
        path, what = Path("/dev/zero"), "character device"
    else:
        path, what = tmp_path, "directory"
    res = runner.invoke(app, ["generate", "-m", str(tiny_llama_dir), "-i", str(path), "--out", str(tmp_path / "o.json"), "-q"])
    line = one_error_line(res)
    assert str(path) in line and what in line and "not found" not in line


def test_a_special_file_in_a_config_is_named_by_iit_config_validate(tmp_path, tiny_llama_dir, shared_data):
    os.mkfifo(tmp_path / "train.jsonl")
    data = study_config_dict(tiny_llama_dir, shared_data)
    data["data"]["train"] = str(tmp_path / "train.jsonl")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["config", "validate", str(config)])
    assert res.exit_code == 2 and "data.train" in res.output and "FIFO" in res.output and "not found" not in res.output


def test_an_input_over_the_size_limit_is_refused_not_read(tmp_path, monkeypatch):
    from implicit_it.data import read_instructions
    from implicit_it.errors import DataFormatError

    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"instruction": "x" * 5000}) + "\n")
    monkeypatch.setenv("IIT_MAX_INPUT_BYTES", "1000")
    with pytest.raises(DataFormatError, match=r"big\.jsonl: is .* over the .* limit .*IIT_MAX_INPUT_BYTES"):
        read_instructions(path)


# ---- wrong types in the data: one line naming file and line, before any model work ----------------------------------
IFEVAL_OK = {
    "key": 1000,
    "prompt": "Write 300+ words.",
    "instruction_id_list": ["length_constraints:number_words"],
    "kwargs": [{"relation": "at least", "num_words": 300}],
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kwargs": [{"relation": "at least", "num_words": "many"}]}, "length_constraints:number_words"),
        ({"key": None}, "key must be an integer"),
        ({"kwargs": [5]}, "kwargs must hold one JSON object"),
    ],
)
def test_ifeval_data_with_a_wrong_type_is_one_error_naming_the_line(change, message, tmp_path, tiny_llama_dir, no_model_loads):
    data = tmp_path / "ifeval.jsonl"
    data.write_text(json.dumps(IFEVAL_OK) + "\n" + json.dumps({**IFEVAL_OK, **change}) + "\n")
    res = runner.invoke(
        app, ["eval", "ifeval", "--model", str(tiny_llama_dir), "--ifeval-data", str(data), "--out", str(tmp_path / "e"), "-q"]
    )
    line = one_error_line(res)
    assert f"{data}:2" in line and message in line


def test_iit_mech_checks_its_ifeval_data_before_any_analysis(tmp_path, tiny_llama_dir, shared_data, no_model_loads):
    data = tmp_path / "ifeval.jsonl"
    data.write_text(json.dumps({**IFEVAL_OK, "kwargs": [{"relation": "at least", "num_words": "many"}]}) + "\n")
    texts = str(shared_data / "lima" / "val_reference_gpt35.json")
    args = ["mech", "--base", str(tiny_llama_dir), "--variant", str(tiny_llama_dir), "--data", texts, "--behaviour-data", str(data)]
    res = runner.invoke(app, [*args, "--analyses", "steering", "--out", str(tmp_path / "m"), "-q"])
    assert f"{data}:1" in one_error_line(res)


def test_iit_run_checks_ifeval_data_before_step_one(tmp_path, tiny_llama_dir, shared_data):
    data = tmp_path / "ifeval.jsonl"
    data.write_text(json.dumps({**IFEVAL_OK, "key": None}) + "\n")
    study = study_config_dict(tiny_llama_dir, shared_data)
    study["run"]["eval"].update(ifeval=True, ifeval_data=str(data))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    res = runner.invoke(app, ["config", "validate", str(config)])
    assert res.exit_code == 2 and "run.eval.ifeval_data" in res.output and f"{data}:1" in res.output


def test_a_generator_that_is_not_a_string_is_one_error(tmp_path):
    outputs = tmp_path / "o.json"
    outputs.write_text(json.dumps([{"instruction": "Hi.", "output": "Hello.", "generator": {"name": "x"}}]))
    res = runner.invoke(app, ["eval", "ifsuite", "--outputs", str(outputs), "--out", str(tmp_path / "e")])
    line = one_error_line(res)
    assert str(outputs) in line and "'generator' must be a string" in line


# ---- options out of range: named by the option, before the model loads ----------------------------------------------
def test_a_negative_seed_is_named_before_the_model_loads(tmp_path, tiny_llama_dir, shared_data, no_model_loads):
    data = str(shared_data / "lima" / "val_reference_gpt35.json")
    res = runner.invoke(app, ["rank", "-m", str(tiny_llama_dir), "-d", data, "--seed", "-1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--seed" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("budget", ["600", str(10**12)])
def test_a_token_budget_beyond_the_context_is_refused_before_decoding(budget, tmp_path, tiny_llama_dir, instructions, monkeypatch):
    from transformers import GenerationMixin

    monkeypatch.setattr(GenerationMixin, "generate", lambda *a, **k: pytest.fail("generation started"))
    out = tmp_path / "o.json"
    args = ["generate", "-m", str(tiny_llama_dir), "-i", str(instructions), "--max-new-tokens", budget, "--out", str(out), "-q"]
    line = one_error_line(runner.invoke(app, args))
    assert f"max_new_tokens {budget}" in line and "context of 512 tokens" in line and not out.exists()


def test_a_layer_range_beyond_the_model_fails_config_validate(tmp_path, tiny_llama_dir, shared_data):
    study = study_config_dict(tiny_llama_dir, shared_data)
    study["run"]["rank"]["layers"] = "0-99"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    res = runner.invoke(app, ["config", "validate", str(config)])
    assert res.exit_code == 2 and "run.rank.layers" in res.output and "0 (embeddings) to 2" in res.output


def test_model_depth_is_read_without_loading_weights(tiny_llama_dir):
    assert models.model_depth(str(tiny_llama_dir)) == 2
    assert models.model_depth("org/some-hub-model") is None


@pytest.mark.real_model
def test_the_depth_of_the_embedded_ggufs_comes_from_their_header():
    source = models.resolve_model_spec("gemma-3-270m")
    assert models._gguf_block_count(Path(source.path) / source.gguf_file) == 18
    source = models.resolve_model_spec("smollm2-135m-instruct")
    assert models._gguf_block_count(Path(source.path) / source.gguf_file) == 30


# ---- outputs: a full disk found before the work, or the work rescued --------------------------------------------------
class FullDisk:
    """``os.fsync`` of a file under ``where`` fails with ENOSPC (a full disk shows itself there for buffered writes)."""

    def __init__(self, where: Path, *, spare: str | None = None):
        self.where, self.spare, self.real = str(where.resolve()), spare, os.fsync

    def __call__(self, fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(self.where) and (self.spare is None or self.spare not in path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd)


def test_generate_on_a_full_disk_is_refused_before_the_model_loads(tmp_path, tiny_llama_dir, instructions, monkeypatch, no_model_loads):
    full = tmp_path / "full"
    full.mkdir()
    monkeypatch.setattr(os, "fsync", FullDisk(full))
    res = runner.invoke(app, ["generate", "-m", str(tiny_llama_dir), "-i", str(instructions), "--out", str(full / "o.json"), "-q"])
    line = one_error_line(res)
    assert "cannot be written" in line and "No space left" in line


def test_a_disk_that_fills_up_during_generation_keeps_the_generation(tmp_path, tiny_llama_dir, instructions, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    monkeypatch.setattr(os, "fsync", FullDisk(full, spare=".iit-write-check."))  # the check passes; the real write fails
    monkeypatch.setenv("TMPDIR", str(tmp_path / "spare"))
    (tmp_path / "spare").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    res = runner.invoke(
        app, ["generate", "-m", str(tiny_llama_dir), "-i", str(instructions), "--out", str(full / "o.json"), "-q", "--max-new-tokens", "4"]
    )
    line = one_error_line(res)
    rescued = list((tmp_path / "spare").glob("iit-rescued-*-o.json"))
    assert "No space left" in line and len(rescued) == 1 and str(rescued[0]) in line
    assert json.loads(rescued[0].read_text())[0]["instruction"] == "Name three colours."
    assert not [p for p in full.iterdir()]  # nothing half-written


@pytest.mark.parametrize("target", ["existing-file", "read-only", "full"])
def test_report_checks_its_output_before_any_work(target, tmp_path, monkeypatch):
    from tests.reliability.test_cli_errors import _fake_run

    run = _fake_run(tmp_path / "run", "Hello.")
    out = tmp_path / "report-out"
    if target == "existing-file":
        out.write_text("a file, not a folder")
    elif target == "read-only":
        out = Path("/proc/iit-report")
    else:
        out.mkdir()
        monkeypatch.setattr(os, "fsync", FullDisk(out))
    import implicit_it.reports as reports

    monkeypatch.setattr(reports, "write_report", lambda *a, **k: pytest.fail("the report was rendered"))
    line = one_error_line(runner.invoke(app, ["report", str(run), "--out", str(out)]))
    assert str(out) in line


# ---- the judge's key: never sent on through a redirect ------------------------------------------------------------------
def _server(handler_factory):
    server = HTTPServer(("127.0.0.1", 0), handler_factory)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirecting_judge_server_does_not_get_the_key_sent_on(monkeypatch):
    from implicit_it.evaluation.judges import KeyInClear, list_served_models

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"data": [{"id": "m"}]}')

        def log_message(self, *a):
            pass

    elsewhere = _server(Elsewhere)

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/v1/models")
            self.end_headers()

        def log_message(self, *a):
            pass

    redirect = _server(Redirect)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    try:
        with pytest.raises(KeyInClear, match="redirect"):
            list_served_models(f"http://127.0.0.1:{redirect.server_port}/v1")
        assert seen == []
    finally:
        redirect.shutdown()
        elsewhere.shutdown()
