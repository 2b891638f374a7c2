"""Spec resolution and loading, on tiny random models saved as local HF directories."""

from __future__ import annotations

import socket

import pytest
import torch

from implicit_it.errors import ModelSpecError
from implicit_it.models import EMBEDDED_MODELS, clear_model_cache, default_dtype, load_model, parse_dtype, resolve_model_spec


def test_resolve_embedded_names():
    src = resolve_model_spec("gemma-3-270m")
    assert src.kind == "embedded" and src.gguf_file.endswith(".gguf") and src.architecture == "Gemma3ForCausalLM"
    assert "Q4_K_M GGUF, dequantized" in src.display_name and src.upstream == "google/gemma-3-270m"
    smol = resolve_model_spec("smollm2-135m-instruct")
    assert smol.instruct and smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert set(EMBEDDED_MODELS) == {"gemma-3-270m", "smollm2-135m-instruct"}


def test_resolve_paths_and_hub_ids(tmp_path, tiny_llama_dir):
    assert resolve_model_spec(str(tiny_llama_dir)).kind == "local"
    assert resolve_model_spec("meta-llama/Llama-2-7b-hf").kind == "hub"
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    g = resolve_model_spec(str(gguf))
    assert g.kind == "gguf" and g.quantization == "Q8_0"
    with pytest.raises(ModelSpecError, match="GGUF file not found"):
        resolve_model_spec(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelSpecError, match="without config.json"):
        resolve_model_spec(str(tmp_path))
    with pytest.raises(ModelSpecError, match="model path not found"):
        resolve_model_spec("./no/such/dir")
    with pytest.raises(ModelSpecError, match="not a model spec"):
        resolve_model_spec("a/b/c")


def test_load_local_dir_defaults_and_process_cache(tiny_model_dir):
    clear_model_cache()
    a = load_model(tiny_model_dir, device="cpu")
    assert a.dtype == torch.float32 and a.device.type == "cpu" and a.loaded_from == "hf"
    assert a.model.config.architectures and not a.model.training
    assert load_model(tiny_model_dir, device="cpu") is a  # cached once per process
    b = load_model(tiny_model_dir, device="cpu", use_process_cache=False)
    assert b is not a and torch.equal(next(a.model.parameters()), next(b.model.parameters()))
    c = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert c.dtype == torch.bfloat16 and c is not a
    desc = a.describe()
    assert desc["kind"] == "local" and desc["n_parameters"] > 0 and desc["dtype"] == "float32"


def test_dtype_defaults():
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    assert parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(ModelSpecError, match="unknown dtype"):
        parse_dtype("int3")


def test_local_spec_makes_no_network_call(tiny_llama_dir, monkeypatch):
    """Loading a local directory must not open a socket (offline-safe)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    clear_model_cache()
    loaded = load_model(tiny_llama_dir, device="cpu")
    assert loaded.model is not None


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE"):
        load_model("implicit-it-tests/does-not-exist", device="cpu")
