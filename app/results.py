"""Every room's result classes, registered: what reading a whole run back needs.

A result class registers itself (``@register_result``) when its room is imported. The core's registry never imports a
room, and the reports room may not import the others, so the app, which may import every room, does it before a
report or a summary reads a run."""

from __future__ import annotations


def register_every_result() -> None:
    """Import every room that defines result classes (each registers its own on import)."""
    import implicit_it.analyses  # noqa: F401
    import implicit_it.evaluation  # noqa: F401
    import implicit_it.probes  # noqa: F401
    import implicit_it.reports  # noqa: F401
    import implicit_it.training  # noqa: F401
