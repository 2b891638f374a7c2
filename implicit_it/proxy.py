"""Proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy") as decoding-time logit arithmetic.

At every step, on the same token prefix, the next-token scores are

    log_softmax( log p_base + α · (log p_expert − log p_anti) )

with each ``log p`` the log-softmax of that model's logits (as the rule adapter's product of experts in
:mod:`implicit_it.rules` combines log-probabilities). All models must share one tokenizer. With the study's variants,
expert = a trained variant and anti-expert = base = the base model, so α = 1 decodes as the expert and α = 0 as the base.

The proxy's *base* is the model ``generate_ids`` decodes with; the expert and anti-expert run inside a logits
processor (:class:`ProxyLogitsProcessor`) on the same left-padded batch, each with its own KV cache, so the batched,
KV-cached greedy decoding of :mod:`implicit_it.generation` is reused and the rule adapter's processor can follow it.
A model that *is* the base (the default anti-expert) is not run twice: the base's own scores stand in for it.

Spec syntax (``iit generate -m SPEC``), decided here:

* ``proxy:expert=<spec>,anti=<spec>,alpha=<a>[,base=<spec>]`` — explicit; a field ends where ``,<key>=`` starts, so
  model specs may hold '-' (and ',' not followed by a key name). ``base`` defaults to the anti-expert.
* ``proxy:<expert>-<anti>@<alpha>`` — short; alpha is after the last '@'. Model specs may hold '-'
  (``gemma-3-270m``), so the split is the one '-' at which *both* sides name models that exist here (an embedded
  name, a local directory or .gguf file, or a hub id in the local HF cache). No such '-', or several, is one error
  that lists the candidates and points to the explicit form.

Greedy only, on the hf backend: vLLM's logits processors see one model's logits, not three models'.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import ModelSpecError

PREFIX = "proxy:"
KEYS = ("expert", "anti", "alpha", "base")
_FIELD_START = re.compile(r",(?=(?:expert|anti|alpha|base)=)")
EXPLICIT_FORM = "proxy:expert=<spec>,anti=<spec>,alpha=<a>[,base=<spec>]"


@dataclass(frozen=True)
class ProxySpec:
    expert: str
    anti: str
    alpha: float
    base: str | None = None  # None: the anti-expert

    @property
    def base_spec(self) -> str:
        return self.base if self.base is not None else self.anti

    def __str__(self) -> str:
        base = f",base={self.base}" if self.base is not None else ""
        return f"{PREFIX}expert={self.expert},anti={self.anti},alpha={self.alpha:g}{base}"


def is_proxy_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def spec_exists(spec: str) -> bool:
    """Whether ``spec`` names a model available here (what disambiguates the short form's '-')."""
    from .models import EMBEDDED_MODELS, resolve_model_spec

    if spec in EMBEDDED_MODELS:
        return True
    try:
        source = resolve_model_spec(spec)
    except ModelSpecError:
        return False
    if source.kind != "hub":
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source.path, "config.json"), str)
    except Exception:  # an id the hub library refuses is no model either
        return False


def parse_alpha(text: str, where: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not math.isfinite(alpha):
        raise ModelSpecError(f"{where}: alpha must be a finite number, got {text!r}")
    return alpha


def parse_proxy_spec(spec: str, exists: Callable[[str], bool] = spec_exists) -> ProxySpec:
    """Parse either form (module docstring); ``exists`` decides the short form's split (tests pass their own)."""
    if not is_proxy_spec(spec):
        raise ModelSpecError(f"not a proxy spec: {spec!r} (expected {EXPLICIT_FORM} or proxy:<expert>-<anti>@<alpha>)")
    body = spec[len(PREFIX) :]
    if body.startswith(tuple(f"{k}=" for k in KEYS)):
        return _parse_explicit(spec, body)
    models, at, alpha_text = body.rpartition("@")
    if not at:
        raise ModelSpecError(f"{spec!r}: no '@<alpha>' at the end (or use {EXPLICIT_FORM})")
    alpha = parse_alpha(alpha_text, spec)
    splits = [(models[:i], models[i + 1 :]) for i, c in enumerate(models) if c == "-"]
    found = [(e, a) for e, a in splits if e and a and exists(e) and exists(a)]
    if len(found) != 1:
        why = (
            "no '-' splits it into two models that exist here"
            if not found
            else "several '-' split it into two existing models: " + "; ".join(f"{e!r} | {a!r}" for e, a in found)
        )
        raise ModelSpecError(f"{spec!r}: {why}; name them explicitly: {EXPLICIT_FORM}")
    return ProxySpec(found[0][0], found[0][1], alpha)


def _parse_explicit(spec: str, body: str) -> ProxySpec:
    fields: dict[str, str] = {}
    for part in _FIELD_START.split(body):
        key, _, value = part.partition("=")
        if key in fields:
            raise ModelSpecError(f"{spec!r}: {key}= given twice")
        if not value:
            raise ModelSpecError(f"{spec!r}: {key}= is empty")
        fields[key] = value
    missing = [k for k in ("expert", "anti", "alpha") if k not in fields]
    if missing:
        raise ModelSpecError(f"{spec!r}: missing {', '.join(k + '=' for k in missing)} ({EXPLICIT_FORM})")
    return ProxySpec(fields["expert"], fields["anti"], parse_alpha(fields["alpha"], spec), fields.get("base"))


# ------------------------------------------------------------------ the models and their logit arithmetic


def output_width(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


@dataclass
class ProxyModels:
    """The three loaded models, standing in for a ``LoadedModel`` (``model``, ``tokenizer``, ``describe``): ``model``
    is the proxy's base, which ``generate_ids`` decodes with; :meth:`logits_processor` adds the expert arithmetic."""

    spec: ProxySpec
    base: Any  # LoadedModel
    expert: Any
    anti: Any  # may be ``base`` itself (then not run again)
    label: str = field(default="")

    def __post_init__(self) -> None:
        check_compatible({"base": self.base, "expert": self.expert, "anti-expert": self.anti})
        self.label = self.label or str(self.spec)

    @property
    def model(self) -> Any:
        return self.base.model

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def describe(self) -> dict[str, Any]:
        """The manifest's model entry: the base's (what decodes), named by the proxy spec, with each model's own entry."""
        parts = {"alpha": self.spec.alpha, "base": self.base.describe(), "expert": self.expert.describe(), "anti": self.anti.describe()}
        return {**self.base.describe(), "spec": self.label, "display_name": self.label, "proxy": parts}

    def logits_processor(self, batch: Any) -> "ProxyLogitsProcessor":
        return ProxyLogitsProcessor(self, batch.attention_mask)


def check_compatible(models: dict[str, Any]) -> None:
    """One error when the models do not share a tokenizer and logit width (the arithmetic adds logits token by token)."""
    (first, ref), *others = models.items()
    vocab, width = ref.tokenizer.get_vocab(), output_width(ref.model)
    for name, m in others:
        if m is ref:
            continue
        if m.tokenizer.get_vocab() != vocab or output_width(m.model) != width:
            raise ModelSpecError(
                f"proxy-tuning needs one shared tokenizer: the {name} ({m.source.spec}: {len(m.tokenizer)} tokens, "
                f"{output_width(m.model)} logits) differs from the {first} ({ref.source.spec}: {len(ref.tokenizer)} tokens, {width} logits)"
            )


class ProxyLogitsProcessor:
    """Per batch: runs the expert (and an anti-expert that is not the base) on the tokens ``generate`` has decoded so
    far, with their own KV caches and the base's left-padding mask and positions, and replaces the base's scores by
    the proxy's log-probabilities."""

    def __init__(self, proxy: ProxyModels, attention_mask: torch.Tensor):
        self.proxy, self.prompt_mask = proxy, attention_mask
        self.caches: dict[int, Any] = {}
        self.width = 0  # columns already fed to the expert models

    def _logits(self, loaded: Any, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        key = id(loaded)
        out = loaded.model(
            input_ids=input_ids[:, self.width :],
            attention_mask=mask,
            position_ids=positions[:, self.width :],
            past_key_values=self.caches.get(key),
            use_cache=True,
        )
        self.caches[key] = out.past_key_values
        return out.logits[:, -1].float()

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        p = self.proxy
        new = input_ids.shape[1] - self.prompt_mask.shape[1]
        prompt_mask = self.prompt_mask.to(input_ids.device)
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(input_ids.shape[0], new)], dim=1)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as transformers' generate numbers them
        base_lp = torch.log_softmax(scores.float(), -1)
        lp = {id(p.base): base_lp}
        for m in (p.expert, p.anti):
            if id(m) not in lp:
                lp[id(m)] = torch.log_softmax(self._logits(m, input_ids, mask, positions), -1)
        self.width = input_ids.shape[1]
        return torch.log_softmax(base_lp + p.spec.alpha * (lp[id(p.expert)] - lp[id(p.anti)]), -1)


def load_proxy(spec: str | ProxySpec, load: Callable[[str], Any] | None = None, **load_kwargs: Any) -> ProxyModels:
    """Load a proxy's models (``load(spec)``, default :func:`~implicit_it.models.load_model` with ``load_kwargs``);
    a spec named twice loads once (the process cache), so the default anti-expert is the base object itself."""
    from .models import load_model

    parsed = spec if isinstance(spec, ProxySpec) else parse_proxy_spec(spec)
    get = load or (lambda s: load_model(s, **load_kwargs))
    loaded: dict[str, Any] = {}
    for s in (parsed.base_spec, parsed.expert, parsed.anti):
        if s not in loaded:
            loaded[s] = get(s)
    label = spec if isinstance(spec, str) else str(parsed)
    return ProxyModels(parsed, loaded[parsed.base_spec], loaded[parsed.expert], loaded[parsed.anti], label)
