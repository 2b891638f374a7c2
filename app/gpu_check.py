"""GPU readiness without weights: every CUDA path of the study, at real shapes, in one prepared run.

``python scripts/gpu_check.py`` (or ``iit doctor --gpu``) builds models from their configs with
random weights directly on the accelerator (:mod:`implicit_it.shapes`: Gemma-3-270M, and a
Llama-2-7B shape in bf16), with the project's tokenizers, and runs the study's own code on them,
timing each step:

* one training step per method (LoRA, frozen embeddings, full) through the project's ``Trainer``
  set-up (:mod:`implicit_it.training`): bf16 autocast over fp32 master weights, the paper's effective
  batch of 64 by gradient accumulation, the response-only loss mask and the per-example loss reduction;
* batched greedy generation (:mod:`implicit_it.generation`), with and without the rule adapter;
* saving both checkpoints and loading one back with ``load_model(..., device_map="auto")``;
* the ranking scorer (:class:`implicit_it.probes.RankingProbe`, logit lens on a few layers) and the
  paper's reference loop;
* the delta pass (:class:`~implicit_it.analyses.LogitDelta`, :class:`~implicit_it.analyses.RuleComparison`);
* the streamed weight diff (:class:`~implicit_it.analyses.WeightDelta`) between the two checkpoints.

It prints the budget arithmetic first (parameters, bytes, FLOPs, memory, estimated seconds), then a
table of every step (tokens/s, MFU against the device's bf16 peak, peak GPU memory), then the checks,
and exits 1 if any check fails. ``--tiny`` runs the same code at 2-layer shapes in seconds, on CPU in
CI; without CUDA its "device" runs are bf16 on the CPU, compared against fp32 on the CPU, and it says so.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from implicit_it.generation import TopRecorder, compare_generations
from implicit_it.shapes import Shape, count_parameters, get_shape, random_model, shape_tokenizer

BUDGET_SECONDS = 600  # the whole full-mode run, on one H100/H200-class GPU
FULL_SHAPES = ("gemma-3-270m", "llama-2-7b")
TINY_SHAPES = ("tiny-gemma3", "tiny-llama")
STEPS = ("train", "generate", "rank", "delta", "weights")
METHODS = ("lora", "frozen_embeddings", "full")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets; the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)
FALLBACK_PEAK_TFLOPS = 989.0  # an H100/H200-class GPU, when the name is not in the table

# Tolerances. Batch-1 and batched greedy decoding must give the same tokens; where they part, both
# runs must have had the two tokens as their top two with a gap no wider than the tolerance (a near-tie
# that rounding may flip). Device-vs-CPU: the device runs bf16 weights, the CPU reference fp32.
GEN_TIE_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.125}  # logit gap at the first divergence
RANK_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.05}  # |fast - paper loop| of a pair's mean log-prob, nats
KL_RTOL, KL_ATOL = 0.15, 1e-4  # lens KL per layer, device (bf16) vs CPU (fp32)
RULE_CORR_ATOL, RULE_VAR_RTOL = 0.05, 0.15  # RuleComparison per layer: correlation with the rules; Δ variance
RULE_SCORE_ATOL = 1e-6  # the rule adapter's scores r(w, x) on the device vs on the CPU (same float32 ops)
NOISE = 0.25  # the variant: base + NOISE x rms(W) x N(0, 1) in every tensor


# --------------------------------------------------------------------------- settings and plan


@dataclass
class ShapeSettings:
    """How much of each step one shape runs."""

    seq_len: int  # training sequence length (every example exactly this long: no padding)
    effective_batch: int
    per_device_batch: int
    gradient_checkpointing: bool
    train_attn: str | None
    gen_prompts: int
    gen_tokens: int
    eq_prompts: int
    eq_tokens: int
    rank_instructions: int
    rank_negatives: int
    rank_layers: str
    texts_words: tuple[int, int]  # response length (words) of the ranking / delta texts
    delta_texts: int
    delta_layers: str
    delta_vocab: str
    cpu_reference: bool
    weight_spectrum: bool


def shape_settings(shape: Shape, *, tiny: bool, seq_len: int | None = None) -> ShapeSettings:
    if tiny:
        return ShapeSettings(
            seq_len=seq_len or 32,
            effective_batch=4,
            per_device_batch=2,
            gradient_checkpointing=shape.name == "tiny-llama",
            train_attn="eager",
            gen_prompts=3,
            gen_tokens=6,
            eq_prompts=3,
            eq_tokens=6,
            rank_instructions=3,
            rank_negatives=2,
            rank_layers="all",
            texts_words=(6, 14),
            delta_texts=3,
            delta_layers="all",
            delta_vocab="frequent:64",
            cpu_reference=True,
            weight_spectrum=True,
        )
    common = dict(
        seq_len=seq_len or 1024,
        effective_batch=64,
        gen_prompts=16,
        gen_tokens=64,
        eq_prompts=4,
        eq_tokens=24,
        rank_instructions=8,
        rank_negatives=3,
        texts_words=(60, 160),
        delta_texts=4,
        delta_vocab="frequent:2048",
    )
    if shape.name == "llama-2-7b":
        # micro-batch 4 x 16 accumulation steps, activation checkpointing and SDPA as in configs/llama2-7b.yaml; no fp32 CPU
        # copy of 7B (27.5 GB, minutes of CPU) and no spectra (fp64 Grams of 224 matrices on the CPU: ~46 min)
        return ShapeSettings(
            **common,
            per_device_batch=4,
            gradient_checkpointing=True,
            train_attn="sdpa",
            rank_layers="every:8",
            delta_layers="every:16",
            cpu_reference=False,
            weight_spectrum=False,
        )
    # configs/gemma3-270m-paper.yaml: micro-batch 8 x 8, eager attention (Gemma-3's recommendation for training)
    return ShapeSettings(
        **common,
        per_device_batch=8,
        gradient_checkpointing=False,
        train_attn="eager",
        rank_layers="every:6",
        delta_layers="every:6",
        cpu_reference=True,
        weight_spectrum=True,
    )


@dataclass
class DeviceInfo:
    device: torch.device
    name: str
    peak_flops: float | None  # bf16 dense, FLOP/s (None on CPU: no MFU)
    peak_source: str
    memory_bytes: int | None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def device_info(device: str | torch.device | None = None) -> DeviceInfo:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        return DeviceInfo(dev, "cpu (no CUDA device)" if not torch.cuda.is_available() else "cpu", None, "no MFU on CPU", None)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(idx)
    props = torch.cuda.get_device_properties(idx)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return DeviceInfo(dev, name, tflops * 1e12, f"{key} bf16 dense peak", props.total_memory)
    return DeviceInfo(
        dev, name, FALLBACK_PEAK_TFLOPS * 1e12, f"not in the table: assumed {FALLBACK_PEAK_TFLOPS:g} TFLOP/s", props.total_memory
    )


def forward_flops_per_token(counts: dict[str, int], config: Any, context: float) -> float:
    """2 x matmul parameters + attention scores and values (2 x 2 x layers x context x heads x head_dim)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2.0 * counts["matmul"] + 4.0 * config.num_hidden_layers * context * heads * head_dim


def train_flops(counts: dict[str, int], config: Any, method: str, tokens: int, seq_len: int) -> float:
    """Model FLOPs of one optimizer step (recomputation under activation checkpointing not counted, as MFU has it):
    forward + backward = 3 x forward; LoRA skips the frozen weights' gradients: 2 x forward."""
    return (2.0 if method == "lora" else 3.0) * forward_flops_per_token(counts, config, seq_len / 2) * tokens


def lora_parameters(config: Any, r: int = 16) -> int:
    """LoRA r x (in + out) on q, k, v, o, gate, up, down of every block."""
    h, i = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = r * ((h + heads * hd) * 2 + (h + kv * hd) * 2 + (h + i) * 3)
    return per_layer * config.num_hidden_layers


def training_memory(counts: dict[str, int], config: Any, s: ShapeSettings, method: str) -> tuple[float, float]:
    """(states, activations) in bytes: fp32 master weights (4 B) + fp32 gradients (4) + AdamW's two fp32 moments (8)
    for every trained parameter; activations per micro-batch (Korthikanti et al.'s 34·s·h + 5·a·s² bytes per layer
    in 16-bit, checkpointed: one fp32 residual per layer + one layer live) + fp32 logits, their softmax and gradient."""
    total, emb = counts["total"], counts["embedding"]
    trained = {"full": total, "frozen_embeddings": total - emb, "lora": lora_parameters(config)}[method]
    states = 4.0 * total + 12.0 * trained
    b, L, h, a = s.per_device_batch, s.seq_len, config.hidden_size, config.num_attention_heads
    layer = b * L * (34 * h + 5 * a * L)
    acts = (config.num_hidden_layers * b * L * h * 4 + layer) if s.gradient_checkpointing else config.num_hidden_layers * layer
    logits = b * L * config.vocab_size * (2 + 4 + 4 + 4)
    return states, float(acts + logits)


@dataclass
class ShapePlan:
    shape: Shape
    settings: ShapeSettings
    counts: dict[str, int]
    config: Any
    lines: list[str]
    estimate_seconds: float
    skip_methods: dict[str, str]  # method -> why it is not run (memory)


def plan_shape(shape: Shape, s: ShapeSettings, info: DeviceInfo) -> ShapePlan:
    """The arithmetic printed before anything runs: parameters, bytes, FLOPs, memory and estimated seconds."""
    tok = shape_tokenizer(shape.tokenizer)
    config = shape.config(tok)
    counts = count_parameters(config)
    bf16_bytes = 2.0 * counts["total"]
    peak = info.peak_flops or FALLBACK_PEAK_TFLOPS * 1e12
    big = counts["total"] > 1e9
    mfu = 0.3 if big else 0.1  # conservative model-FLOPs utilisation for the estimate
    tokens = s.effective_batch * s.seq_len
    lines = [
        f"{shape.name}: {shape.stands_for}",
        f"  parameters {counts['total'] / 1e9:.3f}B (input embedding {counts['embedding'] / 1e9:.3f}B, "
        f"matmul {counts['matmul'] / 1e9:.3f}B); bf16 weights {bf16_bytes / 1e9:.2f} GB; vocabulary {config.vocab_size:,} "
        f"({shape.tokenizer} tokenizer)",
    ]
    est = 10.0 + bf16_bytes / 2e9  # init on the device, tokenizer
    skip: dict[str, str] = {}
    lines.append(
        f"  training step: {s.effective_batch} examples x {s.seq_len} tokens = {tokens:,} tokens (micro-batch "
        f"{s.per_device_batch} x {s.effective_batch // s.per_device_batch} accumulation steps"
        f"{', activation checkpointing' if s.gradient_checkpointing else ''}; bf16 autocast, fp32 master weights, AdamW)"
    )
    for method in METHODS:
        flops = train_flops(counts, config, method, tokens, s.seq_len)
        states, acts = training_memory(counts, config, s, method)
        need = states + acts
        secs = flops * (4 / 3 if s.gradient_checkpointing else 1.0) / (peak * mfu) + 3.0 + states / 50e9
        fits = info.memory_bytes is None or need <= 0.92 * info.memory_bytes
        if not fits:
            skip[method] = f"needs ~{need / 1e9:.0f} GB of {info.memory_bytes / 1e9:.0f} GB"
        lines.append(
            f"    {method:<18} {flops / 1e15:7.3f} PFLOP; memory ~{states / 1e9:6.1f} GB states + {acts / 1e9:5.1f} GB "
            f"activations = {need / 1e9:6.1f} GB{'' if fits else '  -> SKIPPED: does not fit'}; "
            f"est. {secs:5.1f} s at {peak / 1e12:.0f} TFLOP/s x MFU {mfu}"
        )
        est += secs if fits else 0.0
    # decoding is bound by reading the weights and by per-layer kernel launches (eager HF: ~1 ms a layer)
    per_step32 = 4.0 * counts["total"] / 3e12 + 1e-3 * config.num_hidden_layers
    per_step16 = 2.0 * counts["total"] / 3e12 + 1e-3 * config.num_hidden_layers
    eq_steps = 2 * (s.eq_prompts + 1) * s.eq_tokens  # batch-1 + batched, with and without the rules
    gen_secs = eq_steps * (per_step32 + per_step16) + 2 * s.gen_tokens * per_step16
    lines.append(
        f"  generation: {s.gen_prompts} prompts x {s.gen_tokens} new tokens batched, with and without the rules (bf16); "
        f"batch-1 vs batched on {s.eq_prompts} prompts x {s.eq_tokens} tokens (fp32 and bf16): {2 * s.gen_tokens + 2 * eq_steps} "
        f"decode steps at ~{per_step16 * 1e3:.0f}-{per_step32 * 1e3:.0f} ms: est. {gen_secs:.0f} s"
    )
    io_secs = 2 * bf16_bytes / 1e9 + bf16_bytes / 1.5e9  # write 2 checkpoints at ~1 GB/s, load one at ~1.5 GB/s
    diff_secs = 2 * bf16_bytes / 0.5e9 + (gram_seconds(counts, config) if s.weight_spectrum else 0.0)
    spectra = (
        " with spectra"
        if s.weight_spectrum
        else f" (norms and cosines; spectra off: ~{gram_seconds(counts, config) / 60:.0f} min of fp64 Grams on CPU)"
    )
    lines.append(
        f"  checkpoints: write 2 x {bf16_bytes / 1e9:.2f} GB, load 1 with device_map=auto: est. {io_secs:.0f} s; "
        f"streamed weight diff{spectra}: est. {diff_secs:.0f} s"
    )
    small = 15.0 + (25.0 if s.cpu_reference else 0.0)
    lines.append(
        f"  ranking ({s.rank_instructions} instructions x {1 + s.rank_negatives} responses, lens at {s.rank_layers}) and delta pass "
        f"({s.delta_texts} texts, lens at {s.delta_layers}): est. {small:.0f} s"
        f"{' incl. the fp32 CPU reference' if s.cpu_reference else '; no CPU reference at this size (fp32 7B on CPU: 27 GB, minutes)'}"
    )
    est += gen_secs + io_secs + diff_secs + small
    lines.append(f"  estimated total for {shape.name}: {est:.0f} s")
    return ShapePlan(shape, s, counts, config, lines, est, skip)


def gram_seconds(counts: dict[str, int], config: Any) -> float:
    """fp64 Gram matrices of every block matrix's delta on the CPU (~20 GFLOP/s), for the spectra."""
    h, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    hd = getattr(config, "head_dim", None) or h // heads
    q = heads * hd
    kv = config.num_key_value_heads * hd
    mats = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
    flops = L * sum(2 * r * c * min(r, c) for r, c in mats) + 2 * config.vocab_size * h * h
    return flops / 20e9


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    model: str
    step: str
    dtype: str
    tokens: int | None = None
    seconds: float | None = None
    flops: float | None = None
    peak_memory: int | None = None
    note: str = ""

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None


@dataclass
class Check:
    model: str
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    device: DeviceInfo
    tiny: bool
    plan: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    estimate_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def mfu(self, row: Row) -> float | None:
        if row.flops is None or not row.seconds or self.device.peak_flops is None:
            return None
        return row.flops / row.seconds / self.device.peak_flops

    def table(self) -> str:
        lines = ["| model | step | dtype | tokens | seconds | tokens/s | MFU | peak GPU mem |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            mfu = self.mfu(r)
            tps = r.tokens_per_second()
            lines.append(
                f"| {r.model} | {r.step}{' (' + r.note + ')' if r.note else ''} | {r.dtype} | "
                f"{'' if r.tokens is None else format(r.tokens, ',')} | {'' if r.seconds is None else format(r.seconds, '.2f')} | "
                f"{'' if tps is None else format(tps, ',.0f')} | {'–' if mfu is None else format(100 * mfu, '.1f') + '%'} | "
                f"{'–' if r.peak_memory is None else format(r.peak_memory / 2**30, '.2f') + ' GiB'} |"
            )
        return "\n".join(lines)

    def checks_table(self) -> str:
        lines = ["| model | check | result | detail |", "|---|---|---|---|"]
        lines += [f"| {c.model} | {c.name} | {'PASS' if c.ok else 'FAIL'} | {c.detail} |" for c in self.checks]
        return "\n".join(lines)

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        head = f"{len(self.checks) - len(failed)}/{len(self.checks)} checks passed"
        return head + ("" if not failed else "; FAILED: " + ", ".join(f"{c.model}/{c.name}" for c in failed))

    def to_json(self) -> dict[str, Any]:
        return {
            "device": {
                "name": self.device.name,
                "type": self.device.device.type,
                "peak_flops": self.device.peak_flops,
                "peak_source": self.device.peak_source,
                "memory_bytes": self.device.memory_bytes,
            },
            "tiny": self.tiny,
            "ok": self.ok,
            "seconds": self.seconds,
            "estimate_seconds": self.estimate_seconds,
            "plan": self.plan,
            "rows": [{**asdict(r), "tokens_per_second": r.tokens_per_second(), "mfu": self.mfu(r)} for r in self.rows],
            "checks": [asdict(c) for c in self.checks],
        }


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


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _timed(dev: torch.device) -> Iterator[dict[str, Any]]:
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
    from implicit_it.config import ExperimentConfig, TrainingConfig, load_config

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
    with _timed(dev) as t:
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
    _free(dev)
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
        with _timed(dev) as t:
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
        with _timed(dev) as t:
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

    from implicit_it.probes import RankingProbe, RankingSource, build_ranking_groups, paper_scores

    dev, s, name = report.device.device, plan.settings, plan.shape.name
    n = s.rank_instructions
    source = RankingSource(tuple(synthetic_instructions(n, seed=21)), tuple(range(n)), tuple(synthetic_texts(n, s.texts_words, seed=22)))
    groups = build_ranking_groups(source, negatives=s.rank_negatives, seed=0)
    probe = RankingProbe(source, groups, max_length=1024, layers=s.rank_layers, n_boot=200)
    with _timed(dev) as t:
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
    with _timed(dev) as t:
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
        with _timed(b.device) as t:
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
        with _timed(b.device) as t:
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
    with _timed(dev) as t:
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
    with _timed(dev) as t:
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
    with _timed(dev) as t:
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


# --------------------------------------------------------------------------- the run


def _attempt(report: CheckReport, model: str, step: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)``; an exception (e.g. out of memory) becomes a failed check and the run goes on."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the other steps
        report.checks.append(
            Check(model, f"{step}: ran", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        )
        traceback.print_exc(file=sys.stderr)
    _free(report.device.device)  # after the except block: the traceback (and the step's tensors) are gone
    return None


def check_shape(
    report: CheckReport, plan: ShapePlan, steps: Sequence[str], workdir: Path, inject: str | None, say: Callable[[str], None]
) -> None:
    shape, s = plan.shape, plan.settings
    dev = report.device.device
    name = shape.name
    say(f"== {name}: building from its config with random weights on {dev} ...")
    with _timed(dev) as t:
        loaded = random_model(shape, dtype=torch.float32, device=dev, seed=0, attn_implementation=s.train_attn)
    report.rows.append(
        Row(
            name,
            "build (random init on the device)",
            "fp32",
            None,
            t["seconds"],
            None,
            t["peak"],
            note=f"{plan.counts['total'] / 1e6:,.1f}M parameters",
        )
    )
    if "train" in steps:
        for method in METHODS:
            if method in plan.skip_methods:
                report.rows.append(Row(name, f"train {method}", "bf16 autocast", note="skipped: " + plan.skip_methods[method]))
                continue
            say(f"   train {method} ...")
            model = _attempt(report, name, f"train {method}", train_step, report, loaded, shape, s, plan, method, workdir)
            if model is not None:
                loaded.model = model
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    loaded.model.eval()
    loaded.model.config.use_cache = True
    if "generate" in steps:
        say("   generate fp32: batch-1 vs batched ...")
        _attempt(report, name, "generate fp32", generation_equality, report, loaded, shape, s, inject)
        _attempt(report, name, "rule scores", rule_scores_agree, report, loaded, shape)
    if not set(steps) & {"generate", "rank", "delta", "weights"}:
        return
    say("   bf16 weights, the noisy variant, checkpoints ...")
    loaded.model.to(torch.bfloat16)
    if loaded.model.config.dtype != torch.bfloat16:
        loaded.model.config.dtype = torch.bfloat16
    _free(dev)
    variant = perturbed(loaded, NOISE, seed=1)
    out = _attempt(report, name, "save + load", save_and_load, report, loaded, variant, plan, workdir)
    if out is None:
        return
    base, base_dir, variant_dir = out
    del loaded
    _free(dev)
    if "generate" in steps:
        say("   generate bf16 ...")
        _attempt(report, name, "generate bf16", generation_timing, report, base, plan)
        _attempt(report, name, "generate bf16 equality", generation_equality, report, base, shape, s, None)
    if "rank" in steps:
        say("   rank ...")
        _attempt(report, name, "rank", ranking, report, base, plan)
    if "delta" in steps:
        say("   delta pass ...")
        _attempt(report, name, "delta pass", delta_pass, report, base, variant, plan)
    if "weights" in steps:
        say("   weight diff ...")
        _attempt(report, name, "weight diff", weight_diff, report, base_dir, variant_dir, plan, base.tokenizer)
    del base, variant
    _free(dev)


def assumed_device(spec: str) -> DeviceInfo:
    """A GPU described, not present (``--plan --assume "H200:141"``): name from the peak table, memory in GB."""
    name, _, mem = spec.partition(":")
    peak = next((t for key, t in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)
    return DeviceInfo(
        torch.device("cuda"),
        f"{name} (assumed, not present)",
        (peak or FALLBACK_PEAK_TFLOPS) * 1e12,
        f"{name} bf16 dense peak" if peak else f"assumed {FALLBACK_PEAK_TFLOPS:g} TFLOP/s",
        int(float(mem or 141) * 1e9),
    )


def make_plans(info: DeviceInfo, *, tiny: bool, shapes: Sequence[str] | None = None, seq_len: int | None = None) -> list[ShapePlan]:
    names = list(shapes) if shapes else list(TINY_SHAPES if tiny else FULL_SHAPES)
    plans = []
    for n in names:
        shape = get_shape(n)
        plans.append(plan_shape(shape, shape_settings(shape, tiny=tiny or shape.is_tiny, seq_len=seq_len), info))
    return plans


def plan_lines(plans: Sequence[ShapePlan], info: DeviceInfo) -> list[str]:
    total = sum(p.estimate_seconds for p in plans)
    return [line for p in plans for line in p.lines] + [
        f"estimated total: {total:.0f} s (budget {BUDGET_SECONDS} s on one H100/H200-class GPU)"
        + ("" if info.is_cuda else "; the estimate assumes a GPU")
    ]


def device_line(info: DeviceInfo) -> str:
    if info.is_cuda:
        return (
            f"device: {info.name}, {info.memory_bytes / 2**30:.1f} GiB, bf16 peak {info.peak_flops / 1e12:.0f} TFLOP/s ({info.peak_source})"
        )
    return f"device: {info.name} — every 'device' run below is bf16 on the CPU, compared against fp32 on the CPU"


def run_gpu_check(
    *,
    tiny: bool = False,
    shapes: Sequence[str] | None = None,
    device: str | None = None,
    seq_len: int | None = None,
    steps: Sequence[str] = STEPS,
    workdir: str | Path | None = None,
    inject: str | None = None,
    say: Callable[[str], None] = print,
) -> CheckReport:
    """Run the readiness check; ``say`` gets the plan and progress lines. See the module docstring.

    Full mode needs CUDA unless ``device="cpu"`` is asked for explicitly (a slow dry run of the real shapes)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t_start = time.perf_counter()
    info = device_info(device)
    if not tiny and not info.is_cuda and device is None:
        raise RuntimeError("the full check builds a 7B model: it needs a CUDA device (use --tiny on CPU)")
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; choose from {list(STEPS)}")
    report = CheckReport(info, tiny)
    say(device_line(info))
    say(
        f"torch {torch.__version__}, transformers {transformers.__version__}; mode: {'tiny' if tiny else 'full'}; steps: {', '.join(steps)}"
    )
    plans = make_plans(info, tiny=tiny, shapes=shapes, seq_len=seq_len)
    report.estimate_seconds = sum(p.estimate_seconds for p in plans)
    report.plan = plan_lines(plans, info)
    say("\n".join(["plan:"] + report.plan))
    # 2-layer shapes gain nothing from intra-op threads, and on a busy CPU OpenMP's spinning threads made the tiny run 5x slower
    threads = torch.get_num_threads()
    if tiny and not info.is_cuda:
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="iit-gpu-check-", dir=workdir) as tmp:
            for plan in plans:
                check_shape(report, plan, steps, Path(tmp), inject, say)
    finally:
        torch.set_num_threads(threads)
    report.seconds = time.perf_counter() - t_start
    return report


def print_report(report: CheckReport, say: Callable[[str], None] = print) -> None:
    say("")
    say(report.table())
    say("")
    say(report.checks_table())
    say("")
    rss = None
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    except Exception:  # noqa: BLE001 - not on every platform
        pass
    say(
        f"{report.summary()}; wall time {report.seconds:.1f} s (estimated {report.estimate_seconds:.0f} s)"
        + (f"; peak host RSS {rss:.2f} GiB" if rss else "")
    )


def environment_lines() -> list[str]:
    """``iit doctor``: versions, CUDA, the device and its bf16 peak."""
    import platform

    import transformers

    info = device_info()
    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"CUDA available: {torch.cuda.is_available()}"
        + (f" (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))" if torch.cuda.is_available() else ""),
    ]
    if info.is_cuda:
        lines.append(
            f"device: {info.name}, {info.memory_bytes / 2**30:.1f} GiB, bf16 peak {info.peak_flops / 1e12:.0f} TFLOP/s "
            f"({info.peak_source}); bf16 supported: {torch.cuda.is_bf16_supported()}"
        )
    else:
        lines.append(f"device: {info.name}")
    lines.append(f"HF_HUB_OFFLINE: {os.environ.get('HF_HUB_OFFLINE', 'unset')}")
    lines.append("GPU readiness check: iit doctor --gpu (on a GPU machine, <= 10 min); --gpu --tiny: seconds, any device")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer shapes (seconds, any device; what CI runs on CPU)")
    parser.add_argument(
        "--shapes", default=None, help=f"comma-separated shapes (default: {','.join(FULL_SHAPES)}; --tiny: {','.join(TINY_SHAPES)})"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--seq-len", type=int, default=None, help="training sequence length, >= 32 (default 1024; --tiny 32)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (a temporary folder under it, removed after)")
    parser.add_argument("--json", default=None, help="also write the plan, rows and checks as JSON here")
    parser.add_argument("--plan", action="store_true", help="print the budget arithmetic and exit (nothing is built)")
    parser.add_argument("--assume", default=None, metavar="GPU:GB", help='with --plan: size for this GPU, e.g. "H200:141", "H100:80"')
    parser.add_argument("--inject", default=None, choices=["generation"], help=argparse.SUPPRESS)  # tests: a deliberate mismatch
    args = parser.parse_args(argv)
    if args.seq_len is not None and args.seq_len < 32:
        parser.error("--seq-len must be at least 32 (the prompt of a training example takes ~20 tokens)")
    if args.plan:
        info = assumed_device(args.assume) if args.assume else device_info(args.device)
        plans = make_plans(info, tiny=args.tiny, shapes=args.shapes.split(",") if args.shapes else None, seq_len=args.seq_len)
        print("\n".join([device_line(info), "plan:"] + plan_lines(plans, info)))
        return 0
    report = run_gpu_check(
        tiny=args.tiny,
        shapes=args.shapes.split(",") if args.shapes else None,
        device=args.device,
        seq_len=args.seq_len,
        steps=[x for x in args.steps.split(",") if x],
        workdir=args.workdir,
        inject=args.inject,
        say=lambda line: print(line, flush=True),
    )
    print_report(report, lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
