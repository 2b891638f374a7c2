"""The GPU check's steps: each runs the study's own code on the device and records rows and checks."""

from __future__ import annotations

import copy
import gc
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from implicit_it.generation import TopRecorder, compare_generations
from implicit_it.shapes import Shape

from .plan import (
    GEN_TIE_TOL,
    KL_ATOL,
    KL_RTOL,
    NOISE,
    RANK_TOL,
    RULE_CORR_ATOL,
    RULE_SCORE_ATOL,
    RULE_VAR_RTOL,
    ShapePlan,
    ShapeSettings,
    forward_flops_per_token,
    train_flops,
)
from .report import Check, CheckReport, Row

# --------------------------------------------------------------------------- helpers


_WORDS = (
    "the of and to in is that for it as was with be by on not this are or from at which but have an they you were there one "
    "all we their has been if more when will would who so no time only new about also two first what some could into other "
    "than then these may its any like our over such even most made after many before must through back years where much "
    "your way well down should because each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while last might us great old year off "
    "come since against go came right used take three small large water city number part place case point group problem "
    "fact hand system program question during government early ready answer list write explain describe summary example"
).split()


def synthetic_texts(n: int, words: tuple[int, int], seed: int) -> list[str]:
    """Deterministic pseudo-English: sentences of common words (no data files needed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(*words)
        toks, sentence = [], 0
        for j in range(k):
            w = rng.choice(_WORDS)
            toks.append(w.capitalize() if sentence == 0 else w)
            sentence += 1
            if sentence > rng.randint(5, 14) or j == k - 1:
                toks[-1] += rng.choice([".", ".", "!", "?", ":\n-"] if j < k - 1 else ["."])
                sentence = 0
        out.append(" ".join(toks).replace("\n- ", "\n- "))
    return out


def synthetic_instructions(n: int, seed: int, words: tuple[int, int] = (3, 18)) -> list[str]:
    rng = random.Random(seed)
    heads = ["Explain", "Write", "Describe", "List", "Summarize", "What is", "How do I"]
    return [f"{rng.choice(heads)} {t[0].lower()}{t[1:]}" for t in synthetic_texts(n, words, seed + 1)]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free_device(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def timed(dev: torch.device) -> Iterator[dict[str, Any]]:
    """Times a block (synchronised) and reads its peak GPU memory: ``out['seconds']``, ``out['peak']``."""
    out: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        _sync(dev)
        out["seconds"] = time.perf_counter() - t0
        out["peak"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).removeprefix("torch."))


def _loaded_copy(loaded: Any, *, device: torch.device, dtype: torch.dtype, spec_suffix: str = "") -> Any:
    """A second LoadedModel with its own copy of the weights, on ``device`` in ``dtype``."""
    from dataclasses import replace

    model = copy.deepcopy(loaded.model).to(device=device, dtype=dtype)
    model.eval()
    source = replace(loaded.source, spec=loaded.source.spec + spec_suffix) if spec_suffix else loaded.source
    return replace(loaded, model=model, source=source)


# --------------------------------------------------------------------------- the steps


class _StepTimer:
    """Trainer callback: wall time of the optimizer step, and of its steady part (after the first micro-batch)."""

    def __init__(self, dev: torch.device):
        from transformers import TrainerCallback

        self.dev = dev
        self.begin = self.end = 0.0
        self.substeps: list[float] = []
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                _sync(timer.dev)
                timer.begin = time.perf_counter()

            def on_substep_end(self, args, state, control, **kw):  # noqa: ANN001
                _sync(timer.dev)
                timer.substeps.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                _sync(timer.dev)
                timer.end = time.perf_counter()

        self.callback = _Callback()


def _training_config(shape: Shape, s: ShapeSettings, method: str) -> Any:
    """The paper config's training block for this shape (configs/<file>), set to one step of ``method``."""
    from implicit_it.app.config import ExperimentConfig, load_config
    from implicit_it.training.config import TrainingConfig

    path = Path(__file__).resolve().parent.parent / "configs" / (shape.paper_config or "")
    if shape.paper_config and path.is_file():
        base = load_config(path)
    else:  # an installed copy without the repository's configs: the paper's values
        base = ExperimentConfig(name=f"gpu-check-{shape.name}", training=TrainingConfig(bf16=True, effective_batch_size=64))
    t = base.training.model_copy(
        update={
            "method": "lora" if method == "lora" else "full",
            "freeze_embeddings": method == "frozen_embeddings",
            "max_steps": 1,
            "warmup_ratio": 0.0,  # one step: a warmup would make its learning rate 0
            "effective_batch_size": s.effective_batch,
            "per_device_batch_size": s.per_device_batch,
            "max_length": s.seq_len,
            "bf16": True,
            "gradient_checkpointing": s.gradient_checkpointing,
            "loss_reduction": "example",
        }
    )
    return base.model_copy(update={"training": t, "name": f"gpu-check-{shape.name}"})


def _training_examples(tok: Any, n: int, seq_len: int, seed: int) -> list[Any]:
    """``n`` examples of exactly ``seq_len`` tokens: a prompt (loss-masked) and a response cut at ``seq_len``."""
    from implicit_it.formats import encode_example

    instructions = synthetic_instructions(n, seed, words=(2, max(3, min(30, seq_len // 6))))  # the prompt leaves room for a response
    responses = synthetic_texts(n, (seq_len, seq_len + 10), seed + 7)
    out = []
    for ins, resp in zip(instructions, responses, strict=True):
        ex = encode_example(tok, "tulu", ins, resp, max_length=seq_len)
        if len(ex.input_ids) != seq_len:
            raise ValueError(f"a synthetic example has {len(ex.input_ids)} tokens, not {seq_len}")
        out.append(ex)
    return out


def _probe_tensors(model: Any, rows: list[int]) -> dict[str, torch.Tensor]:
    """Copies of a few weights to see which ones a step moved: layer 0's q_proj, and the embedding rows of ``rows``."""
    q = next(p for n, p in model.named_parameters() if "layers.0." in n and "q_proj" in n and "lora" not in n)
    return {"q_proj": q.detach()[:64].clone(), "embedding": model.get_input_embeddings().weight.detach()[rows].clone()}


def train_step(report: CheckReport, loaded: Any, shape: Shape, s: ShapeSettings, plan: ShapePlan, method: str, workdir: Path) -> Any:
    """One optimizer step of ``method`` through the project's Trainer set-up; returns the (unwrapped) model."""
    from implicit_it.training.engine import make_trainable

    config = _training_config(shape, s, method)
    tok = loaded.tokenizer
    examples = _training_examples(tok, s.effective_batch, s.seq_len, seed=11)
    base_model = loaded.model
    for p in base_model.parameters():
        p.requires_grad_(True)
    before = _probe_tensors(base_model, sorted({t for e in examples for t in e.input_ids}))
    torch.manual_seed(0)
    model = make_trainable(base_model, config.training)
    try:
        return _one_step(report, model, tok, examples, config, shape, s, plan, method, workdir, before)
    finally:
        if method == "lora" and hasattr(model, "unload"):
            model.unload()  # the base model back, LoRA layers removed (its weights were frozen), also after a failure


def _one_step(
    report: CheckReport,
    model: Any,
    tok: Any,
    examples: list[Any],
    config: Any,
    shape: Shape,
    s: ShapeSettings,
    plan: ShapePlan,
    method: str,
    workdir: Path,
    before: dict[str, torch.Tensor],
) -> Any:
    from transformers.trainer_callback import PrinterCallback

    from implicit_it.training.engine import make_trainer, training_arguments
    from implicit_it.training.variants import EncodedDataset, MaskedLMCollator

    dev, name = report.device.device, shape.name
    timer = _StepTimer(dev)
    args = training_arguments(
        config, workdir / f"train-{method}", 0, False, "instruction", save_strategy="no", **({"use_cpu": True} if dev.type == "cpu" else {})
    )
    trainer = make_trainer(
        config,
        n_examples=len(examples),
        epochs=1,
        model=model,
        args=args,
        train_dataset=EncodedDataset(examples),
        data_collator=MaskedLMCollator(tok.pad_token_id),
        processing_class=tok,
        callbacks=[timer.callback],
    )
    trainer.remove_callback(PrinterCallback)
    tokens = len(examples) * s.seq_len
    with timed(dev) as t:
        trainer.train()
    # accelerate wrapped the model's forward in bf16 autocast for training; later steps must run in the model's own dtype
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    accum = s.effective_batch // s.per_device_batch
    steady = timer.end - timer.substeps[0] if timer.substeps and timer.end else None
    steady_tokens = tokens * (accum - 1) // accum
    flops = train_flops(plan.counts, plan.config, method, steady_tokens, s.seq_len) if steady else None
    report.rows.append(
        Row(
            name,
            f"train {method}",
            "bf16 autocast",
            steady_tokens if steady else tokens,
            steady or t["seconds"],
            flops,
            t["peak"],
            note=f"1 step = {accum} x {s.per_device_batch} x {s.seq_len}; whole step {timer.end - timer.begin:.2f} s",
        )
    )
    logs = [h for h in trainer.state.log_history if "loss" in h]
    loss = logs[-1]["loss"] if logs else float("nan")
    grad = logs[-1].get("grad_norm", float("nan")) if logs else float("nan")
    report.checks.append(
        Check(
            name,
            f"train {method}: loss",
            math.isfinite(loss) and math.isfinite(grad) and loss > 0,
            f"loss {loss:.4f} (ln V = {math.log(len(tok)):.2f}), grad norm {grad:.3g}; per-example reduction, "
            f"response-only mask ({sum(e.n_prompt_tokens for e in examples)} of {tokens} tokens masked)",
        )
    )
    if method == "lora":
        model = model.get_base_model()  # train_step unloads the adapter
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()  # renamed in transformers 5
    model.config.use_cache = True
    model.eval()
    after = _probe_tensors(model, sorted({t for e in examples for t in e.input_ids}))  # the tokens the step saw
    moved_q = not torch.equal(before["q_proj"], after["q_proj"])
    moved_emb = not torch.equal(before["embedding"], after["embedding"])
    expect = {"lora": (False, False), "frozen_embeddings": (True, False), "full": (True, True)}[method]
    ok = (moved_q, moved_emb) == expect
    report.checks.append(
        Check(
            name,
            f"train {method}: trained weights",
            ok,
            f"layer-0 q_proj moved: {moved_q} (expected {expect[0]}), input embedding moved: {moved_emb} "
            f"(expected {expect[1]}{', tied LM head' if plan.counts['tied'] else ''})",
        )
    )
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    # drop every reference to the optimizer (AdamW's fp32 moments: 55 GB at 7B) before the next method's step
    trainer.accelerator.free_memory()
    trainer.optimizer = trainer.lr_scheduler = None
    del trainer, before, after
    free_device(dev)
    return model


def _generate(loaded: Any, instructions: Sequence[str], *, tokens: int, batch_size: int, rules: bool) -> tuple[list[Any], Any, dict]:
    from implicit_it.generation import generate_responses
    from implicit_it.rules import RuleAdapter

    adapter = RuleAdapter(loaded.tokenizer) if rules else None
    store: dict[int, list[tuple[list[int], list[float]]]] = {}

    def factory(batch: Any) -> list[Any]:
        procs = [adapter.logits_processor(batch)] if adapter is not None else []
        return procs + [TopRecorder(batch.indices, store)]

    results, stats = generate_responses(
        loaded, instructions, max_new_tokens=tokens, batch_size=batch_size, logits_processor_factory=factory, show_progress=False
    )
    return results, stats, store


def generation_equality(report: CheckReport, loaded: Any, shape: Shape, s: ShapeSettings, inject: str | None) -> None:
    """Batch-1 vs batched greedy decoding, with and without the rule adapter, in the model's current dtype."""
    dev = report.device.device
    dt = loaded.dtype
    instructions = synthetic_instructions(s.eq_prompts, seed=5)  # different lengths: left padding matters
    for rules in (False, True):
        label = f"generate batch-1 vs batched{' + rules' if rules else ''}"
        with timed(dev) as t:
            single, st1, g1 = _generate(loaded, instructions, tokens=s.eq_tokens, batch_size=1, rules=rules)
            batched, st2, g2 = _generate(loaded, instructions, tokens=s.eq_tokens, batch_size=len(instructions), rules=rules)
        if inject == "generation" and not rules and batched[0].token_ids:
            batched[0].token_ids[0] = (batched[0].token_ids[0] + 1) % len(loaded.tokenizer)  # a deliberate mismatch
        from implicit_it.formats import get_format

        ok, detail = compare_generations(
            single, batched, g1, g2, GEN_TIE_TOL.get(dt, 0.125), get_format("tulu").stop_token_ids(loaded.tokenizer)
        )
        report.rows.append(Row(shape.name, label, _dtype_name(dt), st1.n_new_tokens + st2.n_new_tokens, t["seconds"], None, t["peak"]))
        report.checks.append(Check(shape.name, f"{label} ({_dtype_name(dt)})", ok, detail))


def generation_timing(report: CheckReport, loaded: Any, plan: ShapePlan) -> None:
    """Batched greedy generation, with and without the rule adapter (tokens/s)."""
    dev = report.device.device
    s = plan.settings
    instructions = synthetic_instructions(s.gen_prompts, seed=3)
    for rules in (False, True):
        with timed(dev) as t:
            results, stats, _ = _generate(loaded, instructions, tokens=s.gen_tokens, batch_size=s.gen_prompts, rules=rules)
        ctx = 40 + s.gen_tokens / 2
        flops = forward_flops_per_token(plan.counts, plan.config, ctx) * stats.n_new_tokens
        report.rows.append(
            Row(
                plan.shape.name,
                f"generate batched{' + rules' if rules else ''}",
                _dtype_name(loaded.dtype),
                stats.n_new_tokens,
                t["seconds"],
                flops,
                t["peak"],
                note=f"{s.gen_prompts} prompts x <= {s.gen_tokens} tokens, {sum(r.stopped for r in results)} stopped at EOS",
            )
        )


def rule_scores_agree(report: CheckReport, loaded: Any, shape: Shape) -> None:
    """The rule adapter's scores r(w, x) computed on the device equal those computed on the CPU."""
    from implicit_it.formats import encode_example, instruction_offset
    from implicit_it.rules import ALL_RULES, RuleAdapter, RuleConfig

    dev = report.device.device
    tok = loaded.tokenizer
    adapter = RuleAdapter(tok, RuleConfig(rules=list(ALL_RULES)))
    ins, resp = synthetic_instructions(1, seed=9)[0], synthetic_texts(1, (20, 30), seed=9)[0]
    ex = encode_example(tok, "tulu", ins, resp)
    ids = torch.tensor([ex.input_ids])
    positions = torch.arange(ex.n_prompt_tokens - 1, len(ex.input_ids) - 1)
    rs = torch.tensor([ex.n_prompt_tokens])
    ist = torch.tensor([instruction_offset(tok, "tulu", ins, ex.input_ids[: ex.n_prompt_tokens])])
    cpu = adapter.scores(ids, positions, rs, instruction_start=ist)
    on_dev = adapter.scores(ids.to(dev), positions.to(dev), rs.to(dev), instruction_start=ist.to(dev)).cpu()
    diff = float((cpu - on_dev).abs().max())
    where = "cuda" if dev.type == "cuda" else "cpu (no CUDA: the CPU against itself)"
    report.checks.append(
        Check(
            shape.name,
            "rule adapter scores: device vs CPU",
            diff <= RULE_SCORE_ATOL,
            f"{where}: max |diff| {diff:.3g} <= {RULE_SCORE_ATOL:g} over {cpu.numel():,} scores (all four rules)",
        )
    )


def ranking(report: CheckReport, loaded: Any, plan: ShapePlan) -> None:
    """The ranking scorer (fast path, logit lens on a few layers), and its agreement with the paper's loop."""
    import numpy as np

    from implicit_it.data import RankingSource
    from implicit_it.probes import RankingProbe, build_ranking_groups, paper_scores

    dev, s, name = report.device.device, plan.settings, plan.shape.name
    n = s.rank_instructions
    source = RankingSource(tuple(synthetic_instructions(n, seed=21)), tuple(range(n)), tuple(synthetic_texts(n, s.texts_words, seed=22)))
    groups = build_ranking_groups(source, negatives=s.rank_negatives, seed=0)
    probe = RankingProbe(source, groups, max_length=1024, layers=s.rank_layers, n_boot=200)
    with timed(dev) as t:
        run = probe.run(loaded, label=name)
    tokens = sum(len(g.prompt_ids) + sum(len(r) for r in g.responses) for g in run.encoded)
    flops = forward_flops_per_token(plan.counts, plan.config, 100) * tokens
    dt = _dtype_name(loaded.dtype)
    report.rows.append(
        Row(
            name,
            f"rank (lens at {s.rank_layers})",
            dt,
            tokens,
            t["seconds"],
            flops,
            t["peak"],
            note=f"{n} instructions x {1 + s.rank_negatives} responses",
        )
    )
    with timed(dev) as t:
        ref = paper_scores(loaded.model, run.encoded)
    report.rows.append(Row(name, "rank, the paper's loop (reference)", dt, tokens, t["seconds"], flops, t["peak"]))
    fast, slow = run.output.mean(), ref.mean()
    diff = float(np.nanmax(np.abs(fast - slow)))
    tol = RANK_TOL.get(loaded.dtype, 0.05)
    acc = run.ranking().entries[0]["accuracy"]
    report.checks.append(
        Check(
            name,
            f"rank: fast path vs paper loop ({dt})",
            diff <= tol,
            f"max |Δ mean log-prob| {diff:.3g} <= {tol:g} nats over {fast.size} pairs (accuracy {acc:.2f}, random weights)",
        )
    )


def _frame_column(result: Any, column: str) -> dict[int, float]:
    frame = result.to_frame()
    return {int(layer): float(v) for layer, v in zip(frame["layer"], frame[column], strict=True)}


def delta_pass(report: CheckReport, base: Any, variant: Any, plan: ShapePlan) -> None:
    """LogitDelta and RuleComparison (the delta pass) on the device; against an fp32 CPU copy where the shape allows."""
    from implicit_it.analyses import DeltaPassConfig, DiffText, LogitDelta, RuleComparison

    dev, s, name = report.device.device, plan.settings, plan.shape.name
    n = s.delta_texts
    texts = [
        DiffText(i, r, "data", k)
        for k, (i, r) in enumerate(zip(synthetic_instructions(n, seed=31), synthetic_texts(n, s.texts_words, seed=32), strict=True))
    ]
    cfg = DeltaPassConfig(layers=s.delta_layers, max_length=512)
    tokens = 2 * sum(len(base.tokenizer(t.instruction + t.response)["input_ids"]) + 12 for t in texts)
    flops = forward_flops_per_token(plan.counts, plan.config, 100) * tokens

    def both(b: Any, v: Any, dtype_label: str, suffix: str) -> tuple[Any, Any]:
        with timed(b.device) as t:
            logits = LogitDelta().run(b, v, texts, config=cfg, label="variant")
        report.rows.append(
            Row(
                name,
                f"delta pass: lens KL{suffix}",
                dtype_label,
                tokens,
                t["seconds"],
                flops if not suffix else None,
                t["peak"],
                note=f"{n} texts, layers {s.delta_layers}",
            )
        )
        with timed(b.device) as t:
            rules = RuleComparison(vocab=s.delta_vocab).run(b, v, texts, config=cfg, label="variant")
        report.rows.append(
            Row(
                name,
                f"delta pass: rule comparison{suffix}",
                dtype_label,
                tokens,
                t["seconds"],
                flops if not suffix else None,
                t["peak"],
                note=f"vocab {s.delta_vocab}",
            )
        )
        return logits, rules

    logits_dev, rules_dev = both(base, variant, _dtype_name(base.dtype), "")
    kl_dev = _frame_column(logits_dev, "kl")
    report.checks.append(
        Check(
            name,
            "delta pass: finite lens KL",
            all(math.isfinite(v) and v >= -1e-6 for v in kl_dev.values()),
            "KL per layer " + ", ".join(f"{k}: {v:.4g}" for k, v in sorted(kl_dev.items())),
        )
    )
    if not s.cpu_reference:
        return
    cpu = torch.device("cpu")
    base_cpu = _loaded_copy(base, device=cpu, dtype=torch.float32)
    var_cpu = _loaded_copy(variant, device=cpu, dtype=torch.float32)
    logits_cpu, rules_cpu = both(base_cpu, var_cpu, "fp32", " (CPU reference)")
    del base_cpu, var_cpu
    gc.collect()
    where = "cuda bf16 vs cpu fp32" if dev.type == "cuda" else "bf16 on the CPU vs fp32 on the CPU (no CUDA device)"
    kl_cpu = _frame_column(logits_cpu, "kl")
    worst = max(abs(kl_dev[k] - kl_cpu[k]) - KL_RTOL * abs(kl_cpu[k]) for k in kl_cpu)
    report.checks.append(
        Check(
            name,
            "lens KL: device vs CPU",
            worst <= KL_ATOL,
            f"{where}: per layer |KL_dev - KL_cpu| <= {KL_RTOL:g} KL_cpu + {KL_ATOL:g}; "
            + ", ".join(f"{k}: {kl_dev[k]:.4g}/{kl_cpu[k]:.4g}" for k in sorted(kl_cpu)),
        )
    )
    corr_dev, corr_cpu = _frame_column(rules_dev, "correlation_rules"), _frame_column(rules_cpu, "correlation_rules")
    var_dev, var_cpu_ = _frame_column(rules_dev, "delta_variance"), _frame_column(rules_cpu, "delta_variance")
    corr_worst = max(abs(corr_dev[k] - corr_cpu[k]) for k in corr_cpu)
    var_worst = max(abs(var_dev[k] - var_cpu_[k]) / max(abs(var_cpu_[k]), 1e-12) for k in var_cpu_)
    ok = corr_worst <= RULE_CORR_ATOL and var_worst <= RULE_VAR_RTOL
    report.checks.append(
        Check(
            name,
            "rule comparison: device vs CPU",
            ok,
            f"{where}: correlation with the rules max |diff| {corr_worst:.3g} <= {RULE_CORR_ATOL:g}; "
            f"Δ log p variance max rel. diff {var_worst:.3g} <= {RULE_VAR_RTOL:g}",
        )
    )


def perturbed(loaded: Any, scale: float, seed: int) -> Any:
    """A copy of ``loaded`` with every tensor moved by ``scale x rms(W) x N(0, 1)``: the 'variant'."""
    var = _loaded_copy(loaded, device=loaded.device, dtype=loaded.dtype, spec_suffix="+noise")
    if hasattr(var.model, "set_attn_implementation"):  # the analyses' attention, as load_model gives the base
        var.model.set_attn_implementation("eager")
    gen = torch.Generator(device=loaded.device).manual_seed(seed)
    with torch.no_grad():
        for p in var.model.parameters():
            w = p.float()
            rms = w.square().mean().sqrt()
            p.copy_(w + scale * rms * torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32))
    return var


def save_and_load(report: CheckReport, base: Any, variant: Any, plan: ShapePlan, workdir: Path) -> tuple[Any, Path, Path]:
    """Write both checkpoints (safetensors) and load the base back with ``load_model``: ``device_map="auto"`` on CUDA."""
    from implicit_it.models import load_model

    dev, name = report.device.device, plan.shape.name
    paths = []
    with timed(dev) as t:
        for lm, sub in ((base, "base"), (variant, "variant")):
            path = workdir / f"{name}-{sub}"
            lm.model.save_pretrained(path, safe_serialization=True)
            lm.tokenizer.save_pretrained(path)
            paths.append(path)
    size = sum(f.stat().st_size for p in paths for f in p.glob("*.safetensors"))
    report.rows.append(
        Row(
            name,
            "save 2 checkpoints",
            _dtype_name(base.dtype),
            None,
            t["seconds"],
            None,
            t["peak"],
            note=f"{size / 1e9:.2f} GB, {size / 1e9 / t['seconds']:.2f} GB/s",
        )
    )
    device_map = "auto" if dev.type == "cuda" else None
    with timed(dev) as t:
        loaded = load_model(paths[0], dtype=base.dtype, device=dev, device_map=device_map, use_process_cache=False)
    report.rows.append(
        Row(
            name,
            f"load_model(device_map={device_map!r})",
            _dtype_name(loaded.dtype),
            None,
            t["seconds"],
            None,
            t["peak"],
            note=f"{size / 2e9:.2f} GB",
        )
    )
    a, b = base.model.state_dict(), loaded.model.state_dict()
    same = all(torch.equal(a[k], b[k].to(a[k].device)) for k in a if k in b)
    on = {str(p.device) for p in loaded.model.parameters()}
    report.checks.append(
        Check(
            name,
            "checkpoint round trip",
            same and len(on) == 1,
            f"{len(a)} tensors equal after save + load_model(device_map={device_map!r}); parameters on {sorted(on)}",
        )
    )
    return loaded, paths[0], paths[1]


def weight_diff(report: CheckReport, base_dir: Path, variant_dir: Path, plan: ShapePlan, tok: Any) -> None:
    from implicit_it.analyses import WeightDelta
    from implicit_it.rules import RuleAdapter

    dev, name = report.device.device, plan.shape.name
    rule_ids = [r.token_id for r in RuleAdapter(tok).resolved if r.token_id is not None]
    with timed(dev) as t:
        result = WeightDelta(spectrum=plan.settings.weight_spectrum, rule_token_ids=rule_ids).run(base_dir, variant_dir, label="variant")
    frame = result.to_frame()
    size = sum(f.stat().st_size for d in (base_dir, variant_dir) for f in d.glob("*.safetensors"))
    report.rows.append(
        Row(
            name,
            f"weight diff (streamed{', spectra' if plan.settings.weight_spectrum else ', no spectra'})",
            "bf16→fp32",
            None,
            t["seconds"],
            None,
            t["peak"],
            note=f"{len(frame)} tensors, {size / 1e9:.2f} GB read, {size / 1e9 / t['seconds']:.2f} GB/s",
        )
    )
    moved = frame[(frame["base_norm"] > 0) & (frame["norm_offset"] == 0)]["relative_delta"]
    med = float(moved.median()) if len(moved) else float("nan")
    ok = len(frame) > 0 and 0.9 * NOISE <= med <= 1.1 * NOISE
    report.checks.append(
        Check(name, "weight diff", ok, f"{len(frame)} tensors; median ‖ΔW‖/‖W‖ {med:.4f} (the variant's noise: {NOISE:g} ± 10%)")
    )
