"""Adapters from a loaded HF model to the two hooking libraries.

Both wrap the *same* ``torch.nn.Module`` (no second copy of the weights), so an activation read
through TransformerLens, one read through nnsight and HF's own logits all come from one set of
parameters. TransformerLens forces eager attention on the module it wraps; :func:`load_model`
loads eager by default so the HF numbers do not shift when a bridge is attached.
"""

from __future__ import annotations

from typing import Any

from .models import LoadedModel


def transformer_bridge(loaded: LoadedModel) -> Any:
    """A TransformerLens ``TransformerBridge`` over ``loaded.model`` (raw HF weights, no folding)."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = loaded.model.config
    if not getattr(cfg, "architectures", None):  # GGUF configs lack it; the bridge needs it
        raise ValueError(f"{loaded.source.spec}: config.architectures is unset; load it with implicit_it.load_model")
    name = loaded.source.upstream or loaded.source.spec
    return TransformerBridge.boot_transformers(
        name, hf_model=loaded.model, tokenizer=loaded.tokenizer, dtype=loaded.dtype, device=loaded.device,
    )


def nnsight_model(loaded: LoadedModel) -> Any:
    """An nnsight ``TransformersModel`` (text-generation) over ``loaded.model``.

    Traces run the same module: ``nnsight_model(lm)._module is lm.model``. (nnsight 0.8
    deprecates ``LanguageModel`` in favour of this class; the tracing API is the same.)"""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
