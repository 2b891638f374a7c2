"""``implicit_it.reports``: the mechanism report of a run (``iit report RUN_DIR``, and the last stage of ``iit run``).

* :mod:`.collect`: read a run directory back (step records and the files each stage wrote);
* :mod:`.sections`: the report's content as tables (the paper's Tables 1–4 with its numbers beside
  this run's), token tables, sample generations, the manifest, and a generic section for every
  registered result no other section shows (a new analysis appears with no report edit);
* :mod:`.figures`: every figure is a result's own ``plot()``: each step's result files are read back
  through the result registry and merged across systems (weight deltas, logit-lens KL, ranking,
  probes, rule R², and any other registered result);
* :mod:`.render`: ``report.html`` (self-contained) and ``report.md``;
* :mod:`.browser`: render the HTML in headless Chromium, check it, take a screenshot;
* :mod:`.paper`: the paper's published numbers, labelled as such;
* :mod:`.findings`: a finished study's headline numbers as one JSON document (paired tests, power calculation) and the
  README's findings section rendered from that document alone (``scripts/publish_cpu_study.py``).
"""

from .browser import BrowserCheck, check_in_browser, find_chromium
from .collect import RunData, StepRecord, read_run
from .render import write_report
from .sections import Section, Table, build_sections
from .stage import ReportStage, report_stage

__all__ = [
    "ReportStage",
    "report_stage",
    "BrowserCheck",
    "check_in_browser",
    "find_chromium",
    "RunData",
    "StepRecord",
    "read_run",
    "write_report",
    "Section",
    "Table",
    "build_sections",
]
