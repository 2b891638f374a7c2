"""The layering rule, checked on the source, and the core's type check.

Three layers (docs/ARCHITECTURE.md):

* **core**: ``implicit_it/`` (``implicit_it.*`` outside the rooms and the app) imports no room and no app;
* **rooms**: every other subpackage mapped by ``[tool.setuptools] package-dir`` in pyproject.toml
  (``training/``, ``probes/``, ... as ``implicit_it.training``, ...) imports only the core and itself;
* **app**: ``app/`` (``implicit_it.app``) and the entry point ``implicit_it/__main__.py`` import anything.

import-linter checks the rule on every import statement (those inside functions included): its contracts are
``[tool.importlinter]`` in pyproject.toml, run by ``scripts/lint_imports.py`` (which lays the mapped rooms out as
installed, since import-linter reads only the core's folder). What it cannot see is checked here on the source,
parsed with :mod:`ast`: ``importlib.import_module("implicit_it...")`` calls, and files outside any regular package
(``evaluation/lm_eval_tasks/*/*.py``, loaded by lm-eval from their path). No module may import a private name (``_x``)
of another first-party module either: a helper used across modules is public.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = "implicit_it"
APP = f"{TOP}.app"
# Modules that live in the core's folder but are entry points, so they belong to the application layer.
ENTRY_POINTS = {f"{TOP}.__main__"}


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    importer: str
    target: str  # absolute module name (a submodule where ``from pkg import sub`` names one)
    names: tuple[str, ...] = ()  # the names of a ``from ... import`` (empty for ``import x``)
    dynamic: bool = False  # an ``import_module("...")`` / ``__import__("...")`` call, not an import statement
    packaged: bool = True  # False for a file outside any regular package (a folder above it has no __init__.py)


def package_dirs(pyproject: Path) -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of *pyproject*: package name -> folder (relative to the file)."""
    with open(pyproject, "rb") as f:
        data = tomllib.load(f)
    mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {pkg: folder for pkg, folder in mapping.items() if pkg == TOP or pkg.startswith(TOP + ".")}


def iter_modules(root: Path, mapping: dict[str, str]):
    """Yield ``(path, module name, is_package)`` for every .py file under the mapped folders."""
    for pkg, folder in sorted(mapping.items()):
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            # a file under a nested mapped folder (none today) belongs to the longest mapping
            owner = max((p for p, d in mapping.items() if path.is_relative_to(root / d)), key=lambda p: len(mapping[p]))
            if owner != pkg:
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            yield path, ".".join([pkg, *parts]), is_package


def layer(module: str, mapping: dict[str, str]) -> str | None:
    """``"core"``, ``"room:<name>"``, ``"app"``, or None for a module outside the package."""
    if module != TOP and not module.startswith(TOP + "."):
        return None
    if module in ENTRY_POINTS or module == APP or module.startswith(APP + "."):
        return "app"
    for pkg in mapping:
        if pkg in (TOP, APP):
            continue
        if module == pkg or module.startswith(pkg + "."):
            return "room:" + pkg.rsplit(".", 1)[-1]
    return "core"


def allowed(src: str, dst: str) -> bool:
    if src == "app":
        return True
    if src == "core":
        return dst == "core"
    return dst in ("core", src)  # a room: the core and itself


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def imports_of(source: str, module: str, is_package: bool, file: str = "<string>", known: set[str] | None = None) -> list[Import]:
    """Every import in *source* (module body, functions, ``import_module("...")`` calls), resolved to absolute names."""
    known = known or set()
    out: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=file)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(file, node.lineno, module, alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = tuple(a.name for a in node.names)
            submodules = [n for n in names if f"{base}.{n}" in known]  # ``from pkg import sub``: an edge to pkg.sub
            out += [Import(file, node.lineno, module, f"{base}.{n}") for n in submodules]
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                out.append(Import(file, node.lineno, module, base, rest))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if fname not in ("import_module", "__import__"):
                continue
            target = node.args[0].value
            if target.startswith("."):  # import_module(".x", package="implicit_it") / package=__package__
                pkg = next((k.value for k in node.keywords if k.arg == "package"), None)
                anchor = pkg.value if isinstance(pkg, ast.Constant) and isinstance(pkg.value, str) else None
                if anchor is None:
                    anchor = module if is_package else module.rpartition(".")[0]
                level = len(target) - len(target.lstrip("."))
                target = _resolve(anchor, True, level, target.lstrip(".") or None)
            out.append(Import(file, node.lineno, module, target, dynamic=True))
    return out


def scan(root: Path) -> tuple[dict[str, str], list[Import]]:
    mapping = package_dirs(root / "pyproject.toml")
    modules = list(iter_modules(root, mapping))
    known = {name for _, name, _ in modules}
    found: list[Import] = []
    for path, name, is_package in modules:
        rel = path.relative_to(root).as_posix()
        imports = imports_of(path.read_text(encoding="utf-8"), name, is_package, rel, known)
        if not in_package(path, root):
            imports = [replace(i, packaged=False) for i in imports]
        found += imports
    return mapping, found


def in_package(path: Path, root: Path) -> bool:
    """Whether every folder from the top of *path*'s mapped folder down to it has an ``__init__.py`` (what
    import-linter reads as the package's modules)."""
    rel = path.relative_to(root)
    return all((root.joinpath(*rel.parts[:n]) / "__init__.py").is_file() for n in range(1, len(rel.parts)))


def unseen_by_import_linter(found: list[Import]) -> list[Import]:
    return [i for i in found if i.dynamic or not i.packaged]


def forbidden_edges(mapping: dict[str, str], found: list[Import]) -> list[str]:
    bad = []
    for imp in found:
        src, dst = layer(imp.importer, mapping), layer(imp.target, mapping)
        if src is None or dst is None or allowed(src, dst):
            continue
        bad.append(f"{imp.file}:{imp.line}: {imp.importer} -> {imp.target}  ({src} may not import {dst})")
    return sorted(set(bad))


def private_imports(mapping: dict[str, str], found: list[Import]) -> list[tuple[str, str, str]]:
    """``(file:line, importer, name)`` for each private name imported from another first-party module."""
    bad = []
    for imp in found:
        if layer(imp.target, mapping) is None or imp.target == imp.importer:
            continue
        for name in imp.names:
            if name.startswith("_") and not name.startswith("__"):
                bad.append((f"{imp.file}:{imp.line}", imp.importer, name))
    return sorted(set(bad))


# --- the real tree ---------------------------------------------------------------------------------


def test_package_dir_mapping_is_read():
    mapping = package_dirs(ROOT / "pyproject.toml")
    assert mapping[TOP] == "implicit_it" and mapping[APP] == "app"
    rooms = {layer(pkg, mapping) for pkg in mapping} - {"core", "app"}
    assert {"room:training", "room:probes", "room:analyses", "room:evaluation", "room:reports"} <= rooms


def test_import_contracts_hold():
    """``lint-imports`` (through scripts/lint_imports.py) keeps every contract of pyproject.toml."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extras (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "scripts/lint_imports.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, f"lint-imports: imports against the layering (or a bad contract):\n{proc.stdout}{proc.stderr}"
    assert " 0 broken" in proc.stdout


def test_contract_layers_match_the_package():
    """The layers contract names the mapped rooms as its independent middle layer and every core module below them."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    top, rooms, core = ([name.strip() for name in layer.replace(":", "|").split("|")] for layer in layers["layers"])
    mapping = package_dirs(ROOT / "pyproject.toml")
    assert sorted(rooms) == sorted(pkg.rsplit(".", 1)[-1] for pkg in mapping if pkg not in (TOP, APP))
    assert "|" in layers["layers"][1] and ":" not in layers["layers"][1], "the rooms must stay independent of each other"
    assert sorted(top) == ["__main__", "app"]
    in_core = {p.stem for p in (ROOT / mapping[TOP]).glob("*.py")} | {p.parent.name for p in (ROOT / mapping[TOP]).glob("*/__init__.py")}
    assert sorted(core) == sorted(in_core - {"__init__", "__main__"})


def test_lookups_by_string_import_only_downwards():
    """What import-linter cannot see: ``import_module("implicit_it...")`` calls and files outside any package."""
    t0 = time.perf_counter()
    mapping, found = scan(ROOT)
    assert len(found) > 100, "the scan found almost no imports: is the package-dir mapping read?"
    bad = forbidden_edges(mapping, unseen_by_import_linter(found))
    assert not bad, "imports against the layering (core <- rooms <- app; rooms never import each other):\n" + "\n".join(bad)
    assert time.perf_counter() - t0 < 2.0


def test_no_private_names_across_modules():
    mapping, found = scan(ROOT)
    hits = private_imports(mapping, found)
    bad = [f"{where}: {importer} imports {name}" for where, importer, name in hits]
    assert not bad, "private names imported from another module (make them public or move them):\n" + "\n".join(bad)


# --- the checker catches what it should ------------------------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str], contracts: str = "") -> Path:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.setuptools]\n"
        'package-dir = { "implicit_it" = "implicit_it", "implicit_it.probes" = "probes", '
        '"implicit_it.lab" = "lab", "implicit_it.app" = "app" }\n' + contracts
    )
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("implicit_it", "probes", "lab", "app"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


PLANTED = {
    "implicit_it/models.py": "import os\n\ndef _offline():\n    pass\n",
    # core -> room, hidden in a function
    "implicit_it/rules.py": "def f():\n    from implicit_it.probes import ranking\n",
    # core -> app through importlib
    "implicit_it/io.py": "import importlib\nimportlib.import_module('implicit_it.app.cli')\n",
    "implicit_it/__main__.py": "from implicit_it.app import cli\n",  # entry point: allowed
    "probes/ranking.py": "from implicit_it.models import load_model\nfrom .pairs import x\n",  # allowed
    "probes/pairs.py": "x = 1\n",
    # room -> another room from a file outside any package (a data folder without __init__.py)
    "probes/tasks/one/utils.py": "from implicit_it.lab import thing\n",
    # room -> another room (a room added to package-dir is picked up), relative import across the package
    "lab/thing.py": "from ..probes.ranking import rank\n",
    # room -> app, and a private name from the core
    "lab/other.py": "import implicit_it.app.cli\nfrom implicit_it.models import _offline, resolve\n",
    "app/cli.py": "from implicit_it.lab import thing\nfrom implicit_it.probes import ranking\n",  # allowed
}


def test_checker_catches_planted_edges(tmp_path):
    root = _plant(tmp_path, PLANTED)
    mapping, found = scan(root)
    assert layer("implicit_it.lab.thing", mapping) == "room:lab"
    bad = forbidden_edges(mapping, found)
    assert bad == [
        "implicit_it/io.py:2: implicit_it.io -> implicit_it.app.cli  (core may not import app)",
        "implicit_it/rules.py:2: implicit_it.rules -> implicit_it.probes.ranking  (core may not import room:probes)",
        "lab/other.py:1: implicit_it.lab.other -> implicit_it.app.cli  (room:lab may not import app)",
        "lab/thing.py:1: implicit_it.lab.thing -> implicit_it.probes.ranking  (room:lab may not import room:probes)",
        "probes/tasks/one/utils.py:1: implicit_it.probes.tasks.one.utils -> implicit_it.lab.thing  (room:probes may not import room:lab)",
    ]
    # what the real tree's test checks by hand: the edges import-linter does not see
    assert forbidden_edges(mapping, unseen_by_import_linter(found)) == [bad[0], bad[-1]]
    assert private_imports(mapping, found) == [("lab/other.py:2", "implicit_it.lab.other", "_offline")]


PLANTED_CONTRACTS = """
[tool.importlinter]
root_package = "implicit_it"

[[tool.importlinter.contracts]]
name = "layers"
type = "layers"
containers = ["implicit_it"]
exhaustive = true
layers = ["app : __main__", "probes | lab", "models : rules : io"]
"""


def test_lint_imports_catches_planted_edges(tmp_path):
    """scripts/lint_imports.py lays the mapped rooms out for import-linter, which then sees edges inside functions."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extras (pip install -e '.[dev]')")
    root = _plant(tmp_path, PLANTED, PLANTED_CONTRACTS)
    (root / "scripts").mkdir()
    (root / "scripts" / "lint_imports.py").write_text((ROOT / "scripts" / "lint_imports.py").read_text())
    proc = subprocess.run([sys.executable, "scripts/lint_imports.py"], cwd=root, capture_output=True, text=True, timeout=300)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for broken in (
        "implicit_it.rules -> implicit_it.probes.ranking (l.2)",  # core -> room, inside a function
        "implicit_it.lab.thing -> implicit_it.probes.ranking (l.1)",  # room -> room, relative
        "implicit_it.lab.other -> implicit_it.app.cli (l.1)",  # room -> app
    ):
        assert broken in out, proc.stdout
    assert "implicit_it.probes is not allowed to import implicit_it.lab" not in out  # probes/tasks/ is no package
    assert "implicit_it.io" not in out  # import_module("...") is not an import statement: the hand-written check's


def test_relative_imports_resolve():
    known = {"implicit_it.probes.pairs", "implicit_it.formats"}
    got = imports_of(
        "from . import pairs\nfrom ..formats import x\nfrom .sub.deep import y\n", "implicit_it.probes.ranking", False, known=known
    )
    assert [i.target for i in got] == ["implicit_it.probes.pairs", "implicit_it.formats", "implicit_it.probes.sub.deep"]
    got = imports_of("from .pairs import x\n", "implicit_it.probes", True)
    assert [i.target for i in got] == ["implicit_it.probes.pairs"]


# --- the core type-checks --------------------------------------------------------------------------


def test_core_type_checks():
    """``python -m mypy`` with pyproject's [tool.mypy] (the core, ``implicit_it/``) exits 0.

    ~30 s cold on 2 CPU cores (torch and transformers are read for their types), ~1 s with the
    cache (``.mypy_cache/``, gitignored)."""
    pytest.importorskip("mypy", reason="mypy is in the dev extras (pip install -e '.[dev]')")
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, f"mypy found type errors in the core:\n{proc.stdout}{proc.stderr}"


# --- each stage orchestrated once, in its room ------------------------------------------------------

# What a stage does inside (train, judge, score, write a report or card, read the texts): only the room's stage.py
# calls these, so the CLI and the pipeline cannot do it differently. The app calls the runners below instead.
STAGE_INTERNALS = {
    "train_variant",
    "write_model_card",
    "annotate",
    "alpaca_metrics",
    "pair_with_reference",
    "AlpacaEvalResult",
    "write_report",
    "check_in_browser",
    "texts_from_source",
    "read_ranking_source",
    "score_groups",
    "LinearProbe",
    "Mechanism",
}
# Each stage's runner, and the app modules that must both call it: the CLI command and the pipeline step.
STAGE_RUNNERS = {
    "train_stage": ("implicit_it.training", "train"),
    "rank": ("implicit_it.probes", "rank"),
    "probe": ("implicit_it.probes", "probe"),
    "template": ("implicit_it.probes", "template"),
    "diff": ("implicit_it.analyses", "diff"),
    "mech": ("implicit_it.analyses", "mech"),
    "ifeval_stage": ("implicit_it.evaluation", "eval ifeval"),
    "ifsuite_stage": ("implicit_it.evaluation", "eval ifsuite"),
    "alpaca_stage": ("implicit_it.evaluation", "eval alpaca"),
    "report_stage": ("implicit_it.reports", "report"),
}


def app_imports() -> list[Import]:
    _, found = scan(ROOT)
    return [i for i in found if i.importer == APP or i.importer.startswith(APP + ".")]


def test_the_app_never_runs_a_stage_by_hand():
    """No app module (CLI, pipeline, GPU check aside) imports what a stage does inside; a room's runner does it."""
    bad = [
        f"{i.file}:{i.line}: {name} from {i.target}"
        for i in app_imports()
        if not i.importer.startswith(f"{APP}.gpu_check")  # the GPU check times single operations on purpose
        for name in i.names
        if name in STAGE_INTERNALS
    ]
    assert not bad, "call the room's stage runner instead:\n" + "\n".join(bad)


def test_the_cli_and_the_pipeline_call_the_same_runner_for_each_stage():
    used: dict[str, set[str]] = {}
    for i in app_imports():
        # ``from implicit_it.probes import template`` names both the stage function and the submodule of that name
        for name in i.names or (i.target.rpartition(".")[2],):
            used.setdefault(name, set()).add(i.importer)
    for runner, (room, command) in STAGE_RUNNERS.items():
        callers = used.get(runner, set())
        assert any(c.startswith(f"{APP}.cli") for c in callers), f"`iit {command}` does not call {room}.{runner}"
        assert f"{APP}.pipeline.stages" in callers, f"the pipeline's step does not call {room}.{runner}"
