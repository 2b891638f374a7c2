"""Layer-diff analyses on tiny random models with planted, known deltas.

A variant whose only change is a bias on three unembedding rows must show zero weight delta
elsewhere and be explained ~100% by the fitted rule family at every layer; a "variant" that is
the base combined with the paper's rule adapter must be explained ~100% by the hand-written
rules, and the fit must recover the adapter's own constants (−1.5 per seen token, EOS slope 0.06).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from implicit_it.analyses import (
    FIT,
    DeltaPass,
    DeltaPassConfig,
    LayerDiff,
    LogitDelta,
    RuleComparison,
    RuleFamilyFit,
    TokenShift,
    WeightDelta,
    describe_tensor,
    split_halves,
    texts_from_source,
)
from implicit_it.analyses.delta_pass import DiffText, LensChunk
from implicit_it.data import read_ranking_source
from implicit_it.models import load_model
from implicit_it.rules import RuleAdapter

PLANTED = {10: 6.0, 20: -4.0, 30: 8.0}  # token id -> logit bias


@pytest.fixture(scope="module")
def lima_texts(shared_data):
    return texts_from_source(read_ranking_source(shared_data / "lima" / "train.jsonl", limit=10))


@pytest.fixture(scope="module")
def base(tiny_llama_dir):
    return load_model(tiny_llama_dir, device="cpu")


def with_unembedding_bias(loaded, bias: dict[int, float]):
    """A private copy of ``loaded`` whose lm_head adds ``bias`` to a few tokens' logits."""
    variant = load_model(loaded.source.spec, device="cpu", use_process_cache=False)
    head = variant.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    biased.bias.data.zero_()
    for token, value in bias.items():
        biased.bias.data[token] = value
    variant.model.lm_head = biased
    return variant


CONFIG = DeltaPassConfig(max_length=160, layers="all", lens_memory_mb=1)  # small buffers: chunks span and split texts


# ------------------------------------------------------------------ pure pieces


def test_describe_tensor_names_layer_module_and_kind():
    assert describe_tensor("model.layers.3.self_attn.q_proj.weight") == (4, "self_attn.q_proj", "q")
    assert describe_tensor("model.layers.0.mlp.down_proj.weight") == (1, "mlp.down_proj", "down")
    assert describe_tensor("model.layers.0.post_attention_layernorm.weight")[2] == "norm"
    assert describe_tensor("model.norm.weight") == (None, "norm", "final_norm")
    assert describe_tensor("model.embed_tokens.weight")[2] == "embedding"
    assert describe_tensor("lm_head.weight")[2] == "unembedding"
    assert describe_tensor("lm_head.bias")[2] == "unembedding_bias"


def _planted_panel(gen, n, vocab, eos, shift):
    seen = (torch.rand(n, vocab, generator=gen) < 0.2).float()
    n_gen = torch.randint(0, 200, (n,), generator=gen).float()
    y = 5 * torch.randn(n, 1, generator=gen) + shift - 1.5 * seen  # a free constant per position
    y[:, eos] += 0.06 * n_gen
    return y + 0.01 * torch.randn(n, vocab, generator=gen), seen, n_gen


def test_rule_family_recovers_planted_constants_and_scores_held_out():
    gen = torch.Generator().manual_seed(0)
    vocab, eos = 60, 3
    shift = torch.randn(vocab, generator=gen)
    fit = RuleFamilyFit(vocab, eos)
    for _ in range(3):
        fit.add_fit(*_planted_panel(gen, 40, vocab, eos, shift))
    fit.solve()
    assert fit.seen_coef == pytest.approx(-1.5, abs=2e-3)
    assert fit.eos_slope == pytest.approx(0.06, abs=1e-4)
    assert torch.allclose(fit.token_shift, (shift - shift.mean()).double(), atol=1e-2)
    y, seen, n_gen = _planted_panel(gen, 30, vocab, eos, shift)
    fit.add_heldout(y, seen, n_gen)
    # the streamed held-out residual equals the brute-force one
    pred = fit.token_shift[None] + fit.seen_coef * seen.double()
    pred[:, eos] += fit.eos_slope * n_gen.double()
    resid = y.double() - pred
    brute = float((resid - resid.mean(1, keepdim=True)).square().sum())
    assert fit.heldout["ss_family"] == pytest.approx(brute, rel=1e-3)
    assert fit.scores()["variance_explained_rule_family"] > 0.999


def test_rule_family_on_pure_noise_explains_nothing_held_out():
    gen = torch.Generator().manual_seed(1)
    fit = RuleFamilyFit(40, 0)
    for _ in range(2):
        fit.add_fit(torch.randn(50, 40, generator=gen), torch.zeros(50, 40), torch.arange(50.0))
    fit.add_heldout(torch.randn(50, 40, generator=gen), torch.zeros(50, 40), torch.arange(50.0))
    assert fit.scores()["variance_explained_rule_family"] < 0.05


def test_halves_keep_an_instructions_texts_together_and_follow_the_seed():
    texts = [DiffText(f"i{k}", "r", origin, k) for k in range(10) for origin in ("data", "generation")]
    halves = split_halves(texts, seed=0)
    for k in range(10):
        assert halves[2 * k] == halves[2 * k + 1]
    assert sorted(set(halves)) == [0, 1] and halves.count(FIT) == 10
    assert split_halves(texts, seed=0) == halves
    assert split_halves(texts, seed=1) != halves


# ------------------------------------------------------------------ weights


def _modified_copy(src, dst, change):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        change(model)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def test_weight_delta_finds_only_the_planted_unembedding_rows(tiny_llama_dir, tmp_path):
    gen = torch.Generator().manual_seed(0)
    rows = sorted(PLANTED)

    def change(model):
        model.lm_head.weight[rows] += 0.05 * torch.randn(len(rows), model.config.hidden_size, generator=gen)

    variant = _modified_copy(tiny_llama_dir, tmp_path / "rows", change)
    result = WeightDelta(rule_token_ids=rows, top_k=3).run(tiny_llama_dir, variant, label="rows")
    entry = result.entries[0]
    changed = [t for t in entry["tensors"] if t["delta_norm"] > 0]
    assert [t["tensor"] for t in changed] == ["lm_head.weight"]
    head = changed[0]
    assert 1 <= head["effective_rank"] <= 3 and head["topk_energy"] == pytest.approx(1.0)
    assert entry["unembedding_rule_rows"]["share_of_delta"] == pytest.approx(1.0)
    assert entry["unembedding_rule_rows"]["enrichment"] == pytest.approx(head["shape"][0] / len(rows))
    # the numbers are the plain computation, and streaming in row blocks changes nothing
    from safetensors.torch import load_file

    w0 = load_file(str(tiny_llama_dir / "model.safetensors"))["lm_head.weight"].double()
    w1 = load_file(str(variant / "model.safetensors"))["lm_head.weight"].double()
    assert head["relative_delta"] == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-5)
    assert head["cosine"] == pytest.approx(float((w0 * w1).sum() / (w0.norm() * w1.norm())), rel=1e-6)
    sv = torch.linalg.svdvals(w1 - w0)
    p = sv / sv.sum()
    assert head["effective_rank"] == pytest.approx(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), rel=1e-4)
    blocked = WeightDelta(rule_token_ids=rows, top_k=3, block_elements=500).run(tiny_llama_dir, variant).entries[0]
    for a, b in zip(entry["tensors"], blocked["tensors"], strict=True):
        for key in ("relative_delta", "cosine", "effective_rank"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, nan_ok=True), (a["tensor"], key)
    frame = result.to_frame()
    assert set(frame["kind"]) >= {"q", "k", "v", "o", "gate", "up", "down", "norm", "embedding", "unembedding", "final_norm"}


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_norm_deltas_are_relative_to_the_effective_scale(arch, bytelevel_tokenizer, tiny_llama_dir, tmp_path):
    """Gemma3RMSNorm scales by (1 + w): its rows divide by ‖1 + W‖; Llama's RMSNorm (w) is unchanged."""
    from safetensors.torch import load_file

    from implicit_it.analyses.weights import norm_offset
    from tests.conftest import save_tiny_model

    src = save_tiny_model("gemma3", bytelevel_tokenizer, tmp_path / "g") if arch == "gemma3" else tiny_llama_dir
    gen = torch.Generator().manual_seed(1)

    def change(model):
        for layer in model.model.layers:
            norms = [layer.input_layernorm] + ([layer.self_attn.q_norm] if arch == "gemma3" else [])
            for norm in norms:
                norm.weight += 0.3 + 0.1 * torch.randn(norm.weight.shape, generator=gen)  # gemma's init is w = 0
        model.model.layers[0].self_attn.q_proj.weight += 0.01

    base = _modified_copy(src, tmp_path / "base", change)  # a base with non-trivial norm weights
    variant = _modified_copy(
        base,
        tmp_path / "variant",
        lambda m: [
            n.weight.add_(0.2 * torch.randn(n.weight.shape, generator=gen)) for n in m.modules() if type(n).__name__.endswith("RMSNorm")
        ],
    )
    assert norm_offset(base) == (1.0 if arch == "gemma3" else 0.0)
    rows = {t["tensor"]: t for t in WeightDelta(top_k=2).run(base, variant).entries[0]["tensors"]}
    w0, w1 = load_file(str(base / "model.safetensors")), load_file(str(variant / "model.safetensors"))
    names = ["model.layers.0.input_layernorm.weight", "model.norm.weight"] + (
        ["model.layers.1.self_attn.q_norm.weight"] if arch == "gemma3" else []
    )
    off = 1.0 if arch == "gemma3" else 0.0
    for name in names:
        a, b = w0[name].double() + off, w1[name].double() + off  # by hand: the scale the norm applies
        assert rows[name]["norm_offset"] == off
        assert rows[name]["relative_delta"] == pytest.approx(float((b - a).norm() / a.norm()), rel=1e-5), name
        assert rows[name]["cosine"] == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())), rel=1e-6), name
        if arch == "gemma3":  # the plain ‖ΔW‖/‖W‖ would be larger
            assert rows[name]["relative_delta"] < float((b - a).norm() / w0[name].double().norm())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert rows[q]["norm_offset"] == 0.0 and rows[q]["delta_norm"] == 0.0  # projections are never offset


def test_lora_adapter_is_read_directly_and_matches_the_merged_model(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "adapter").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "merged")
    direct = WeightDelta().run(tiny_llama_dir, tmp_path / "adapter").entries[0]
    dense = WeightDelta().run(tiny_llama_dir, tmp_path / "merged").entries[0]
    assert direct["lora"] and not dense["lora"]
    assert direct["n_tensors_changed"] == dense["n_tensors_changed"] == 4  # q and down in 2 layers
    by_name = {t["tensor"]: t for t in dense["tensors"]}
    for t in direct["tensors"]:
        for key in ("relative_delta", "cosine", "effective_rank", "topk_energy"):
            assert t[key] == pytest.approx(by_name[t["tensor"]][key], rel=1e-3, abs=1e-6, nan_ok=True), (t["tensor"], key)
        if t["delta_norm"] > 0:
            assert t["effective_rank"] <= 4 + 1e-6
    # the logit analyses load an adapter directory as base + adapter, merged
    from implicit_it.analyses import load_variant

    from_adapter = load_variant(str(tmp_path / "adapter"), str(tiny_llama_dir), device="cpu")
    from_merged = load_model(tmp_path / "merged", device="cpu", use_process_cache=False)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(from_adapter.model(ids).logits, from_merged.model(ids).logits, atol=1e-5)
    assert from_adapter.loaded_from == "lora-merged"


# ------------------------------------------------------------------ logit analyses


def test_planted_unembedding_bias_is_all_rule_family_at_every_layer(base, lima_texts, tmp_path):
    variant = with_unembedding_bias(base, PLANTED)
    diff = LayerDiff(analyses=["logits", "rules", "shift"], texts=["data", "generations"], max_new_tokens=12, pass_config=CONFIG)
    run = diff.run(base, variant, lima_texts, base_spec=str(base.source.spec), variant_spec="planted")
    rules = run.results["rules"].entries[0]
    assert rules["n_fit_positions"] > 100 and rules["n_heldout_positions"] > 100
    for layer in rules["per_layer"]:  # the bias acts through the lens after every layer
        assert layer["variance_explained_rule_family"] > 0.999
        assert abs(layer["fitted_seen_coefficient"]) < 1e-3 and abs(layer["fitted_eos_slope"]) < 1e-4
    assert rules["emergence_layer"] == 0
    ups = [t["token_id"] for t in rules["top_token_shifts"]["up"][:2]]
    assert ups == [30, 10]
    assert rules["top_token_shifts"]["up"][0]["fitted_shift"] == pytest.approx(8.0, abs=0.05)
    logits = run.results["logits"].entries[0]
    assert all(layer["kl"] > 0.1 for layer in logits["layers"]) and logits["kl_emergence_layer"] == 0
    assert logits["promoted_tokens"][0]["token_id"] == 30
    shift = run.results["shift"].entries[0]
    assert shift["texts_used"] == "generation" and shift["n_positions"] > 0
    assert shift["unshifted"] + shift["marginal"] + shift["shifted"] == pytest.approx(1.0)
    assert shift["top_moved_tokens"][0]["token_id"] == 30  # the +8 token wins most positions
    for result in run.results.values():
        paths = result.save(tmp_path)
        assert all(p.stat().st_size > 0 for p in paths)
    saved = json.loads((tmp_path / "rules.json").read_text())["results"][0]
    assert {"variant", "variance_explained_rules", "variance_explained_rule_family", "emergence_layer", "per_layer"} <= set(saved)


class _CombinedWithRules:
    """Feeds the wrapped observer base ⊗ rules (the paper's product of experts) as the variant."""

    def __init__(self, inner):
        self.inner = inner

    def observe(self, ctx, layer, lens):
        combined = torch.log_softmax(lens.variant + torch.log_softmax(ctx.rule_scores, -1), -1)
        self.inner.observe(ctx, layer, LensChunk(lens.base, combined))

    def end_half(self, half):
        self.inner.end_half(half)


def test_the_rule_adapter_itself_is_explained_by_the_rules_and_recovered_by_the_family(base, lima_texts):
    adapter = RuleAdapter(base.tokenizer)
    delta_pass = DeltaPass(base, base, lima_texts, adapter, DeltaPassConfig(max_length=160, layers="2", lens_memory_mb=1))
    observer = RuleComparison().observer(delta_pass)
    counts = delta_pass.run([_CombinedWithRules(observer)])
    entry = observer.result("base+rules", counts).entries[0]
    assert entry["variance_explained_rules_unscaled"] > 0.9999 and entry["correlation_rules"] > 0.9999
    assert entry["rules_scale"] == pytest.approx(1.0, abs=1e-4)
    assert entry["variance_explained_rule_family"] > 0.999
    assert entry["fitted_seen_coefficient"] == pytest.approx(-1.5, abs=1e-3)
    assert entry["fitted_eos_slope"] == pytest.approx(0.06, abs=1e-4)
    resolved = [p for p in entry["paper_tokens"] if p["token_id"] is not None]
    assert resolved
    for p in resolved:  # constants relative to the median token in play, which the rules leave at 0
        assert p["fitted_shift"] == pytest.approx(p["paper_score"], abs=0.02), p


def test_output_layer_log_probs_are_the_models_own(base, lima_texts):
    """What the pass hands observers at layer L equals a plain HF forward, at the right positions."""
    seen = []

    class Record:
        def observe(self, ctx, layer, lens):
            rows = ctx.text_indices == 0
            if layer == 2 and rows.any():
                seen.append((ctx.n_generated[rows], ctx.targets[rows], lens.base[rows].clone(), lens.variant[rows].clone()))

        def end_half(self, half):
            pass

    delta_pass = DeltaPass(base, base, lima_texts[:2], RuleAdapter(base.tokenizer), CONFIG)
    delta_pass.run([Record()])
    n_gen = torch.cat([s[0] for s in seen])
    lp = torch.cat([s[2] for s in seen])
    assert torch.equal(lp, torch.cat([s[3] for s in seen]))  # same model: zero delta
    from implicit_it.formats import encode_example, get_format

    text = lima_texts[0]
    ex = encode_example(base.tokenizer, get_format("tulu"), text.instruction, text.response, max_length=160)
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        ref = torch.log_softmax(base.model(ids).logits[0].float(), -1)
    cols = ex.n_prompt_tokens - 1 + n_gen
    assert torch.allclose(lp, ref[cols, : lp.shape[1]], atol=1e-4)
    assert torch.equal(torch.cat([s[1] for s in seen]), ids[0, cols + 1])


def test_identical_variant_shows_no_shift(base, lima_texts):
    result = TokenShift().run(base, base, lima_texts[:4], config=CONFIG, label="same")
    entry = result.entries[0]
    assert entry["texts_used"] == "all" and entry["unshifted"] == 1.0 and entry["top_moved_tokens"] == []
    kl = LogitDelta().run(base, base, lima_texts[:4], config=CONFIG).entries[0]
    assert all(abs(layer["kl"]) < 1e-6 and layer["top1_agreement"] == 1.0 for layer in kl["layers"])
    assert kl["kl_emergence_layer"] is None


def test_bias_variant_saved_to_disk_changes_one_tensor(base, tiny_llama_dir, tmp_path):
    variant = with_unembedding_bias(base, PLANTED)
    variant.model.save_pretrained(tmp_path / "biased")
    entry = WeightDelta(rule_token_ids=sorted(PLANTED)).run(tiny_llama_dir, tmp_path / "biased").entries[0]
    changed = {t["tensor"]: t for t in entry["tensors"] if t["delta_norm"] > 0}
    assert list(changed) == ["lm_head.bias"] and changed["lm_head.bias"]["status"] == "added"
    assert changed["lm_head.bias"]["delta_norm"] == pytest.approx(float(np.sqrt(sum(v * v for v in PLANTED.values()))), rel=1e-6)


def test_emergence_is_where_explained_variance_appears_not_where_r2_is_high():
    from implicit_it.analyses import emergence_layer

    layers = [
        {"layer": 0, "variance_explained_rule_family": 0.9, "explained_variance_rule_family": 1e-9},
        {"layer": 6, "variance_explained_rule_family": 0.1, "explained_variance_rule_family": 0.01},
        {"layer": 12, "variance_explained_rule_family": 0.3, "explained_variance_rule_family": 0.08},
        {"layer": 18, "variance_explained_rule_family": 0.2, "explained_variance_rule_family": 0.05},
    ]
    assert emergence_layer(layers) == 12
    assert emergence_layer(layers, key="variance_explained_rule_family") == 0
    assert emergence_layer([{"layer": 0, "explained_variance_rule_family": float("nan")}]) is None


# ------------------------------------------------------------------ precision on a large vocabulary


@pytest.fixture(scope="module")
def large_vocab_pair():
    """A tiny Gemma-3-shaped base over Gemma's real 262,144-token vocabulary, with embeddings spread
    so logits look like a trained model's (std ~3), and a variant with its last block and final
    norm perturbed: vocabulary-wide float32 sums are what this setting tests."""
    import copy

    from transformers import AutoModelForCausalLM

    from implicit_it.models import LoadedModel, ModelSource, load_tokenizer
    from tests.conftest import tiny_config

    tok = load_tokenizer("gemma-3-270m")
    torch.manual_seed(0)
    cfg = tiny_config("gemma3", len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    cfg._attn_implementation = "eager"
    base = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        base.get_input_embeddings().weight.normal_(0, 0.4, generator=gen)
        variant = copy.deepcopy(base)
        for name, p in variant.named_parameters():
            if "layers.1.mlp" in name or name == "model.norm.weight":
                p.add_(0.3 * max(float(p.std()), 0.3) * torch.randn(p.shape, generator=gen))
    source = ModelSource("tiny-gemma3-262k", "local", "memory")
    return LoadedModel(base, tok, source, 0.0, "hf"), LoadedModel(variant, tok, source, 0.0, "hf")


def _float64_lens_kl(base, variant, texts, max_length):
    """Mean KL(variant ‖ base) per layer from float64 copies of both models, batch 1, HF forward."""
    import copy

    from implicit_it.formats import encode_example, get_format

    models = [copy.deepcopy(m.model).double() for m in (base, variant)]
    n_layers = len(models[0].get_decoder().layers)
    sums, n = [0.0] * (n_layers + 1), 0
    for t in texts:
        ex = encode_example(base.tokenizer, get_format("tulu"), t.instruction, t.response, max_length=max_length)
        ids = torch.tensor([ex.input_ids])
        cols = torch.arange(ex.n_prompt_tokens - 1, len(ex.input_ids) - 1)
        lps = []
        for model in models:
            decoder, outs = model.get_decoder(), []
            record = outs.append
            hooks = [decoder.embed_tokens.register_forward_hook(lambda m, i, o, record=record: record(o))]
            hooks += [
                block.register_forward_hook(lambda m, i, o, record=record: record(o[0] if isinstance(o, tuple) else o))
                for block in decoder.layers
            ]
            with torch.no_grad():
                model(ids)
                lps.append([torch.log_softmax(model.lm_head(decoder.norm(h[0, cols])), -1) for h in outs])
            for h in hooks:
                h.remove()
        for layer in range(n_layers + 1):
            lb, lv = lps[0][layer], lps[1][layer]
            sums[layer] += float((lv.exp() * (lv - lb)).sum())
        n += len(cols)
    return [s / n for s in sums]


def test_lens_kl_equals_a_float64_reference_on_a_262k_vocabulary(large_vocab_pair, shared_data):
    """Float32 sums over 262k tokens (a ~10-nat Σ p·log p per model, then a difference, and torch's
    own log-softmax normaliser) were off by ~4e-5 nats here; the pass must agree to 1e-6.
    (HF computes RMS norms in float32 even in a float64 model; the rest of the reference is float64.)"""
    base, variant = large_vocab_pair
    texts = texts_from_source(read_ranking_source(shared_data / "lima" / "val_reference_gpt35.json", limit=4))
    ours = LogitDelta().run(base, variant, texts, config=DeltaPassConfig(max_length=128, layers="all", lens_memory_mb=64)).entries[0]
    reference = _float64_lens_kl(base, variant, texts, 128)
    assert ours["positions"] > 300 and reference[-1] > 0.05  # a real delta at the output
    assert max(abs(layer["kl"] - ref) for layer, ref in zip(ours["layers"], reference, strict=True)) <= 1e-6


def test_rowdot_accumulates_in_float64():
    from implicit_it.analyses.rule_family import rowdot

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 262_144 + 17, generator=gen), torch.randn(4, 262_144 + 17, generator=gen) - 10.0
    exact = (a.double() * b.double()).sum(-1)
    scale = (a.double() * b.double()).abs().sum(-1)
    assert ((rowdot(a, b) - exact).abs() / scale).max() <= 1e-7  # ~5e-8: the float32 rounding of the block sums
    assert ((torch.einsum("ij,ij->i", a, b).double() - exact).abs() / scale).max() > 1e-6  # one float32 dot: ~2e-5


def test_rule_adapter_work_happens_only_for_analyses_that_read_it(base, lima_texts, monkeypatch):
    adapter = RuleAdapter(base.tokenizer)
    calls = []
    scores = adapter.scores
    monkeypatch.setattr(adapter, "scores", lambda *a, **k: calls.append(1) or scores(*a, **k))
    LogitDelta().run(base, base, lima_texts[:3], adapter=adapter, config=CONFIG)
    TokenShift().run(base, base, lima_texts[:3], adapter=adapter, config=CONFIG)
    assert calls == []
    RuleComparison().run(base, base, lima_texts[:3], adapter=adapter, config=CONFIG)
    assert calls
