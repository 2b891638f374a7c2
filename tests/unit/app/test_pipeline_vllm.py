"""``iit run`` with ``run.generate.backend: vllm`` on a tiny gemma3 (head_dim 32, which vLLM's CPU attention takes):
the generate steps decode on vLLM (fp32 here, so the outputs equal an hf run's), the base and the rule systems share
one engine, the step keys name the backend, and the run ends with no engine held."""

from __future__ import annotations

import json

import pytest

from implicit_it.app.config import parse_config

pytest.importorskip("vllm", reason="the vllm backend's tests need vLLM: bash scripts/setup.sh --vllm")
pytestmark = pytest.mark.vllm

import implicit_it.engines as engines  # noqa: E402
from implicit_it.app.pipeline import StudyPlan, run_study  # noqa: E402
from tests.conftest import save_tiny_model  # noqa: E402
from tests.helpers import study_config_dict  # noqa: E402


def _config(model_dir, shared_data, backend: str):
    data = study_config_dict(model_dir, shared_data)
    data["training"].update({"variants": ["response"], "max_steps": 1})
    data["run"]["generate"].update({"backend": backend, "vllm": {"dtype": "float32"}, "rule_sets": ["all", "no_eos"]})
    data["run"].update({"rank": {"enabled": False}, "probe": {"enabled": False}, "diff": {"enabled": False}})
    return parse_config(data)


def test_a_study_generates_on_vllm_with_one_engine_per_model(bytelevel_tokenizer, shared_data, tmp_path, monkeypatch):
    model_dir = save_tiny_model("gemma3", bytelevel_tokenizer, tmp_path / "tiny-gemma3", head_dim=32)
    starts: list[str] = []
    real_start = engines.VllmEngine.start

    def counting_start(self):
        starts.append(self.model_dir)
        return real_start(self)

    monkeypatch.setattr(engines.VllmEngine, "start", counting_start)
    vllm_cfg = _config(model_dir, shared_data, "vllm")
    outcome = run_study(vllm_cfg, tmp_path / "vllm", show_progress=False)
    assert outcome is not None
    # the base and both rule systems on one engine, then the variant on its own: two start-ups in all
    assert starts == [str(model_dir), str(tmp_path / "vllm" / "train" / "response.s0")]
    assert engines.held_engine() is None  # closed when the run ended

    gen = tmp_path / "vllm" / "generate"
    for system in ("base", "rules", "rules-no_eos", "response.s0"):
        step = json.loads((gen / "ifsuite" / system / "step.json").read_text())
        assert step["summary"]["engine"]["backend"] == "vllm", system
    keys = {s.id: s.config for s in StudyPlan(vllm_cfg, tmp_path / "vllm").build() if s.stage == "generate"}
    assert all(c["backend"] == "vllm" and c["vllm"]["dtype"] == "float32" for c in keys.values())
    hf_keys = {s.id: s.config for s in StudyPlan(_config(model_dir, shared_data, "hf"), tmp_path / "hf").build() if s.stage == "generate"}
    assert all("backend" not in c for c in hf_keys.values())  # hf keys are those of runs made before the switch existed

    # fp32 vLLM decodes what the hf backend decodes: the same records, system by system
    hf_cfg = _config(model_dir, shared_data, "hf")
    run_study(hf_cfg, tmp_path / "hf", show_progress=False)
    for system in ("base", "rules", "rules-no_eos"):
        for name in ("ifsuite", "ifeval"):
            a = json.loads((gen / name / system / "outputs.json").read_text())
            b = json.loads((tmp_path / "hf" / "generate" / name / system / "outputs.json").read_text())
            assert [r["output"] for r in a] == [r["output"] for r in b], (name, system)
