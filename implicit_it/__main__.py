"""``python -m implicit_it`` == ``iit`` (so ``accelerate launch -m implicit_it ...`` works).

An entry point, so it belongs to the application layer although it lives in the core's folder."""

from implicit_it.app.cli import main

main()
