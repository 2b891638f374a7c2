"""``iit run`` stages on the real Gemma-3-270M (Q4_K_M GGUF, dequantized to fp32), marked ``real_model``.

Training is left to the CPU demo (minutes); here the training-free systems run for real: the base
and the rule adapter with one rule removed, through generation, the judge-free suite and the report.
"""

from __future__ import annotations

import json

import pytest

from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import run_study

pytestmark = pytest.mark.real_model


def test_rule_systems_on_gemma_end_to_end(shared_data, tmp_path):
    cfg = parse_config(
        {
            "name": "gemma-rules",
            "model": {"spec": "gemma-3-270m"},
            "training": {"variants": []},
            "run": {
                "generate": {"ifsuite_prompts": 3, "max_new_tokens": 24, "rule_sets": ["all", "no_uniform"]},
                "rank": {"enabled": False},
                "probe": {"enabled": False},
                "diff": {"enabled": False},
                "eval": {"ifeval_data": str(shared_data / "ifeval" / "input_data.jsonl"), "ifeval_prompts": 2},
            },
        }
    )
    outcome = run_study(cfg, tmp_path / "run", show_progress=False)
    systems = ("base", "rules", "rules-no_uniform")
    references = ("reference-constant", "reference-echo", "reference-empty")
    assert set(outcome.statuses) == {
        f"{stage}/{bench}/{name}" for stage in ("generate", "eval") for bench in ("ifsuite", "ifeval") for name in systems
    } | {f"eval/{bench}/{name}" for bench in ("ifsuite", "ifeval") for name in references} | {"report/report"}
    outputs = {
        name: json.loads((tmp_path / "run" / "generate" / "ifsuite" / name / "outputs.json").read_text())
        for name in ("base", "rules", "rules-no_uniform")
    }
    assert outputs["rules"] != outputs["base"]  # the adapter changes greedy decoding
    # the uniform rule penalises "<" by 4 nats: the base restarts the chat template with "<|user|>", the full adapter never
    # does here, and the adapter without the uniform rule is free to again
    assert not any("<|user|>" in r["output"] for r in outputs["rules"])
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "google/gemma-3-270m shipped as a Q4_K_M GGUF" in md
    assert "| rules-no_uniform |" in md and "24.4 ± 0.40" in md
