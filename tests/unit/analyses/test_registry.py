"""The analysis contract's registries: an analysis defined only here, and registered, runs in
``iit diff`` and in the pipeline's diff step and gets a section of the report, with no edit
anywhere else. Also: the one JSON envelope, read back through the result registry."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from implicit_it.analyses import DeltaObserver, LayerDiff, PassAnalysis, register_diff_analysis, unregister_diff_analysis
from implicit_it.analysis import (
    RESULT_FORMAT,
    AnalysisResult,
    entries_of,
    new_figure,
    read_result,
    register_result,
    registered_results,
    result_class,
    unregister_result,
)
from implicit_it.errors import UserError

TOY = "toy_agreement"


class ToyAgreementResult(AnalysisResult):
    """Toy top-1 agreement per layer

    How often base and variant pick the same top-1 token through the logit lens (a test's analysis)."""

    name = TOY

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], **layer} for e in self.entries for layer in e["layers"]])

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(5, 3))
        for e in self.entries:
            ax.plot([layer["layer"] for layer in e["layers"]], [layer["agreement"] for layer in e["layers"]], "-o", label=e["variant"])
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
        return fig


class ToyObserver(DeltaObserver):
    def __init__(self, delta_pass: Any, min_layer: int = 0):
        self.layers = [layer for layer in delta_pass.layers if layer >= min_layer]
        self.agree: dict[int, int] = defaultdict(int)
        self.n: dict[int, int] = defaultdict(int)

    def observe(self, ctx: Any, layer: int, lens: Any) -> None:
        if layer not in self.layers:
            return
        self.agree[layer] += int((lens.base.argmax(-1) == lens.variant.argmax(-1)).sum())
        self.n[layer] += int(lens.base.shape[0])

    def result(self, label: str, counts: dict[str, int]) -> ToyAgreementResult:
        layers = [
            {"layer": layer, "agreement": self.agree[layer] / max(1, self.n[layer]), "positions": self.n[layer]} for layer in self.layers
        ]
        return ToyAgreementResult([{"variant": label, "layers": layers, **counts}])


class ToyOptions(BaseModel):
    """The toy analysis's own option, declared beside it: no file of the package names it."""

    model_config = ConfigDict(extra="forbid")
    min_layer: int = Field(default=0, ge=0, description="report layers from this one on")


class ToyAgreement(PassAnalysis):
    name = TOY
    Options = ToyOptions

    def __init__(self, min_layer: int = 0):
        self.min_layer = min_layer

    def observer(self, delta_pass: Any) -> ToyObserver:
        return ToyObserver(delta_pass, self.min_layer)


@pytest.fixture(scope="module")
def toy_registered():
    register_result(ToyAgreementResult)
    register_diff_analysis(ToyAgreement)
    yield
    unregister_diff_analysis(TOY)
    unregister_result(TOY)


@pytest.fixture(scope="module")
def variant_dir(tiny_llama_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("toy-variant")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


def _toy_entries(path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    assert data["analysis"] == TOY and data["format"] == RESULT_FORMAT
    return data["results"]


def test_every_result_registers_and_every_file_has_one_envelope(tmp_path):
    import implicit_it.analyses  # noqa: F401  (the rooms register their results on import)
    import implicit_it.evaluation  # noqa: F401
    import implicit_it.probes  # noqa: F401

    names = set(registered_results())
    assert {"ranking", "layerwise_ranking", "probe", "weights", "logits", "rules", "shift"} <= names
    assert {"ifeval", "ifsuite", "alpaca_eval", "similarity"} <= names
    cls = result_class("ifsuite")
    result = cls([{"model": "a", "strict_accuracy": 0.5}])
    data = result.to_json()
    assert set(data) == {"analysis", "format", "class", "results"} and data["results"] == result.entries
    assert result.summary()["strict_accuracy"] == 0.5  # a single-model result's one entry
    again = read_result(json.loads(json.dumps(data)))
    assert type(again) is cls and again.entries == result.entries
    # only the envelope is a result: a bare entry or a bare {"results": [...]} is refused, naming the file
    with pytest.raises(UserError, match=r"ifsuite\.json: not an analysis result"):
        cls.from_json({"model": "a", "strict_accuracy": 0.5}, "ifsuite.json")
    with pytest.raises(UserError, match="not an analysis result"):
        entries_of({"results": [{"model": "a"}, {"model": "b"}]})
    with pytest.raises(ValueError):
        result_class("ranking").from_json(data)  # an ifsuite file is not a ranking


def test_a_registered_result_name_is_taken_once():
    class Other(ToyAgreementResult):
        pass

    register_result(ToyAgreementResult)
    try:
        with pytest.raises(ValueError, match="taken"):
            register_result(Other)
    finally:
        unregister_result(TOY)


def test_layer_diff_runs_a_registered_analysis_by_default(toy_registered):
    from implicit_it.analyses import ANALYSES

    assert TOY in ANALYSES and TOY in LayerDiff().analyses
    assert [type(a).__name__ for a in LayerDiff().pass_analyses()][-1] == "ToyAgreement"


def test_iit_diff_writes_a_registered_analysis(toy_registered, tiny_llama_dir, variant_dir, shared_data, tmp_path):
    from typer.testing import CliRunner

    from implicit_it.app.cli import app

    out = tmp_path / "diff"
    args = ["diff", "--base", str(tiny_llama_dir), "--variant", str(variant_dir), "--data", str(shared_data / "lima" / "train.jsonl")]
    args += ["--limit", "2", "--max-length", "96", "--texts", "data", "--analyses", "all", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    entries = _toy_entries(out / f"{TOY}.json")
    assert [e["variant"] for e in entries] == [str(variant_dir)]
    assert [layer["layer"] for layer in entries[0]["layers"]][-1] == 2 and entries[0]["layers"][0]["agreement"] == 1.0
    assert (out / f"{TOY}.png").stat().st_size > 0 and (out / f"{TOY}.parquet").is_file()


def test_a_registered_analysis_declares_its_own_option(toy_registered, tiny_llama_dir, variant_dir, shared_data, tmp_path):
    """An analysis with an option, added by its own module alone: `iit diff --set analysis_options=...` (and the study's
    run.diff.analysis_options) reaches it, and a bad value is one error naming the field before any model loads."""
    from typer.testing import CliRunner

    from implicit_it.app.cli import app

    out = tmp_path / "diff"
    args = ["diff", "--base", str(tiny_llama_dir), "--variant", str(variant_dir), "--data", str(shared_data / "lima" / "train.jsonl")]
    args += ["--limit", "2", "--max-length", "96", "--texts", "data", "--analyses", TOY, "--out", str(out), "--quiet"]
    res = CliRunner().invoke(app, [*args, "--set", f"analysis_options={{{TOY}: {{min_layer: 1}}}}"])
    assert res.exit_code == 0, res.output
    assert [layer["layer"] for layer in _toy_entries(out / f"{TOY}.json")[0]["layers"]] == [2]  # of 0 and 2 (every:3)
    bad = CliRunner().invoke(app, [*args, "--set", f"analysis_options={{{TOY}: {{min_layer: -1}}}}"])
    assert bad.exit_code == 2 and f"analysis_options.{TOY}.min_layer" in bad.output
    other = CliRunner().invoke(app, [*args, "--set", "analysis_options={logits: {top_n: 3}}"])
    assert other.exit_code == 2 and "name no selected analysis" in other.output


def test_the_pipeline_diffs_and_reports_a_registered_analysis(toy_registered, tiny_llama_dir, shared_data, tmp_path):
    from implicit_it.app.config import parse_config
    from implicit_it.app.pipeline import run_study
    from tests.helpers import study_config_dict

    data = study_config_dict(tiny_llama_dir, shared_data)
    data["data"].pop("single_task")
    data["training"].update(variants=["response"], max_steps=1)
    data["run"]["generate"].update(ifsuite_prompts=2, max_new_tokens=4, rule_sets=["all"], samples=1)
    data["run"]["rank"]["enabled"] = False
    data["run"]["probe"]["enabled"] = False
    data["run"]["diff"].update(limit=2, texts=["data"])
    data["run"]["eval"]["ifeval"] = False
    run_dir = tmp_path / "run"
    outcome = run_study(parse_config(data), run_dir, show_progress=False)
    assert outcome.statuses["diff/response.s0"] == "ran"
    entries = _toy_entries(run_dir / "diff" / "response.s0" / f"{TOY}.json")
    assert [e["variant"] for e in entries] == ["response.s0"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "## Toy top-1 agreement per layer" in md and f"![result-{TOY}](figures/result-{TOY}.png)" in md
    assert (run_dir / "report" / "figures" / f"result-{TOY}.png").stat().st_size > 0
    html = (run_dir / "report" / "report.html").read_text()
    assert f'id="result-{TOY}"' in html


def test_the_report_gives_a_registered_result_a_section_and_draws_it_with_its_plot(toy_registered, tmp_path):
    from implicit_it.io import atomic_write_json
    from implicit_it.reports import write_report

    run_dir = tmp_path / "run"
    for system, agreement in (("response.s0", 0.5), ("instruction.s0", 0.75)):
        step = run_dir / "diff" / system
        atomic_write_json(step / "step.json", {"stage": "diff", "name": system, "meta": {"system": system}, "summary": {}, "seconds": 1.0})
        layers = [{"layer": layer, "agreement": agreement, "positions": 10} for layer in (0, 1, 2)]
        ToyAgreementResult([{"variant": system, "layers": layers}]).save(step)
    paths = write_report(run_dir)
    md = paths["markdown"].read_text()
    assert "## Toy top-1 agreement per layer" in md and "How often base and variant pick the same top-1 token" in md
    assert "| variant | layer | agreement | positions |" in md and "| instruction.s0 | 2 | 0.75 | 10 |" in md
    assert f"![result-{TOY}](figures/result-{TOY}.png)" in md
    png = (run_dir / "report" / "figures" / f"result-{TOY}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert f'id="result-{TOY}"' in paths["html"].read_text()


def test_a_probes_run_is_its_result_with_extras():
    from implicit_it.probes import ProbeResult, RankingResult, RankingRun
    from implicit_it.probes.linear import ProbeRun

    assert issubclass(RankingRun, RankingResult)
    entry = {"model": "m", "pool": "mean", "n_layers": 1, "layers": [{"layer": 0, "accuracy": 0.5, "std": 0.0}]}
    run = ProbeRun(ProbeResult([entry]), n_examples=8, seconds=1.5)
    assert isinstance(run, ProbeResult) and (run.n_examples, run.seconds) == (8, 1.5)
    assert type(run.result) is ProbeResult and run.result.entries == [entry]
    merged = run.merge(ProbeRun([{**entry, "model": "n"}], 8, 1.0))
    assert type(merged) is ProbeResult and [e["model"] for e in merged.entries] == ["m", "n"]
    assert run.to_json()["class"] == "implicit_it.probes.linear:ProbeResult"
