"""Adapters from a loaded HF model to the two hooking libraries.

Both read the *same* parameter tensors (no second copy of the weights), so an activation read
through TransformerLens, one read through nnsight and HF's own logits all come from one set of
parameters. nnsight traces the loaded module itself; TransformerLens rewires the modules it
wraps, so it gets a copy that shares the tensors (:func:`shared_weight_copy`). :func:`load_model`
loads eager attention by default, which TransformerLens also forces, so the numbers agree.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from .models import LoadedModel

PATCHED_IN_PLACE = ("forward",)  # instance attributes that shadow a module's own method (nnsight sets forward on each module it traces)


def shared_weight_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``model`` that shares every parameter and buffer tensor with it.

    Each submodule is a new object with its own child, parameter, buffer and hook tables, and the
    config is deep-copied; tensors are not copied. A library that rewires modules in place (the
    TransformerLens bridge swaps ~1,700 of them and forces eager attention) can work on the copy
    while the original, which :func:`~implicit_it.models.load_model` caches, stays as it was."""
    config = getattr(model, "config", None)
    config_copy = copy.deepcopy(config) if config is not None else None
    made: dict[int, torch.nn.Module] = {}

    def clone(module: torch.nn.Module) -> torch.nn.Module:
        if id(module) in made:  # a module reachable twice (tied submodules) stays one module
            return made[id(module)]
        new = module.__class__.__new__(module.__class__)
        state = {}
        for key, value in module.__dict__.items():
            if key in PATCHED_IN_PLACE or (key.startswith("__") and key.endswith("__")):
                continue  # another library's patch of the original (nnsight's forward and state): the copy starts clean
            if value is config and config is not None:
                value = config_copy
            elif isinstance(value, dict):  # _parameters, _buffers, _modules and every hook table
                value = copy.copy(value)
            state[key] = value
        new.__dict__.update(state)
        made[id(module)] = new
        new._modules = {name: None if child is None else clone(child) for name, child in module._modules.items()}
        return new

    return clone(model)


def transformer_bridge(loaded: LoadedModel) -> Any:
    """A TransformerLens ``TransformerBridge`` over the weights of ``loaded.model`` (raw HF
    weights, no folding), built on a :func:`shared_weight_copy`: the bridge shares the tensors
    but the caller's model keeps its modules, attention implementation and outputs."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = loaded.model.config
    if not getattr(cfg, "architectures", None):  # GGUF configs lack it; the bridge needs it
        raise ValueError(f"{loaded.source.spec}: config.architectures is unset; load it with implicit_it.load_model")
    name = loaded.source.upstream or loaded.source.spec
    return TransformerBridge.boot_transformers(
        name,
        hf_model=shared_weight_copy(loaded.model),
        tokenizer=loaded.tokenizer,
        dtype=loaded.dtype,
        device=loaded.device,
    )


def nnsight_model(loaded: LoadedModel) -> Any:
    """An nnsight ``TransformersModel`` (text-generation) over ``loaded.model``.

    Traces run the same module: ``nnsight_model(lm)._module is lm.model``. (nnsight 0.8
    deprecates ``LanguageModel`` in favour of this class; the tracing API is the same.)"""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")


def traced_residuals(lm: Any, inputs: dict[str, Any], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The residual stream after each of ``layers`` (0 = embeddings, l = after block l), read in
    one traced forward of the nnsight model ``lm`` on ``inputs`` (the HF forward's keyword
    arguments). ``logits_to_keep=1`` skips the (rows, tokens, vocab) output: a lens computes the
    logits it needs."""
    decoder = getattr(lm, lm._module.base_model_prefix)
    saved = {}
    with lm.trace(**inputs, logits_to_keep=1):
        for layer in layers:
            node = decoder.embed_tokens if layer == 0 else decoder.layers[layer - 1]
            saved[layer] = node.output.save()
    return {layer: (v[0] if isinstance(v, tuple) else v) for layer, v in saved.items()}
