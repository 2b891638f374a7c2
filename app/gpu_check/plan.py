"""The budget arithmetic of the GPU check: shapes, device, FLOPs, memory and the plan per shape (nothing is built)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from implicit_it.shapes import Shape, count_parameters, get_shape, shape_tokenizer

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
