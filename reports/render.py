"""Write ``report.html`` (self-contained: figures embedded as data URIs, no network) and
``report.md`` (figures as PNG files beside it) from a run directory, atomically."""

from __future__ import annotations

import base64
import datetime as _dt
import re
from pathlib import Path
from typing import Any

from implicit_it.analysis import figure_png_bytes, write_bytes
from implicit_it.io import atomic_write_text

from . import paper
from .collect import RunData, read_run
from .figures import FIGURES, generic_figures
from .sections import build_sections, headline, model_note

TEMPLATES = Path(__file__).parent / "templates"


# C0/C1 controls (an ANSI escape recolours a terminal that `cat`s the report) and the bidirectional overrides and
# isolates (an RTL override makes text read backwards): shown as visible \\uXXXX, never passed through.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(value: Any) -> Any:
    """Strings with control and bidi characters written out as ``\\uXXXX`` (newlines and tabs kept); other values as they are."""
    if not isinstance(value, str):
        return value
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def md_text(value: Any) -> str:
    """Text for Markdown outside code: HTML escaped, since a Markdown renderer passes raw HTML through (model text
    holding ``<script>`` would run), a bracket that would close link text escaped so that no link or image
    (``![](http://…)`` fetching on view, ``[x](javascript:…)``, ``[x]: url``) is formed, and controls made visible; an
    escaped character still displays as itself."""
    text = _LINK_CLOSE.sub(r"\\\g<0>", visible(str(value)).replace("\\", "\\\\"))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# a "]" that closes link text ("](url)", "][ref]") or a reference definition ("]: url"); a CI like "[0.0, 49.0]" stays as is
_LINK_CLOSE = re.compile(r"\](?=[(\[:])")


def md_cell(value: Any) -> str:
    """One Markdown table cell: HTML escaped (:func:`md_text`), pipes escaped, line breaks as ``<br>``."""
    return md_text(value).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_figures(run: RunData, out_dir: Path) -> dict[str, dict[str, str]]:
    """Every figure the report shows, each drawn by its result's ``plot()``: written beside the
    Markdown (``figures/<key>.png``) and kept as base64 for the HTML."""
    figures = {}
    for key, figure in {**FIGURES, **generic_figures(run)}.items():
        fig = figure(run)
        if fig is None:
            continue
        png = figure_png_bytes(fig, dpi=110)
        write_bytes(out_dir / "figures" / f"{key}.png", png)
        figures[key] = {"b64": base64.b64encode(png).decode("ascii"), "file": f"figures/{key}.png", "caption": figure.caption}
    return figures


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Render the report of ``run_dir`` into ``out_dir`` (default ``RUN_DIR/report``); returns the file paths."""
    import jinja2

    import implicit_it

    run = read_run(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    sections = build_sections(run)
    for s in sections:
        for item in s.samples:
            for r in item["responses"]:
                r["cell"] = f"{r['text']} {'⏹' if r['eos'] else '…'}"
    figures = render_figures(run, out_dir)
    context = {
        "title": str(((run.manifest or {}).get("config") or {}).get("name") or run.run_dir.name),
        "run_dir": str(run.run_dir),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version": implicit_it.__version__,
        "model_note": model_note(run),
        "headline": headline(run),
        "sections": sections,
        "figures": figures,
        "paper_source": paper.SOURCE,
        "n_images": len([k for s in sections for k in s.figures if k in figures]),
    }
    loader = jinja2.FileSystemLoader(str(TEMPLATES))
    html = (
        jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, finalize=visible)
        .get_template("report.html.j2")
        .render(context)
    )
    md_env = jinja2.Environment(
        loader=loader, autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, finalize=visible
    )
    md_env.filters["md"] = md_cell
    md_env.filters["mdtext"] = md_text
    markdown = md_env.get_template("report.md.j2").render(context)
    paths = {"html": atomic_write_text(out_dir / "report.html", html), "markdown": atomic_write_text(out_dir / "report.md", markdown)}
    return paths
