"""Atomic writes keep the old file on failure; manifests record what produced an output."""

from __future__ import annotations

import json

import pytest

from implicit_it.io import atomic_write, atomic_write_json
from implicit_it.manifest import build_manifest, manifest_path_for, write_manifest


def test_atomic_write_keeps_previous_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"v": 1})

    def boom(fh):
        fh.write('{"v": 2, "half": ')
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_manifest_contents(tmp_path, shared_data):
    data = shared_data / "lima" / "val_instructions.jsonl"
    m = build_manifest(command="iit test", config={"a": 1}, seed=3, model={"spec": "x"}, data_files=[data])
    assert m["seed"] == 3 and m["config"] == {"a": 1} and len(m["data"][str(data)]) == 64
    assert m["packages"]["torch"] and m["packages"]["transformers"] and "commit" in m["git"]
    assert m["hardware"]["cpu_count"] >= 1
    assert manifest_path_for(tmp_path / "o.json") == tmp_path / "o.manifest.json"
    assert manifest_path_for(tmp_path) == tmp_path / "manifest.json"
    assert json.loads(write_manifest(tmp_path / "o.json", m).read_text())["seed"] == 3
