"""The vLLM backend against the hf one on tiny random models (gemma3 and llama shapes, head_dim 32: vLLM's CPU
attention has no kernel for the other tests' 16).

In fp32 both backends must give the same tokens, with and without the rule adapter and for each of the paper's
ablations; in bf16 they may part only at a near-tie. Each engine start costs ~25 s on 2 CPU cores, so the tests share
engines: the module asks for each (model, settings) once, and the held engine is reused.
"""

from __future__ import annotations

import pytest

from implicit_it.config import RULE_SET_NAMES, RULE_SETS, GenerateConfig, VllmConfig
from implicit_it.rules import RuleConfig

pytest.importorskip("vllm", reason="the vllm backend's tests need vLLM: bash scripts/setup.sh --vllm")
pytestmark = pytest.mark.vllm

from implicit_it.engines import close_engine, compare_backends, generate, vllm_engine  # noqa: E402  (after the skip: imports vLLM lazily)
from tests.conftest import save_tiny_model  # noqa: E402

# Different lengths (so the hf batches are left-padded) and one that repeats itself (the diversity rule bites).
INSTRUCTIONS = [
    "Write a poem about cats.",
    "What is 2+2?",
    "List three colors",
    "Explain gravity to a child in simple words, please, with an example from the kitchen.",
    "Name a fruit.",
    "Give me a recipe for pancakes with blueberries and maple syrup, step by step.",
    "Why is the sky blue?",
    "Translate 'good morning' into French and Spanish.",
]
TOKENS = 24
FP32 = VllmConfig(dtype="float32")


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def vllm_tiny_dir(request, bytelevel_tokenizer, tmp_path_factory):
    path = save_tiny_model(request.param, bytelevel_tokenizer, tmp_path_factory.mktemp(f"vllm-{request.param}"), head_dim=32)
    yield path
    close_engine()


def _both(model_dir, rules: RuleConfig | None, settings: VllmConfig = FP32):
    hf = generate(str(model_dir), INSTRUCTIONS, GenerateConfig(max_new_tokens=TOKENS, batch_size=3), rule_config=rules, show_progress=False)
    cfg = GenerateConfig(max_new_tokens=TOKENS, batch_size=3, backend="vllm", vllm=settings)
    vl = generate(str(model_dir), INSTRUCTIONS, cfg, rule_config=rules, show_progress=False)
    return hf, vl


def _tokens(decoded):
    return [(r.token_ids, r.stopped) for r in decoded.results]


def test_fp32_vllm_equals_hf_token_for_token(vllm_tiny_dir):
    plain_hf, plain_vl = _both(vllm_tiny_dir, None)
    assert _tokens(plain_vl) == _tokens(plain_hf)
    assert [r.output for r in plain_vl.results] == [r.output for r in plain_hf.results]
    assert plain_vl.engine["backend"] == "vllm" and plain_vl.engine["dtype"] == "float32" and plain_vl.engine["engine"].startswith("vllm")
    assert plain_hf.engine["backend"] == "hf" and plain_vl.loaded is None
    rules_hf, rules_vl = _both(vllm_tiny_dir, RuleConfig())
    assert _tokens(rules_vl) == _tokens(rules_hf)
    # the adapter ran inside vLLM: it changed the outputs (EOS ramp, penalties), so equality above was not vacuous
    assert _tokens(rules_vl) != _tokens(plain_vl)
    assert sum(r.stopped for r in rules_vl.results) > sum(r.stopped for r in plain_vl.results)


@pytest.mark.parametrize("rule_set", [n for n in RULE_SET_NAMES if n != "all"])
def test_fp32_vllm_equals_hf_for_each_ablation(vllm_tiny_dir, rule_set):
    hf, vl = _both(vllm_tiny_dir, RuleConfig().with_rules(list(RULE_SETS[rule_set])))
    assert _tokens(vl) == _tokens(hf)


def test_start_rule_and_response_scope_inside_vllm(vllm_tiny_dir):
    """The non-default constants travel to the engine process with each request."""
    cfg = RuleConfig(rules=["eos", "uniform", "diversity", "start"], diversity_scope="response", eos_slope=0.5, eos_max_length=12)
    hf, vl = _both(vllm_tiny_dir, cfg)
    assert _tokens(vl) == _tokens(hf)


def test_engine_is_started_once_per_model_and_settings(vllm_tiny_dir):
    first = vllm_engine(str(vllm_tiny_dir), FP32, max_num_seqs=3)
    again = vllm_engine(str(vllm_tiny_dir), FP32, max_num_seqs=3)
    assert again is first and first.llm is not None


def test_bf16_vllm_parts_from_fp32_hf_only_at_near_ties(vllm_tiny_dir):
    """bf16 rounding may flip a near-tie; where the runs part, each run's token scored within the tolerance of the
    other's best (the GPU check's rule, with its bf16 tolerance)."""
    from implicit_it.models import load_model

    loaded = load_model(str(vllm_tiny_dir))
    for rules in (None, RuleConfig()):
        cmp = compare_backends(
            loaded,
            INSTRUCTIONS,
            VllmConfig(dtype="bfloat16"),
            model_dir=str(vllm_tiny_dir),
            max_new_tokens=TOKENS,
            batch_size=3,
            rule_config=rules,
        )
        assert cmp.ok, cmp.detail
        assert cmp.identical >= 1


def test_comparison_catches_a_different_model(vllm_tiny_dir, bytelevel_tokenizer, tmp_path):
    """The check can fail: vLLM serving another random model parts from the hf model far from any tie."""
    from implicit_it.models import load_model

    if "llama" in str(vllm_tiny_dir):
        pytest.skip("one architecture is enough to show the check failing (an engine start-up each)")

    other = save_tiny_model(
        "llama" if "gemma3" in str(vllm_tiny_dir) else "gemma3", bytelevel_tokenizer, tmp_path / "other", seed=1, head_dim=32
    )
    cmp = compare_backends(load_model(str(vllm_tiny_dir)), INSTRUCTIONS, FP32, model_dir=str(other), max_new_tokens=TOKENS, batch_size=3)
    assert not cmp.ok and "parts at token" in cmp.detail
