"""``iit generate --backend vllm``: the same records as the hf backend (fp32), a manifest naming the engine, and one
error for options that only the hf backend reads. One tiny gemma3 (head_dim 32) engine serves the module."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app

pytest.importorskip("vllm", reason="the vllm backend's tests need vLLM: bash scripts/setup.sh --vllm")
pytestmark = pytest.mark.vllm

from implicit_it.engines import close_engine  # noqa: E402
from tests.conftest import save_tiny_model  # noqa: E402

INSTRUCTIONS = ["Write a poem about cats.", "What is 2+2?", "List three colors", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def vllm_tiny_dir(bytelevel_tokenizer, tmp_path_factory):
    yield save_tiny_model("gemma3", bytelevel_tokenizer, tmp_path_factory.mktemp("vllm-cli"), head_dim=32)
    close_engine()


def test_generate_cli_on_vllm_writes_outputs_and_engine_manifest(vllm_tiny_dir, tmp_path):
    instructions = tmp_path / "ins.jsonl"
    instructions.write_text("".join(json.dumps({"instruction": i}) + "\n" for i in INSTRUCTIONS))
    out = tmp_path / "out.json"
    args = ["generate", "-m", str(vllm_tiny_dir), "-i", str(instructions), "-o", str(out), "--max-new-tokens", "12", "-q"]
    result = CliRunner().invoke(app, [*args, "--backend", "vllm", "--set", "vllm={dtype: float32}", "--rules", "all"])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert len(records) == 4
    engine = manifest["config"]["engine"]
    assert engine["backend"] == "vllm" and engine["dtype"] == "float32" and engine["engine"].startswith("vllm")
    assert manifest["config"]["backend"] == "vllm" and manifest["config"]["rules"]["rules"] == ["eos", "uniform", "diversity"]
    hf = CliRunner().invoke(app, [*args[:6], str(tmp_path / "hf.json"), *args[7:], "--rules", "all"])
    assert hf.exit_code == 0, hf.output
    assert [r["output"] for r in json.loads((tmp_path / "hf.json").read_text())] == [r["output"] for r in records]


def test_vllm_settings_refuse_hf_model_options(vllm_tiny_dir, tmp_path):
    instructions = tmp_path / "ins.jsonl"
    instructions.write_text(json.dumps({"instruction": "hi"}) + "\n")
    args = ["generate", "-m", str(vllm_tiny_dir), "-i", str(instructions), "-o", str(tmp_path / "o.json"), "--backend", "vllm"]
    result = CliRunner().invoke(app, [*args, "--dtype", "float32"])
    assert result.exit_code != 0 and "vllm.dtype" in result.output
