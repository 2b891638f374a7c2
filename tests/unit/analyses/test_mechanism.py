"""The causal analyses' invariants on tiny random models (gemma3 and llama shapes).

Patching every changed tensor gives the variant and patching none the base, bit for bit; the base is
restored exactly after any hybrid; the variant's residual stream patched in at the last layer gives
the variant's log-probs when its final norm and unembedding are the base's; α = 0 steering is the
base (traced and while generating); rank-full truncation is the variant, and the SVD path at full
rank agrees with it to float round-off.
"""

from __future__ import annotations

import pytest
import torch

from implicit_it.analyses import (
    ActivationPatching,
    Behaviour,
    LowRank,
    Mechanism,
    MechContext,
    PatchSetup,
    WeightSwap,
    texts_from_source,
)
from implicit_it.analyses.patching import POSITION_CLASSES, Recovery
from implicit_it.analyses.steering import steer_edit, steered
from implicit_it.analysis import read_result
from implicit_it.data import read_ranking_source
from implicit_it.generation import generate_responses
from implicit_it.models import load_model
from tests.conftest import save_tiny_model


def perturbed_copy(src, dst, *, keep_head: bool, scale: float = 0.05, seed: int = 1):
    """A 'variant': every block tensor moved by noise; the embeddings and final norm too unless ``keep_head``."""
    model = load_model(str(src), device="cpu", use_process_cache=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if keep_head and ".layers." not in name:
                continue
            p.add_(scale * torch.randn(p.shape, generator=gen) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))
    model.model.save_pretrained(dst)
    model.tokenizer.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def pair(request, bytelevel_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mech-{request.param}")
    base_dir = save_tiny_model(request.param, bytelevel_tokenizer, root / "base")
    variant_dir = perturbed_copy(base_dir, root / "variant", keep_head=True)
    whole_dir = perturbed_copy(base_dir, root / "whole", keep_head=False, seed=2)
    return base_dir, variant_dir, whole_dir


@pytest.fixture(scope="module")
def texts(shared_data):
    return texts_from_source(read_ranking_source(str(shared_data / "lima" / "val_reference_gpt35.json"), limit=4))


def setup_for(base_dir, variant_dir, texts):
    base = load_model(str(base_dir), device="cpu", use_process_cache=False)
    variant = load_model(str(variant_dir), device="cpu", use_process_cache=False)
    swap = WeightSwap(base.model, str(base_dir), str(variant_dir))
    setup = PatchSetup(base, variant, texts, fmt="tulu", max_length=96, response_tokens=8, max_batch_tokens=256, swap=swap)
    return base, variant, setup, swap


def test_all_patched_is_the_variant_none_is_the_base_and_the_base_comes_back_exactly(pair, texts):
    base_dir, _, whole_dir = pair
    base, _, setup, swap = setup_for(base_dir, whole_dir, texts)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    base_lp = [setup.base.logprobs(b) for b in setup.batches]
    assert len(swap.changed) == len(list(base.model.parameters()))  # every tensor moved, embeddings and final norm too
    with swap.hybrid([]):  # none patched
        for b, lp in zip(setup.batches, base_lp, strict=True):
            assert torch.equal(setup.base.logprobs(b), lp)
    with swap.hybrid(swap.changed):  # all patched
        for b, ref in zip(setup.batches, setup.reference.variant, strict=True):
            assert torch.equal(setup.base.logprobs(b), ref)
        assert setup.evaluate()["recovered"] == pytest.approx(1.0, abs=1e-12)
    for b, lp in zip(setup.batches, base_lp, strict=True):
        assert torch.equal(setup.base.logprobs(b), lp)
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert setup.evaluate()["recovered"] == pytest.approx(0.0, abs=1e-12)


def test_the_recovered_interval_is_over_texts_each_text_scored_as_it_would_be_alone(pair, texts):
    """Per text, the KL the interval resamples is the text's own (a setup on that text alone gives it), the texts sum to
    the pooled KL, and the 95% interval brackets the estimate: [1, 1] for the variant itself, [0, 0] for the base."""
    base_dir, variant_dir, _ = pair
    _, _, setup, swap = setup_for(base_dir, variant_dir, texts)
    ref = setup.reference
    alone = {}
    for t in texts:
        _, _, one, _ = setup_for(base_dir, variant_dir, [t])
        alone[one.texts[0].ids] = one.reference.kl_base
    rec = Recovery()
    for i, b in enumerate(setup.batches):
        ref.score(i, b, ref.variant[i], rec)
    per_text = {t.ids: float(k) for b, ks in zip(setup.batches, rec.text_kl_base, strict=True) for t, k in zip(b.texts, ks, strict=True)}
    assert per_text == pytest.approx(alone, rel=1e-4)
    assert sum(per_text.values()) == pytest.approx(ref.kl_base, rel=1e-9)
    assert rec.recovered_ci() == pytest.approx((1.0, 1.0))
    with swap.hybrid(swap.changed[: len(swap.changed) // 2]):
        half = setup.evaluate()
    lo, hi = half["recovered_ci"]
    assert lo <= half["recovered"] <= hi and lo < hi
    assert half["texts"] == len(setup.texts) == len(texts)
    assert setup.evaluate()["recovered_ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    fit, held = setup.evaluate_halves()  # each half's interval is over its own texts
    assert fit["texts"] + held["texts"] == len(texts)


def test_the_base_is_restored_even_when_a_hybrid_fails(pair, texts):
    base_dir, _, whole_dir = pair
    base, _, setup, swap = setup_for(base_dir, whole_dir, texts)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), swap.hybrid(swap.changed):
        raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())


def test_last_layer_residual_patch_gives_the_variants_log_probs(pair, texts):
    base_dir, variant_dir, _ = pair
    _, _, setup, swap = setup_for(base_dir, variant_dir, texts)
    last = setup.n_layers
    result = ActivationPatching(layers=[last], sites=["resid"], positions=["all"]).run(MechContext(setup, swap, "v"))
    (cell,) = result.entries[0]["cells"]
    assert cell["recovered"] == pytest.approx(1.0, abs=1e-6)
    from implicit_it.analyses.activation_patching import patch_edit

    for b, ref in zip(setup.batches, setup.reference.variant, strict=True):
        acts = setup.variant.read(b, last, ["resid"])
        torch.testing.assert_close(setup.base.logprobs(b, patch_edit(last, "resid", "all", acts["resid"])), ref, rtol=0, atol=1e-5)


def test_zero_alpha_steering_is_the_base_traced_and_generating(pair, texts):
    base_dir, variant_dir, _ = pair
    base, _, setup, _ = setup_for(base_dir, variant_dir, texts)
    delta = torch.randn(base.model.config.hidden_size)
    for b in setup.batches:
        assert torch.equal(setup.base.logprobs(b, steer_edit(1, 0.0, delta)), setup.base.logprobs(b))
        assert not torch.equal(setup.base.logprobs(b, steer_edit(1, 4.0, delta)), setup.base.logprobs(b))
    prompts = [t.instruction for t in texts[:2]]
    plain, _ = generate_responses(base, prompts, max_new_tokens=6, show_progress=False)
    with steered(base.model, 1, 0.0, delta):
        zero, _ = generate_responses(base, prompts, max_new_tokens=6, show_progress=False)
    assert [r.token_ids for r in zero] == [r.token_ids for r in plain]


def test_full_rank_is_the_variant_and_the_svd_path_agrees(pair, texts):
    base_dir, variant_dir, _ = pair
    _, _, setup, swap = setup_for(base_dir, variant_dir, texts)
    ctx = MechContext(setup, swap, "v")
    curve = LowRank(ranks=[0, 1]).run(ctx).entries[0]["curve"]
    assert [p["rank"] for p in curve][:2] == [0, 1] and curve[-1]["full_rank"]
    assert curve[-1]["recovered"] == pytest.approx(1.0, abs=1e-12)
    vectors_changed = any(swap.base.get(n).ndim == 1 for n in swap.changed)
    if not vectors_changed:
        assert curve[0]["recovered"] == pytest.approx(0.0, abs=1e-12)
    name = next(n for n in swap.changed if swap.base.get(n).ndim == 2)
    us, vh, full = LowRank().factors(ctx, 10_000)[name]
    torch.testing.assert_close(swap.base.get(name) + us[:, :full] @ vh[:full], swap.variant.get(name), rtol=0, atol=1e-5)


def test_position_classes_partition_each_text(pair, texts):
    base_dir, variant_dir, _ = pair
    base, _, setup, _ = setup_for(base_dir, variant_dir, texts)
    for t in setup.texts:
        parts = [t.columns(c) for c in POSITION_CLASSES if c != "all"]
        assert sorted(c for p in parts for c in p) == t.columns("all")
        instruction = base.tokenizer.decode([t.ids[c] for c in t.columns("instruction")])
        assert instruction.strip() and instruction.strip() in texts[t.text_index].instruction


def without_seconds(entries):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in entries]


def test_mechanism_runs_every_analysis_saves_restores_and_needs_no_loaded_variant(pair, texts, tmp_path):
    """Every analysis runs; the base comes back bit for bit; holding one model only (the variant run as the base with
    its tensors swapped in) gives exactly the numbers of a loaded variant."""
    base_dir, variant_dir, _ = pair
    base = load_model(str(base_dir), device="cpu", use_process_cache=False)
    variant = load_model(str(variant_dir), device="cpu", use_process_cache=False)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    mech = Mechanism(alphas=[1.0], ranks=[0, 1], max_length=96, response_tokens=6, max_new_tokens=4, max_batch_tokens=256)
    behaviour = Behaviour([t.instruction for t in texts[:2]], score=lambda outs: {"nonempty": sum(bool(o) for o in outs) / len(outs)})
    kwargs = {"base_spec": str(base_dir), "variant_spec": str(variant_dir), "label": "v", "behaviour": behaviour}
    results, timings = mech.run(base, variant, texts, **kwargs)
    assert set(results) == {"weight_patching", "activation_patching", "steering", "low_rank", "mechanism"}
    assert set(timings) == {"setup", "weight_patching", "activation_patching", "steering", "low_rank"}
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    in_place, _ = mech.run(base, None, texts, **kwargs)
    for name, res in results.items():
        assert without_seconds(in_place[name].entries) == without_seconds(res.entries), name
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    hybrids = {h["label"]: h for h in results["weight_patching"].entries[0]["hybrids"]}
    assert hybrids["all"]["recovered"] == pytest.approx(1.0, abs=1e-9)
    assert hybrids["embeddings"]["tensors"] == 0 and hybrids["embeddings"]["recovered"] == 0.0  # frozen: nothing to swap
    steering = results["steering"].entries[0]
    assert set(steering["behaviour"]["systems"]) == {"base", "steered", "rules", "variant"}
    assert "nonempty" in steering["behaviour"]["systems"]["variant"]
    sentence = results["mechanism"].entries[0]["sentence"]
    assert sentence.startswith("v,") and "%" in sentence
    for res in results.values():
        res.save(tmp_path)
        back = read_result(tmp_path / f"{res.name}.json")
        assert type(back) is type(res) and back.entries == res.entries


def test_the_config_names_exactly_the_analyses_mechanism_builds():
    from implicit_it.analyses import MECH_ANALYSES, config

    assert tuple(MECH_ANALYSES) == config.MECH_ANALYSES == tuple(config.MechConfig().analyses)
    assert [a.name for a in Mechanism().build()] == ["weight_patching", "activation_patching", "steering", "low_rank"]
