"""The one interface every probe and analysis follows.

An :class:`Analysis` is configured once (data, options) and ``run`` on loaded models; it returns
an :class:`AnalysisResult`, which knows its JSON layout (the documented ``DIR/<name>.json``), a
tidy table (``to_frame``), a figure (``plot``), and how to write all three atomically.
Results of the same analysis on several models ``merge`` into one side-by-side result.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from .io import atomic_write, atomic_write_json


class AnalysisResult(ABC):
    """One analysis on one or more models; ``entries`` are the JSON ``results`` list."""

    name: ClassVar[str]

    def __init__(self, entries: list[dict[str, Any]]):
        self.entries = list(entries)

    def to_json(self) -> dict[str, Any]:
        return {"results": self.entries}

    @abstractmethod
    def to_frame(self) -> Any:
        """A tidy pandas DataFrame, one row per model (and layer / score, where they apply)."""

    @abstractmethod
    def plot(self) -> Any:
        """A matplotlib Figure."""

    def merge(self, other: "AnalysisResult") -> "AnalysisResult":
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        return type(self)(self.entries + other.entries)

    def save(self, out_dir: str | Path) -> list[Path]:
        """``<name>.json``, ``<name>.parquet`` and ``<name>.png`` in ``out_dir``, each written atomically."""
        out_dir = Path(out_dir)
        paths = [atomic_write_json(out_dir / f"{self.name}.json", self.to_json())]
        paths.append(write_parquet(out_dir / f"{self.name}.parquet", self.to_frame()))
        paths.append(save_figure(out_dir / f"{self.name}.png", self.plot()))
        return paths


class Analysis(ABC):
    """Configured with its data and options; ``run`` on a loaded model gives a result."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, *models: Any, **kwargs: Any) -> AnalysisResult: ...


def write_parquet(path: str | Path, frame: Any) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=True)


def save_figure(path: str | Path, fig: Any) -> Path:
    """Render to memory, then write atomically (png or svg by suffix) and close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()), binary=True)


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
