"""The README is a front door and the docs/ pages hold the rest: every relative link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "results").glob("*/README.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8")))
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    return bad


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    assert {p.name for p in PAGES} >= {"README.md", "pipeline.md", "causal.md", "fidelity.md", "setup.md"}
    assert {str(p.relative_to(REPO)): broken_links(p) for p in PAGES if broken_links(p)} == {}


def test_the_readme_is_a_front_door():
    """At most ~200 lines: what it is, the findings headline, the two set-up commands, first commands, links."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "bash scripts/setup.sh && iit run" in text and "bash scripts/setup.sh && python3 -m pytest" in text
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(text)}
    assert {p.name for p in (REPO / "docs").glob("*.md")} <= linked  # every docs page is reachable from it


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-section-with-code) [gone](missing.md) [bad](other.md#nowhere) [web](https://x.org)\n"
        "```\n[in code](missing.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]
