"""``implicit_it.app``: the application layer — the ``iit`` command line and the study pipeline.

The top of the house: it imports the core (``implicit_it.*``) and every room (training, probes,
analyses, evaluation, reports); nothing below imports it. See docs/ARCHITECTURE.md.
"""
