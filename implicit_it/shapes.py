"""Model shapes built from configs with random weights: real architectures, no checkpoint needed.

A *shape* is an HF config (layers, widths, heads, vocabulary) without weights. The GPU readiness
check (:mod:`implicit_it.app.gpu_check`) builds the paper-scale shapes on the accelerator itself, and
the unit tests build the tiny ones; both go through :func:`random_model`, which returns the same
:class:`~implicit_it.models.LoadedModel` every study function takes.

* ``gemma-3-270m``: google/gemma-3-270m's config (18 layers, width 640, 5:1 sliding/full attention,
  tied 262,144-token vocabulary), with the Gemma-3 tokenizer of the embedded GGUF.
* ``llama-2-7b``: Llama-2-7B's config (32 layers, width 4096, MLP 11008, 32 heads, no GQA), with the
  SmolLM2 tokenizer (the project's only offline Llama-family tokenizer), so the vocabulary is
  SmolLM2's 49,152 instead of Llama-2's 32,000: 6.88B parameters instead of 6.74B.
* ``tiny-gemma3``, ``tiny-llama``, ``tiny-olmo``: 2-layer, width-64 versions (the unit tests' shapes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserError
from .models import LoadedModel, ModelSource, load_tokenizer


def tiny_config(arch: str, vocab_size: int, *, bos: int = 1, eos: int = 2, pad: int = 0, head_dim: int = 16) -> Any:
    """A 2-layer random model config in the shape of each architecture we support (gemma3, llama, olmo).

    ``head_dim`` 32 gives shapes vLLM's CPU attention accepts (it has no kernel for 16); gemma3 and llama only."""
    if head_dim != 16 and arch == "olmo":
        raise ValueError("the tiny olmo shape has head_dim 16 only")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            **common,
            head_dim=head_dim,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            architectures=["Gemma3ForCausalLM"],
        )
    if arch == "llama":
        from transformers import LlamaConfig

        if head_dim != 16:
            return LlamaConfig(**common, head_dim=head_dim, architectures=["LlamaForCausalLM"])
        return LlamaConfig(**common, architectures=["LlamaForCausalLM"])
    if arch == "olmo":
        from transformers import OlmoConfig

        return OlmoConfig(**common, architectures=["OlmoForCausalLM"])
    raise ValueError(f"unknown tiny architecture {arch!r}; choose gemma3, llama or olmo")


def gemma3_270m_config(vocab_size: int, *, bos: int, eos: int, pad: int) -> Any:
    """google/gemma-3-270m's text config (as transformers reads it from the embedded GGUF)."""
    from transformers import Gemma3TextConfig

    pattern = (["sliding_attention"] * 5 + ["full_attention"]) * 3
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        layer_types=pattern,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        architectures=["Gemma3ForCausalLM"],
    )


def llama2_7b_config(vocab_size: int, *, bos: int, eos: int, pad: int) -> Any:
    """meta-llama/Llama-2-7b-hf's config, with the given vocabulary size."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        architectures=["LlamaForCausalLM"],
    )


@dataclass(frozen=True)
class Shape:
    """A named architecture: its config builder, the tokenizer it is built with, and what it stands for."""

    name: str
    tokenizer: str  # a model SPEC whose tokenizer is used (embedded names load offline)
    stands_for: str
    paper_config: str | None  # configs/<file> whose training block the GPU check steps with
    arch: str | None = None  # tiny shapes: gemma3 / llama / olmo

    def config(self, tokenizer: Any) -> Any:
        ids = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
        vocab = len(tokenizer)
        if self.arch is not None:
            return tiny_config(self.arch, vocab, **ids)
        if self.name == "gemma-3-270m":
            return gemma3_270m_config(vocab, **ids)
        if self.name == "llama-2-7b":
            return llama2_7b_config(vocab, **ids)
        raise ValueError(self.name)

    @property
    def is_tiny(self) -> bool:
        return self.arch is not None


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("gemma-3-270m", "gemma-3-270m", "google/gemma-3-270m (its config and Gemma-3 tokenizer)", "gemma3-270m-paper.yaml"),
        Shape(
            "llama-2-7b",
            "smollm2-135m-instruct",
            "meta-llama/Llama-2-7b-hf's config with the SmolLM2 tokenizer (vocabulary 49,152, not 32,000)",
            "llama2-7b.yaml",
        ),
        Shape("tiny-gemma3", "gemma-3-270m", "a 2-layer Gemma-3 (width 64) with the Gemma-3 tokenizer", "gemma3-270m-paper.yaml", "gemma3"),
        Shape("tiny-llama", "smollm2-135m-instruct", "a 2-layer Llama (width 64) with the SmolLM2 tokenizer", "llama2-7b.yaml", "llama"),
        Shape("tiny-olmo", "smollm2-135m-instruct", "a 2-layer OLMo (width 64) with the SmolLM2 tokenizer", None, "olmo"),
    ]
}


def get_shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise UserError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}") from None


@functools.cache
def shape_tokenizer(spec: str) -> Any:
    """A tokenizer, loaded once per process (the Gemma-3 one takes a few seconds)."""
    return load_tokenizer(spec)


def count_parameters(config: Any) -> dict[str, int]:
    """Parameter counts of a config, built on the meta device (no memory, no init):
    ``total``, ``embedding`` (input embedding) and ``matmul`` (those that multiply each token: everything
    but the input embedding lookup and the norms; a tied LM head counts, it is a matmul)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    return {"total": total, "embedding": emb, "matmul": total - norms - (0 if tied else emb), "tied": int(tied)}


def random_model(
    shape: str | Shape,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tokenizer: Any = None,
    attn_implementation: str | None = "eager",
) -> LoadedModel:
    """A random-weight model of ``shape``, initialised directly on ``device`` (a 7B init on a GPU takes seconds)."""
    from transformers import AutoModelForCausalLM

    shape = get_shape(shape) if isinstance(shape, str) else shape
    tok = tokenizer if tokenizer is not None else shape_tokenizer(shape.tokenizer)
    config = shape.config(tok)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    model.eval()
    source = ModelSource(f"random:{shape.name}", "random", "", architecture=config.architectures[0], upstream=shape.stands_for)
    return LoadedModel(model, tok, source, loaded_from="random-init")
