"""Write docs/config-reference.md from the configs (implicit_it.app.cli.reference).

python scripts/render_config_reference.py          # rewrite the page
python scripts/render_config_reference.py --check  # exit 1 if the page is out of date (tests run this check too)
"""

from __future__ import annotations

import sys
from pathlib import Path

from implicit_it.app.cli.reference import config_reference_markdown
from implicit_it.io import atomic_write_text

PAGE = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"


def main() -> int:
    new = config_reference_markdown()
    if "--check" in sys.argv[1:]:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != new:
            print("docs/config-reference.md is out of date: run python scripts/render_config_reference.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(PAGE, new)
    print(f"{PAGE}: {new.count(chr(10) + '## ')} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
