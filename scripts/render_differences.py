"""Write docs/fidelity.md's "Differences from the paper" table from implicit_it.differences.DIFFERENCES.

python scripts/render_differences.py          # rewrite docs/fidelity.md between the markers
python scripts/render_differences.py --check  # exit 1 if docs/fidelity.md is out of date (tests run this check too)
"""

from __future__ import annotations

import sys
from pathlib import Path

from implicit_it.differences import differences_markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
START, END = "<!-- differences:start -->", "<!-- differences:end -->"


def rendered(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{PAGE}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{differences_markdown()}\n{END}{tail}"


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    new = rendered(text)
    if "--check" in sys.argv[1:]:
        if new != text:
            print("docs/fidelity.md's differences table is out of date: run python scripts/render_differences.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        tmp = PAGE.with_suffix(".md.tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(PAGE)
    print(f"{PAGE}: {len(differences_markdown().splitlines()) - 2} differences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
