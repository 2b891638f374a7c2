"""The one interface every probe and analysis follows.

An :class:`Analysis` is configured once (data, options) and ``run`` on loaded models; it returns
an :class:`AnalysisResult`, which knows its JSON layout (the documented ``DIR/<name>.json``), a
tidy table (``to_frame``), a figure (``plot``), and how to write all three atomically.
Results of the same analysis on several models ``merge`` into one side-by-side result.

Every result file has the same envelope::

    {"analysis": "<name>", "format": 1, "class": "<module>:<class>", "results": [<entry>, ...]}

one entry per model (variant, system). :meth:`AnalysisResult.from_json` reads it back, and also
the layouts written before the envelope (``{"results": [...]}``, or one bare entry).

Result classes register by name (:func:`register_result`), so whatever reads a run (the report)
finds the class of a file from its ``analysis`` field (:func:`result_class`, :func:`read_result`)
and draws it with the class's own ``plot``: a new analysis needs no edits outside its room.
"""

from __future__ import annotations

import io
import json
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

from .errors import UserError
from .io import atomic_write, atomic_write_json

RESULT_FORMAT = 1  # the envelope's version (``format``)


def entries_of(data: Any, where: str | Path = "result") -> list[dict[str, Any]]:
    """The entries of a result's JSON envelope (``{"analysis", "format", "class", "results": [...]}``); anything else
    is an error naming ``where``."""
    if isinstance(data, dict) and "analysis" in data and isinstance(data.get("results"), list):
        return list(data["results"])
    raise UserError(f"{where}: not an analysis result (expected the envelope with 'analysis' and a 'results' list)")


R = TypeVar("R", bound="AnalysisResult")


class AnalysisResult(ABC):
    """One analysis on one or more models; ``entries`` are the JSON ``results`` list."""

    name: ClassVar[str]

    def __init__(self, entries: list[dict[str, Any]]):
        self.entries = list(entries)

    def to_json(self) -> dict[str, Any]:
        """The envelope (see the module docstring)."""
        cls = _registered_or(self.name, type(self))
        return {"analysis": self.name, "format": RESULT_FORMAT, "class": f"{cls.__module__}:{cls.__qualname__}", "results": self.entries}

    @classmethod
    def from_json(cls: type[R], data: Any, where: str | Path = "result") -> R:
        """Read back what :meth:`to_json` wrote (``where`` names it in an error)."""
        entries = entries_of(data, where)
        if data["analysis"] != cls.name:
            raise UserError(f"{where}: {cls.__name__} reads {cls.name!r} results, not {data['analysis']!r}")
        return cls(entries)

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")), path)

    def summary(self) -> dict[str, Any]:
        """The one entry of a single-model result (what a step's summary is made from)."""
        if len(self.entries) != 1:
            raise ValueError(f"{self.name}: {len(self.entries)} entries; summary() needs exactly one")
        return self.entries[0]

    @abstractmethod
    def to_frame(self) -> Any:
        """A tidy pandas DataFrame, one row per model (and layer / score, where they apply)."""

    @abstractmethod
    def plot(self) -> Any:
        """A matplotlib Figure."""

    def merge(self, other: "AnalysisResult") -> "AnalysisResult":
        """Both results' entries in one result of the registered class (a run object merges as its result)."""
        if not isinstance(other, AnalysisResult) or other.name != self.name:
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        return _registered_or(self.name, type(self))(self.entries + other.entries)

    def save(self, out_dir: str | Path) -> list[Path]:
        """``<name>.json``, ``<name>.parquet`` and ``<name>.png`` in ``out_dir``, each written atomically."""
        out_dir = Path(out_dir)
        paths = [atomic_write_json(out_dir / f"{self.name}.json", self.to_json())]
        paths.append(write_parquet(out_dir / f"{self.name}.parquet", self.to_frame()))
        paths.append(save_figure(out_dir / f"{self.name}.png", self.plot()))
        return paths


def merge_by_name(results: Sequence[Mapping[str, AnalysisResult]]) -> dict[str, AnalysisResult]:
    """One result per name, the models of every mapping side by side in order (what a stage saves for several models)."""
    merged: dict[str, AnalysisResult] = {}
    for named in results:
        for name, result in named.items():
            merged[name] = merged[name].merge(result) if name in merged else result
    return merged


# ------------------------------------------------------------------ the registry of result classes

_RESULTS: dict[str, type[AnalysisResult]] = {}


def register_result(cls: type[R]) -> type[R]:
    """Class decorator: ``cls`` reads and draws the results named ``cls.name``. Registering another
    class under a taken name is an error (the same class again, e.g. a module reload, replaces it)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: a registered result needs a class attribute `name`")
    old = _RESULTS.get(name)
    if old is not None and not same_definition(old, cls):
        raise ValueError(f"result name {name!r} is taken by {old.__module__}.{old.__qualname__}")
    _RESULTS[name] = cls
    return cls


def same_definition(a: type, b: type) -> bool:
    """The same class statement: one module reloaded, or imported under two names (a room folder
    on ``sys.path`` is also a top-level package), gives another class object of the same definition."""
    if a is b:
        return True

    def where(cls: type) -> tuple[str, str]:
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None)
        return cls.__qualname__, str(Path(path).resolve()) if path else cls.__module__

    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__) or where(a) == where(b)


def unregister_result(name: str) -> None:
    _RESULTS.pop(name, None)


def registered_results() -> dict[str, type[AnalysisResult]]:
    """Name -> result class, in registration order."""
    return dict(_RESULTS)


def _registered_or(name: str, default: type[AnalysisResult]) -> type[AnalysisResult]:
    return _RESULTS.get(name, default)


def result_class(name: str) -> type[AnalysisResult]:
    """The class registered for ``name``. A class registers when its room is imported; the core never imports a room
    (by name or otherwise): whoever reads every kind of result, the app, imports the rooms first
    (``implicit_it.app.results.register_every_result``)."""
    try:
        return _RESULTS[name]
    except KeyError:
        raise KeyError(f"no result class registered for {name!r}; registered: {sorted(_RESULTS)}") from None


def read_result(source: str | Path | dict[str, Any]) -> AnalysisResult | None:
    """A result file (or its parsed JSON) as an instance of its registered class; None when the
    file does not say which analysis wrote it (not a result) or no class is registered for it."""
    data = json.loads(Path(source).read_text(encoding="utf-8")) if isinstance(source, (str, Path)) else source
    if not isinstance(data, dict) or not isinstance(data.get("analysis"), str):
        return None
    try:
        cls = result_class(data["analysis"])
    except KeyError:
        return None
    return cls.from_json(data)


class Analysis(ABC):
    """Configured with its data and options; ``run`` on a loaded model gives a result."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, *models: Any, **kwargs: Any) -> AnalysisResult: ...


def write_parquet(path: str | Path, frame: Any) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(path, buf.getvalue())


def write_bytes(path: str | Path, data: bytes) -> Path:
    def write(fh: Any) -> None:
        fh.write(data)

    return atomic_write(path, write, binary=True)


def figure_bytes(fig: Any, *, fmt: str = "png", dpi: int = 120) -> bytes:
    """Render a figure to memory (png or svg) and close it: the one place figures are rendered."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def figure_png_bytes(fig: Any, *, dpi: int = 120) -> bytes:
    return figure_bytes(fig, fmt="png", dpi=dpi)


def save_figure(path: str | Path, fig: Any, *, dpi: int = 120) -> Path:
    """Render to memory, then write atomically (png or svg by suffix) and close the figure."""
    return write_bytes(path, figure_bytes(fig, fmt=Path(path).suffix.lstrip(".") or "png", dpi=dpi))


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def layer_axis(entries: list[dict[str, Any]]) -> tuple[Any, str]:
    """x positions for per-layer curves of several models, and the axis label: layer indices when
    every model has the same depth, else depth fractions (layer / number of layers)."""
    import numpy as np

    relative = len({e["n_layers"] for e in entries}) > 1

    def x_of(entry: dict[str, Any]) -> Any:
        x = np.array([layer["layer"] for layer in entry["layers"]], dtype=float)
        return x / entry["n_layers"] if relative else x

    return x_of, "layer / depth (0 = embeddings)" if relative else "layer (0 = embeddings)"


def plot_band(
    ax: Any,
    x: Any,
    y: Any,
    lo: Any,
    hi: Any,
    *,
    label: str,
    style: str = "-",
    marker: str | None = "o",
    color: Any = None,
    alpha: float = 0.18,
) -> Any:
    """A line with a shaded band (CI or ± std); returns the line."""
    (line,) = ax.plot(x, y, style, marker=marker, ms=3, label=label, color=color)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha)
    return line


def finish_accuracy_axes(
    ax: Any, *, xlabel: str, ylabel: str, ylim: tuple[float, float] = (0, 1), guides: tuple[float, ...] = (0.5,)
) -> None:
    """Labels, limits, dotted chance/threshold guides and a small legend for an accuracy plot."""
    for i, y in enumerate(guides):
        ax.axhline(y, color="grey", lw=0.8, ls=":" if i == 0 else "--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
