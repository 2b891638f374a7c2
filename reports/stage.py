"""The report stage: what ``iit report`` and the pipeline's report step both call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from implicit_it.errors import UserError
from implicit_it.paths import check_writable

from .browser import BrowserCheck, check_in_browser
from .render import write_report


@dataclass
class ReportStage:
    """The files written, and the headless-browser check when one ran."""

    paths: dict[str, Path]
    browser: BrowserCheck | None = None

    def summary(self) -> dict[str, Any]:
        return {"html": str(self.paths["html"]), "markdown": str(self.paths["markdown"])}

    def lines(self) -> list[str]:
        lines = []
        if self.browser is not None:
            b = self.browser
            shot = f"; screenshot {b.screenshot}" if b.screenshot else ""
            lines.append(f"chromium: {len(b.section_ids)} sections, {b.images_loaded}/{b.images_expected} figures loaded{shot}")
        return lines + [f"wrote {self.paths['markdown']}"]


def report_stage(
    run_dir: str | Path, out_dir: str | Path | None = None, *, check: bool = False, screenshot: str | Path | None = None
) -> ReportStage:
    """Write ``report.html`` and ``report.md`` of ``run_dir`` into ``out_dir`` (default ``RUN_DIR/report``); with
    ``check`` (or a ``screenshot`` path), render the HTML in headless Chromium and require every section and figure."""
    check_writable(Path(out_dir) if out_dir is not None else Path(run_dir) / "report", directory=True)  # before reading and drawing
    if screenshot is not None:
        check_writable(screenshot)
    paths = write_report(run_dir, out_dir)
    browser = None
    if check or screenshot is not None:
        browser = check_in_browser(paths["html"], screenshot=screenshot)
        if not browser.ok:
            raise UserError(f"{paths['html']}: the page did not load completely in chromium")
    return ReportStage(paths, browser)
