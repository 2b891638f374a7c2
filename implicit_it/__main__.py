"""``python -m implicit_it`` == ``iit`` (so ``accelerate launch -m implicit_it ...`` works)."""

from .cli import main

main()
