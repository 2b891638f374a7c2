"""``run.generate.proxy_systems`` in ``iit run`` and ``iit generate -m proxy:...`` on a tiny random llama."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import StudyPlan, run_study
from implicit_it.errors import ConfigError
from tests.helpers import study_config_dict


def _data(tiny_llama_dir, shared_data, **generate):
    data = study_config_dict(tiny_llama_dir, shared_data)
    data["training"].update({"variants": ["response"], "max_steps": 1})
    data["run"].update(
        {
            "generate": {
                "ifsuite_prompts": 2,
                "max_new_tokens": 5,
                "rule_sets": [],
                "proxy_systems": ["response@1.0", "response@0"],
                **generate,
            },
            "rank": {"enabled": False},
            "probe": {"enabled": False},
            "diff": {"enabled": False},
        }
    )
    return data


def _outputs(run, name):
    return [r["output"] for r in json.loads((run / "generate" / name / "outputs.json").read_text())]


def test_proxy_systems_generate_and_are_scored_like_every_system(tiny_llama_dir, shared_data, tmp_path):
    """α = 1 reproduces the trained variant, α = 0 the base; both reach the IF suite and IFEval; keys carry alpha and expert."""
    cfg = parse_config(_data(tiny_llama_dir, shared_data))
    steps = {s.id: s for s in StudyPlan(cfg, tmp_path / "plan", show_progress=False).build()}
    one, zero = steps["generate/ifsuite/proxy-response@1"], steps["generate/ifsuite/proxy-response@0"]
    assert one.config["proxy"] == {"expert": "response.s0", "anti": "base", "alpha": 1.0}
    assert one.key != zero.key and steps["train/response.s0"] in one.inputs
    assert {"eval/ifsuite/proxy-response@1", "eval/ifeval/proxy-response@0"} <= set(steps)
    run = tmp_path / "run"
    outcome = run_study(cfg, run, show_progress=False)
    assert outcome.statuses["eval/ifeval/proxy-response@1"] == "ran"
    assert _outputs(run, "ifsuite/response.s0") != _outputs(run, "ifsuite/base")  # so the two end points tell them apart
    for bench in ("ifsuite", "ifeval"):
        assert _outputs(run, f"{bench}/proxy-response@1") == _outputs(run, f"{bench}/response.s0")
        assert _outputs(run, f"{bench}/proxy-response@0") == _outputs(run, f"{bench}/base")
    manifest = json.loads((run / "generate" / "ifsuite" / "proxy-response@1" / "manifest.json").read_text())
    assert manifest["model"]["proxy"]["alpha"] == 1.0
    report = (run / "report" / "report.md").read_text()
    table4 = report[report.index("## Table 4") :]
    assert "| proxy-response@1 |" in table4[: table4.index("\n## ")] and "| proxy-response@0 |" in table4


def test_proxy_systems_are_judged_and_checked_when_planned(tiny_llama_dir, shared_data, tmp_path):
    data = _data(tiny_llama_dir, shared_data, instructions=str(shared_data / "lima" / "val_instructions.jsonl"), instructions_limit=2)
    data["training"]["variants"] = ["instruction", "response"]
    data["run"]["eval"].update({"judge": "local:x", "reference": "instruction"})
    ids = {s.id for s in StudyPlan(parse_config(data), tmp_path / "a", show_progress=False).build()}
    assert "eval/alpaca/proxy-response@0.5" not in ids and "eval/alpaca/proxy-response@1" in ids
    data["run"]["generate"]["proxy_systems"] = ["single_task-gsm@1"]
    with pytest.raises(ConfigError, match=r"run.generate.proxy_systems: 'single_task-gsm@1' names no variant of this study"):
        StudyPlan(parse_config(data), tmp_path / "b").build()
    data["run"]["generate"].update(proxy_systems=["response@1"], backend="vllm")
    steps = {s.id: s for s in StudyPlan(parse_config(data), tmp_path / "c").build()}
    assert "backend" in steps["generate/ifsuite/response.s0"].config  # the variant decodes on vLLM, the proxy on hf
    assert "backend" not in steps["generate/ifsuite/proxy-response@1"].config


def test_iit_generate_decodes_with_a_proxy(tiny_llama_dir, bytelevel_tokenizer, shared_data, tmp_path):
    from tests.conftest import save_tiny_model

    expert = save_tiny_model("llama", bytelevel_tokenizer, tmp_path / "expert-model", seed=3)
    instructions = str(shared_data / "lima" / "val_instructions.jsonl")

    def generate(model: str, out: str) -> list[str]:
        args = [
            "generate",
            "-m",
            model,
            "-i",
            instructions,
            "-o",
            str(tmp_path / out),
            "--instructions-limit",
            "3",
            "--max-new-tokens",
            "4",
            "--quiet",
        ]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        return [r["output"] for r in json.loads((tmp_path / out).read_text())]

    assert generate(f"proxy:{expert}-{tiny_llama_dir}@1", "proxy.json") == generate(str(expert), "expert.json")
    res = runner.invoke(app, ["generate", "-m", "proxy:a-b@1", "-i", instructions, "-o", str(tmp_path / "x.json"), "--quiet"])
    assert res.exit_code != 0 and "no '-' splits it into two models that exist here" in res.output


runner = CliRunner()
