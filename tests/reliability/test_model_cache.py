"""The dequantized-model cache is checked, and rebuilt when damaged (issue 34, the high case).

Before the fix the cache's only validity check was that ``config.json`` existed: 64 MB overwritten in the middle of
``model.safetensors`` gave garbage text with exit 0, and a truncated file a ``SafetensorError`` on every load, forever.
Now the cache records each file's size and sha256 when it is written (``implicit_it_seal.json``); a load that finds a
file resized or changed moves the cache aside and dequantizes the GGUF again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import implicit_it.models as models
from implicit_it.io import SEAL_NAME, seal_directory, sealed_directory_problem


def _cache(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (directory / "model.safetensors").write_bytes(os.urandom(1 << 20))
    seal_directory(directory)
    return directory


def test_a_sealed_directory_names_a_changed_a_truncated_and_a_missing_file(tmp_path):
    directory = _cache(tmp_path)
    assert sealed_directory_problem(directory) is None
    weights = directory / "model.safetensors"
    with open(weights, "r+b") as fh:  # what `dd conv=notrunc` does: same size, other bytes
        fh.seek(1 << 19)
        fh.write(b"\0" * 4096)
    assert "changed since it was written" in sealed_directory_problem(directory)

    directory = _cache(tmp_path / "b")
    os.truncate(directory / "model.safetensors", 1000)
    assert "has 1000 bytes" in sealed_directory_problem(directory)

    directory = _cache(tmp_path / "c")
    (directory / "config.json").unlink()
    assert sealed_directory_problem(directory) == "config.json is missing"

    directory = _cache(tmp_path / "d")
    (directory / SEAL_NAME).unlink()  # a cache of an older implicit-it: not trusted, rebuilt once
    assert "no implicit_it_seal.json" in sealed_directory_problem(directory)


def test_an_unchanged_file_is_hashed_once_then_trusted_by_its_stamp(tmp_path, monkeypatch):
    import implicit_it.io as io

    directory = _cache(tmp_path)
    os.utime(directory / "model.safetensors")  # a new mtime: hashed again, found equal, stamp recorded
    hashed = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    assert sealed_directory_problem(directory) is None and len(hashed) == 1
    assert sealed_directory_problem(directory) is None and len(hashed) == 1  # the recorded stamp matches: not hashed


@pytest.mark.real_model
def test_a_damaged_cache_of_a_real_gguf_is_dequantized_again(tmp_path, monkeypatch):
    """SmolLM2-135M (the smaller embedded GGUF; the same code path as Gemma): a copy of its sealed cache, 16 MB overwritten
    in the middle of the weights, then a load: the cache is dequantized again, byte for byte what it was."""
    import shutil

    original = Path(models.model_directory("smollm2-135m-instruct"))  # the machine's cache (built here if absent)
    monkeypatch.setenv("IIT_CACHE_DIR", str(tmp_path / "iit-cache"))
    monkeypatch.setattr(models, "_CHECKED_CACHES", {})
    source = models.resolve_model_spec("smollm2-135m-instruct")
    directory = models._gguf_cache_dir(Path(source.path) / source.gguf_file)
    shutil.copytree(original, directory)
    assert sealed_directory_problem(directory) is None
    sealed = json.loads((directory / SEAL_NAME).read_text())["files"]["model.safetensors"]["sha256"]

    weights = directory / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        fh.write(os.urandom(16 << 20))
    loaded = models.load_model("smollm2-135m-instruct", use_process_cache=False)
    assert loaded.loaded_from == "gguf-dequantize"  # rebuilt, not read from the damaged copy
    assert json.loads((directory / SEAL_NAME).read_text())["files"]["model.safetensors"]["sha256"] == sealed
    assert sealed_directory_problem(directory) is None
    assert not [p for p in directory.parent.iterdir() if ".damaged." in p.name]  # the damaged copy is gone
