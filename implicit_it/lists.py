"""The one parser of comma-separated lists on the command line (``--pools mean,last``, ``--grid 5,7,10``, rule names)."""

from __future__ import annotations

from typing import Callable, TypeVar

from .errors import UserError

T = TypeVar("T")


def parse_list(text: str | list[str] | tuple[str, ...], item: Callable[[str], T] = str, *, what: str = "list") -> list[T]:  # type: ignore[assignment]
    """``"a, b,,c"`` -> ``["a", "b", "c"]``, each converted by ``item``; an item it rejects is a ValueError naming ``what``.

    A list (a YAML value, a repeated option) is taken item by item, each item itself split on commas."""
    parts = [text] if isinstance(text, str) else list(text)
    out: list[T] = []
    for part in parts:
        for raw in str(part).split(","):
            raw = raw.strip()
            if not raw:
                continue
            try:
                out.append(item(raw))
            except (TypeError, ValueError):
                raise UserError(f"{what}: cannot read {raw!r} in {text!r}") from None
    return out
