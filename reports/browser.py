"""Check a report in a real browser: headless Chromium loads it, runs its script, and we read
back the DOM (sections present, every embedded figure decoded) and optionally a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from implicit_it.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserCheck:
    images_expected: int
    images_loaded: int
    section_ids: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return self.images_loaded == self.images_expected and bool(self.section_ids)


class _DomReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "section" and a.get("id"):
            self.sections.append(a["id"])


def _chromium(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="iit-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--virtual-time-budget=10000",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_in_browser(
    html_path: str | Path, *, screenshot: str | Path | None = None, window: tuple[int, int] = (1280, 2400), timeout: float = 120
) -> BrowserCheck:
    """Load ``html_path`` in headless Chromium; return what the page reported after ``load``."""
    binary = find_chromium()
    if binary is None:
        raise UserError("no Chromium found (install Debian's `chromium` package)")
    url = Path(html_path).resolve().as_uri()
    dom = _chromium(binary, ["--dump-dom", url], timeout)
    if dom.returncode != 0 or "<body" not in dom.stdout:
        raise UserError(f"{html_path}: chromium could not render the page (exit {dom.returncode}): {dom.stderr.strip()[-400:]}")
    reader = _DomReader()
    reader.feed(dom.stdout)
    if "data-images-loaded" not in reader.body:
        raise UserError(f"{html_path}: the page's load script did not run (no data-images-loaded on <body>)")
    shot = None
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        tmp = shot.with_name(f".{shot.name}.tmp.png")
        res = _chromium(binary, [f"--screenshot={tmp}", f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", url], timeout)
        if res.returncode != 0 or not tmp.is_file():
            raise UserError(f"{html_path}: chromium took no screenshot (exit {res.returncode}): {res.stderr.strip()[-400:]}")
        tmp.replace(shot)
    return BrowserCheck(int(reader.body.get("data-images-expected", "0")), int(reader.body["data-images-loaded"]), reader.sections, shot)
