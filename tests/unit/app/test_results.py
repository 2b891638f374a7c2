"""The app registers every room's result classes before a run is read back; the core's registry imports no room."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from implicit_it.analysis import registered_results
before = set(registered_results())
from implicit_it.app.results import register_every_result
register_every_result()
after = set(registered_results())
print(sorted(before)); print(sorted(after))
"""


def test_every_result_class_is_registered_by_the_app_and_none_by_the_core():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.splitlines()
    before, after = eval(out[0]), eval(out[1])  # noqa: S307 - our own printed lists
    assert before == []  # importing the core registers nothing: it imports no room
    # one result of each room that writes results
    assert {"ranking", "probe", "template", "weights", "rules", "mechanism", "ifeval", "ifsuite", "alpaca_eval"} <= set(after)
