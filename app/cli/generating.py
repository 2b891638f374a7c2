"""Greedy generation as the generating commands share it (``iit generate``, ``iit eval ifeval/ifsuite --model``):
one model, optionally combined with the rule adapter, decoded with a :class:`~implicit_it.config.GenerateConfig`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from implicit_it.config import GenerateConfig
from implicit_it.errors import ConfigError


@dataclass
class Generated:
    """The responses of one command's model, and what its manifest records about them."""

    decoded: Any  # engines.Decoded: results, stats, adapter, engine and model descriptions
    rule_config: Any  # rules.RuleConfig or None (the adapter's constants)
    label: str  # the model spec, with "+rules(eos,...)" when the adapter is on
    load_seconds: float  # model load (hf) or engine start-up (vllm), with the first use of the model
    format: str

    @property
    def results(self) -> list[Any]:
        return self.decoded.results

    @property
    def stats(self) -> Any:
        return self.decoded.stats

    @property
    def model(self) -> dict[str, Any]:
        """The model's manifest entry."""
        return self.decoded.model

    def config(self, cfg: GenerateConfig) -> dict[str, Any]:
        """The generation settings for a manifest, with the engine that ran them."""
        adapter = self.decoded.adapter
        return {
            "format": self.format,
            **cfg.model_dump(),
            "decoding": "greedy",
            "engine": self.decoded.engine,
            "rules": self.rule_config.model_dump(mode="json") if adapter is not None else None,
            "rule_tokens": [vars(r) for r in adapter.resolved] if adapter is not None else None,
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
        """Greedy-decode ``instructions`` on ``cfg.backend``; the rule adapter is on when ``rules``/``rules_config`` ask
        for it (``on_adapter(adapter)`` is called before decoding, e.g. to print the resolved rule tokens)."""
        from implicit_it.engines import generate
        from implicit_it.formats import get_format
        from implicit_it.models import load_model
        from implicit_it.proxy import is_proxy_spec, load_proxy
        from implicit_it.rules import rule_config_from

        if cfg.backend == "vllm" and (self.dtype is not None or self.device is not None):
            raise ConfigError(
                "--dtype and --device set the hf backend's model; with --backend vllm set vllm.dtype (--set vllm={dtype: ...})"
            )
        chat_format = get_format(self.fmt)
        rule_cfg = rule_config_from(self.rules, self.rules_config)
        t0 = time.perf_counter()
        decoded = generate(
            self.model,
            instructions,
            cfg,
            fmt=chat_format,
            rule_config=rule_cfg,
            load=lambda: (load_proxy if is_proxy_spec(self.model) else load_model)(self.model, dtype=self.dtype, device=self.device),
            on_adapter=on_adapter,
            show_progress=not self.quiet,
        )
        load_seconds = time.perf_counter() - t0 - decoded.stats.seconds
        adapter = decoded.adapter
        label = f"{self.model}+rules({','.join(adapter.rules)})" if adapter is not None else self.model
        return Generated(decoded, rule_cfg, label, load_seconds, chat_format.name)
