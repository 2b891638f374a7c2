"""Atomic writes keep the old file on failure; manifests record what produced an output."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from implicit_it.io import atomic_write, atomic_write_json
from implicit_it.manifest import build_manifest, code_version, manifest_path_for, package_roots, source_hash, write_manifest

REPO = Path(__file__).resolve().parents[3]


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
    assert m["code"] == code_version()
    assert manifest_path_for(tmp_path / "o.json") == tmp_path / "o.manifest.json"
    assert manifest_path_for(tmp_path) == tmp_path / "manifest.json"
    assert json.loads(write_manifest(tmp_path / "o.json", m).read_text())["seed"] == 3


def test_code_version_names_the_distribution_and_hashes_every_mapped_folder():
    first = code_version()
    assert code_version() is first  # once per process
    assert first["package_version"] == importlib.metadata.version("implicit-it")
    assert re.fullmatch("[0-9a-f]{16}", first["source_sha256"])
    with open(REPO / "pyproject.toml", "rb") as f:
        mapped = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    roots = package_roots()
    assert set(roots) == set(mapped) and all((folder / "__init__.py").is_file() for folder in roots.values())
    sha, files = source_hash(roots)  # computed again, not read from the cache: the same
    assert (sha[:16], files) == (first["source_sha256"], first["files"])
    assert files > 50


def test_source_hash_covers_path_and_content_and_skips_caches_and_tests(tmp_path):
    core = tmp_path / "src" / "implicit_it"
    shutil.copytree(package_roots()["implicit_it"], core, ignore=shutil.ignore_patterns("__pycache__"))
    reports = tmp_path / "src" / "reports"
    shutil.copytree(package_roots()["implicit_it.reports"], reports, ignore=shutil.ignore_patterns("__pycache__"))
    roots = {"implicit_it": core, "implicit_it.reports": reports}
    sha, files = source_hash(roots)
    assert source_hash(roots) == (sha, files)
    assert files == len(list(core.rglob("*.py"))) + len(list(reports.rglob("*.py"))) + len(list(reports.rglob("*.j2")))

    for ignored in ("__pycache__/io.py", "tests/test_io.py", ".hidden/x.py", "notes.txt"):
        (core / ignored).parent.mkdir(exist_ok=True)
        (core / ignored).write_text("x = 1\n")
    assert source_hash(roots) == (sha, files)

    # a normal install nests the rooms in implicit_it/: the same files hash the same
    shutil.copytree(reports, core / "reports")
    assert source_hash({"implicit_it": core, "implicit_it.reports": core / "reports"}) == (sha, files)
    shutil.rmtree(core / "reports")

    io = core / "io.py"
    original = io.read_text()
    io.write_text(original + "\n# edited\n")
    edited = source_hash(roots)
    assert edited[0] != sha and edited[1] == files
    io.write_text(original)
    assert source_hash(roots) == (sha, files)

    template = next(reports.rglob("*.j2"))
    template.write_text(template.read_text() + "\n")
    assert source_hash(roots)[0] != sha
    template.write_text(template.read_text()[:-1])

    io.rename(core / "io2.py")  # the path is hashed, not only the content
    assert source_hash(roots)[0] != sha


def test_the_manifest_names_the_checkout_as_it_was_when_the_process_first_asked(tmp_path, monkeypatch):
    """A run rewrites its manifest after every step; a commit or an edit made meanwhile must not be recorded as its code."""
    import subprocess

    from implicit_it import manifest

    first = manifest.git_commit()
    calls = []
    monkeypatch.setattr(manifest.subprocess, "run", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 0, "x\n", ""))
    assert manifest.git_commit() == first and calls == []  # read once: no git call the second time
    other = manifest.git_commit(tmp_path)  # another checkout is read each time
    assert calls and other == {"commit": "x", "dirty": True}
