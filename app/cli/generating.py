"""Greedy generation as the generating commands share it (``iit generate``, ``iit eval ifeval/ifsuite --model``):
one model, optionally combined with the rule adapter, decoded with a :class:`~implicit_it.config.GenerateConfig`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from implicit_it.config import GenerateConfig


@dataclass
class Generated:
    """The responses of one command's model, and what its manifest records about them."""

    results: list[Any]  # generation.GenerationResult, one per instruction
    stats: Any  # generation.GenerationStats
    loaded: Any  # models.LoadedModel
    adapter: Any  # rules.RuleAdapter or None
    rule_config: Any  # rules.RuleConfig or None (the adapter's constants)
    label: str  # the model spec, with "+rules(eos,...)" when the adapter is on
    load_seconds: float
    format: str

    def config(self, cfg: GenerateConfig) -> dict[str, Any]:
        """The generation settings for a manifest."""
        return {
            "format": self.format,
            **cfg.model_dump(),
            "decoding": "greedy",
            "rules": self.rule_config.model_dump(mode="json") if self.adapter is not None else None,
            "rule_tokens": [vars(r) for r in self.adapter.resolved] if self.adapter is not None else None,
            "tokens_per_second": round(self.stats.tokens_per_second, 2),
        }


@dataclass(frozen=True)
class ModelRequest:
    """Which model a generating command decodes with, as its options name it."""

    model: str
    fmt: str = "tulu"
    rules: str | None = None
    rules_config: str | Path | None = None
    dtype: str | None = None
    device: str | None = None
    quiet: bool = False

    def generate(self, instructions: list[str], cfg: GenerateConfig, on_adapter: Any = None) -> Generated:
        """Load the model and greedy-decode ``instructions``; the rule adapter is on when ``rules``/``rules_config`` ask
        for it (``on_adapter(adapter)`` is called before decoding, e.g. to print the resolved rule tokens)."""
        from implicit_it.formats import get_format
        from implicit_it.generation import generate_responses
        from implicit_it.models import load_model
        from implicit_it.rules import RuleAdapter, rule_config_from

        chat_format = get_format(self.fmt)
        rule_cfg = rule_config_from(self.rules, self.rules_config)
        t0 = time.perf_counter()
        loaded = load_model(self.model, dtype=self.dtype, device=self.device)
        load_seconds = time.perf_counter() - t0
        adapter = RuleAdapter(loaded.tokenizer, rule_cfg, fmt=chat_format) if rule_cfg is not None and rule_cfg.rules else None
        if adapter is not None and on_adapter is not None:
            on_adapter(adapter)
        results, stats = generate_responses(
            loaded,
            instructions,
            fmt=chat_format,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            show_progress=not self.quiet,
            logits_processor_factory=adapter.logits_processor if adapter is not None else None,
        )
        label = f"{self.model}+rules({','.join(adapter.rules)})" if adapter is not None else self.model
        return Generated(results, stats, loaded, adapter, rule_cfg, label, load_seconds, chat_format.name)
