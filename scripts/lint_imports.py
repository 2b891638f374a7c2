"""Run import-linter (``lint-imports``) on the package as it is installed: the core plus its mapped rooms.

The contracts live in pyproject.toml (``[tool.importlinter]``). import-linter finds a package through its folder, and
``implicit_it/`` holds only the core: the rooms (``training/``, ``probes/``, ...) and the app are mapped onto
``implicit_it.*`` by ``[tool.setuptools] package-dir``, which it does not read. So this builds a throw-away tree of
symlinks with the installed layout (``implicit_it/<core file>``, ``implicit_it/training -> training/``, ...) and runs
``lint-imports`` there, with pyproject.toml's contracts. Nothing is written in the repository; extra arguments go to
``lint-imports`` (e.g. ``--verbose``). Exit status: lint-imports's (0 when every contract is kept).

    python3 scripts/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = "implicit_it"


def package_dirs(pyproject: Path) -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of *pyproject*: package name -> folder (relative to the file)."""
    with open(pyproject, "rb") as f:
        data = tomllib.load(f)
    mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {pkg: folder for pkg, folder in mapping.items() if pkg == TOP or pkg.startswith(TOP + ".")}


def link_tree(root: Path, dest: Path) -> Path:
    """Lay out ``dest/implicit_it`` as installed: a folder of links to the core's entries, one link per mapped room.

    Only rooms directly under the top package are mapped today; a deeper mapping would need real folders above it."""
    mapping = package_dirs(root / "pyproject.toml")
    top = dest / TOP
    top.mkdir(parents=True)
    for entry in sorted((root / mapping[TOP]).iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        (top / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for pkg, folder in sorted(mapping.items()):
        if pkg == TOP:
            continue
        rest = pkg[len(TOP) + 1 :]
        if "." in rest:
            raise SystemExit(f"package-dir maps {pkg!r}: only rooms directly under {TOP!r} are supported here")
        link = top / rest
        if link.exists() or link.is_symlink():
            raise SystemExit(f"package-dir maps {pkg!r} onto {folder!r}, but {mapping[TOP]}/{rest} exists too")
        link.symlink_to((root / folder).resolve(), target_is_directory=True)
    return top


def lint_imports_command() -> list[str]:
    """``lint-imports`` of this Python (next to it when installed in the same environment)."""
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        raise SystemExit("lint-imports not found: pip install import-linter (it is in the dev extras)")
    return [found]


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="iit-lint-imports-") as tmp:
        link_tree(ROOT, Path(tmp))
        # lint-imports puts its working directory first on sys.path, so it runs in the tree (where `implicit_it` is
        # the linked layout, not the core's folder) and reads the contracts from the repository's pyproject.toml.
        cmd = [*lint_imports_command(), "--no-cache", str(ROOT / "pyproject.toml"), *argv]
        path = os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH", "")) if p)
        return subprocess.run(cmd, cwd=tmp, env={**os.environ, "PYTHONPATH": path}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
