"""Proxy-tuning on tiny random models: the spec parse, alpha's end points, batching, the shared-tokenizer check."""

from __future__ import annotations

import pytest

from implicit_it.config import GenerateConfig
from implicit_it.engines import generate
from implicit_it.errors import ConfigError, ModelSpecError
from implicit_it.generation import generate_responses
from implicit_it.models import load_model
from implicit_it.proxy import ProxyModels, ProxySpec, load_proxy, parse_proxy_spec
from implicit_it.rules import RuleConfig
from tests.conftest import save_tiny_model

INSTRUCTIONS = ["Hi", "Explain why the sky is blue in detail please", "List three fruits.", "What is 2+2?", "Write a haiku"]
CFG = GenerateConfig(max_new_tokens=10, batch_size=4)


@pytest.fixture(scope="module")
def expert_dir(bytelevel_tokenizer, tmp_path_factory):
    """Another random llama on the same tokenizer: the 'trained variant'."""
    return save_tiny_model("llama", bytelevel_tokenizer, tmp_path_factory.mktemp("proxy-expert"), seed=1)


@pytest.fixture(scope="module")
def anti_dir(bytelevel_tokenizer, tmp_path_factory):
    return save_tiny_model("llama", bytelevel_tokenizer, tmp_path_factory.mktemp("proxy-anti"), seed=2)


def _ids(decoded) -> list[list[int]]:
    return [r.token_ids for r in decoded.results]


def _plain(spec, cfg=CFG, **kw):
    return _ids(generate(str(spec), INSTRUCTIONS, cfg, show_progress=False, **kw))


# ------------------------------------------------------------------ the spec


def test_short_form_splits_at_the_one_dash_where_both_sides_exist():
    known = {"gemma-3-270m", "gemma-3-270m-ft", "org/a-b"}.__contains__
    assert parse_proxy_spec("proxy:gemma-3-270m-ft-gemma-3-270m@0.5", known) == ProxySpec("gemma-3-270m-ft", "gemma-3-270m", 0.5)
    assert parse_proxy_spec("proxy:org/a-b-gemma-3-270m@-1", known) == ProxySpec("org/a-b", "gemma-3-270m", -1.0)
    with pytest.raises(ModelSpecError, match=r"several '-'.*'a' \| 'b-c'.*'a-b' \| 'c'.*proxy:expert="):
        parse_proxy_spec("proxy:a-b-c@1", {"a", "a-b", "b-c", "c"}.__contains__)
    with pytest.raises(ModelSpecError, match=r"no '-' splits it.*proxy:expert=<spec>"):
        parse_proxy_spec("proxy:gemma-3-270m-nope@1", known)
    with pytest.raises(ModelSpecError, match=r"no '@<alpha>'"):
        parse_proxy_spec("proxy:gemma-3-270m-ft-gemma-3-270m", known)
    with pytest.raises(ModelSpecError, match="alpha must be a finite number, got 'nan'"):
        parse_proxy_spec("proxy:gemma-3-270m-ft-gemma-3-270m@nan", known)


def test_short_form_checks_real_directories(tmp_path):
    """Paths hold '-' of their own (pytest's tmp dirs too): only the split into two model directories resolves."""
    for name in ("base-model", "base-model-ft"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    spec = parse_proxy_spec(f"proxy:{tmp_path}/base-model-ft-{tmp_path}/base-model@0.25")
    assert spec == ProxySpec(f"{tmp_path}/base-model-ft", f"{tmp_path}/base-model", 0.25)
    assert spec.base_spec == spec.anti


def test_explicit_form():
    spec = parse_proxy_spec("proxy:expert=runs/x-y/a,b,anti=gemma-3-270m,alpha=2,base=org/big-model")
    assert spec == ProxySpec("runs/x-y/a,b", "gemma-3-270m", 2.0, "org/big-model") and spec.base_spec == "org/big-model"
    assert parse_proxy_spec(str(spec)) == spec  # str() is the explicit form
    with pytest.raises(ModelSpecError, match="missing alpha="):
        parse_proxy_spec("proxy:expert=a,anti=b")
    with pytest.raises(ModelSpecError, match="anti= given twice"):
        parse_proxy_spec("proxy:expert=a,anti=b,anti=c,alpha=1")
    with pytest.raises(ModelSpecError, match="alpha must be a finite number, got 'x'"):
        parse_proxy_spec("proxy:expert=a,anti=b,alpha=x")


# ------------------------------------------------------------------ decoding


def test_alpha_one_decodes_as_the_expert_and_alpha_zero_as_the_base(tiny_llama_dir, expert_dir):
    base, expert = _plain(tiny_llama_dir), _plain(expert_dir)
    assert base != expert  # two different models, so the end points tell them apart
    assert _plain(f"proxy:{expert_dir}-{tiny_llama_dir}@1") == expert  # the short form, on real paths
    assert _plain(f"proxy:expert={expert_dir},anti={tiny_llama_dir},alpha=0") == base


def test_rule_adapter_follows_the_proxy(tiny_llama_dir, expert_dir):
    rules = RuleConfig()
    proxied = _plain(f"proxy:expert={expert_dir},anti={tiny_llama_dir},alpha=1", rule_config=rules)
    assert proxied == _plain(expert_dir, rule_config=rules)


def test_batched_equals_batch_one_with_three_distinct_models(tiny_llama_dir, expert_dir, anti_dir):
    proxy = load_proxy(f"proxy:expert={expert_dir},anti={anti_dir},alpha=0.7,base={tiny_llama_dir}", device="cpu")
    assert len({id(proxy.base), id(proxy.expert), id(proxy.anti)}) == 3

    def run(batch_size: int) -> list[list[int]]:
        results, _ = generate_responses(
            proxy,
            INSTRUCTIONS,
            max_new_tokens=10,
            batch_size=batch_size,
            logits_processor_factory=proxy.logits_processor,
            show_progress=False,
        )
        return [r.token_ids for r in results]

    batched = run(4)
    assert batched == run(1)
    assert batched != _plain(tiny_llama_dir) and batched != _plain(expert_dir)
    assert proxy.describe()["proxy"]["alpha"] == 0.7


def test_default_anti_expert_is_the_base_itself(tiny_llama_dir, expert_dir):
    proxy = load_proxy(ProxySpec(str(expert_dir), str(tiny_llama_dir), 0.5), device="cpu")
    assert proxy.anti is proxy.base  # its scores are the base's own: not run twice


def test_models_with_different_tokenizers_are_one_error(tiny_llama_dir, merging_tokenizer, tmp_path):
    other = save_tiny_model("llama", merging_tokenizer, tmp_path / "other-tok")
    with pytest.raises(ModelSpecError, match=r"one shared tokenizer: the expert \(.*other-tok.*\) differs from the base"):
        ProxyModels(
            ProxySpec("x", "y", 1.0),
            load_model(tiny_llama_dir, device="cpu"),
            load_model(other, device="cpu"),
            load_model(tiny_llama_dir, device="cpu"),
        )


def test_vllm_backend_is_refused(tiny_llama_dir, expert_dir):
    with pytest.raises(ConfigError, match="proxy-tuning runs on the hf backend only"):
        generate(f"proxy:expert={expert_dir},anti={tiny_llama_dir},alpha=1", INSTRUCTIONS, GenerateConfig(backend="vllm"))


@pytest.mark.parametrize("arch", ["gemma3", "olmo"])
def test_other_architectures_keep_the_end_points_and_batching(arch, bytelevel_tokenizer, tmp_path):
    """gemma3's sliding-window cache and olmo's layout: the expert's own KV cache still reproduces it."""
    base, expert = (save_tiny_model(arch, bytelevel_tokenizer, tmp_path / name, seed=s) for name, s in (("b", 0), ("e", 1)))
    spec = f"proxy:expert={expert},anti={base},alpha="
    assert _plain(spec + "1") == _plain(expert) != _plain(base)
    assert _plain(spec + "0.5") == _plain(spec + "0.5", GenerateConfig(max_new_tokens=10, batch_size=1))
