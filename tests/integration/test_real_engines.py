"""The vLLM backend on the real Gemma-3-270M (Q4_K_M GGUF, dequantized; vLLM serves the dequantized cache) against the
hf backend in fp32: 32 IFEval prompts x 128 new tokens, greedy, with and without the rule adapter.

* vLLM in **fp32** is the same computation as hf: token-identical except at near-ties within fp32 noise. This proves the
  engine path (prompt ids, stop ids, the rule adapter inside vLLM) exact on the real model.
* vLLM in **bf16** (the demo's engine) changes the arithmetic, so greedy outputs may part where two tokens score close:
  every parting is at a pair of tokens whose scores bf16 moves past each other, both within the largest score
  disagreement the two runs show where their texts still agree (measured: 30/32 and 20/32 prompts token-identical
  without and with the rules; the rule adapter's penalties make near-ties common: 23% of its steps).

Three comparisons, each with an engine start-up, against two hf runs (with and without rules; the one with rules
serves both dtypes). Both fp32 comparisons, with and
without rules, were 32/32 token-identical when measured (`benchmarks/engine_equality.py`, README)."""

from __future__ import annotations

import json

import pytest

from implicit_it.config import VllmConfig
from implicit_it.rules import RuleConfig

pytest.importorskip("vllm", reason="the vllm backend's tests need vLLM: bash scripts/setup.sh --vllm")
pytestmark = [pytest.mark.real_model, pytest.mark.vllm, pytest.mark.slow]

from implicit_it.engines import HfReference, close_engine, compare_backends, hf_reference  # noqa: E402
from implicit_it.models import model_directory  # noqa: E402

N_PROMPTS, TOKENS = 32, 128


@pytest.fixture(scope="module")
def ifeval_prompts(shared_data):
    lines = (shared_data / "ifeval" / "input_data.jsonl").read_text(encoding="utf-8").splitlines()
    yield [json.loads(line)["prompt"] for line in lines[:N_PROMPTS]]
    close_engine()


_HF: dict[bool, HfReference] = {}  # the hf fp32 run with / without rules, decoded once for both engine dtypes


def _compare(real_gemma, prompts, dtype, rules):
    key = rules is not None
    if key not in _HF:
        _HF[key] = hf_reference(real_gemma, prompts, max_new_tokens=TOKENS, batch_size=16, rule_config=rules)
    cmp = compare_backends(
        real_gemma,
        prompts,
        VllmConfig(dtype=dtype),
        model_dir=model_directory("gemma-3-270m"),
        max_new_tokens=TOKENS,
        batch_size=16,
        rule_config=rules,
        reference=_HF[key],
    )
    print(f"\n{dtype} {'rules' if rules else 'plain'}: {cmp.detail}")
    return cmp


def test_vllm_fp32_equals_hf_fp32(real_gemma, ifeval_prompts):
    """With the rule adapter, which covers the plain path too (its scores are added to the same base logits)."""
    cmp = _compare(real_gemma, ifeval_prompts, "float32", RuleConfig())
    assert cmp.ok, cmp.detail
    assert cmp.tol < 0.05, cmp.detail  # fp32 noise: a near-tie here is a real tie, not a bf16-sized gap


@pytest.mark.parametrize("rules", [None, RuleConfig()], ids=["plain", "rules"])
def test_vllm_bf16_parts_from_hf_fp32_only_where_bf16_moves_the_scores(real_gemma, ifeval_prompts, rules):
    cmp = _compare(real_gemma, ifeval_prompts, "bfloat16", rules)
    assert cmp.ok, cmp.detail
    # With rules ~21% of steps have a top-2 gap within bf16 noise, so over 128 steps whole-prompt identity is a coin
    # flip per prompt: 15/32 on one clean-clone CI run, more on another. The claim is cmp.ok (every parting at a near-tie).
    assert cmp.identical >= (N_PROMPTS // 2 if rules is None else N_PROMPTS // 4), cmp.detail
    # bf16 noise of a fraction of a logit, not a different model. The 99th percentile, not the maximum: over ~4,000
    # steps a single outlier reached 1.3 logits on one CI run (0.22 at the 99th percentile), which is still bf16.
    assert cmp.noise["q99"] < 0.5, cmp.detail
