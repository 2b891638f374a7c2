"""Base against each variant, all four analyses from one call: what ``iit diff`` runs.

Weight deltas stream from the checkpoints (no model is loaded for them). The three logit
analyses share one :class:`~.delta_pass.DeltaPass` per variant over the same texts: the data
file's responses and, unless turned off, the variant's own greedy generations for the same
instructions (which the token-shift analysis needs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from implicit_it.analysis import AnalysisResult
from implicit_it.models import load_tokenizer
from implicit_it.rules import RuleAdapter, RuleConfig

from .delta_pass import DeltaPass, DeltaPassConfig, DiffText, PassAnalysis, rule_token_ids
from .logit_delta import LogitDelta
from .rule_comparison import RuleComparison
from .token_shift import TokenShift
from .weights import WeightDelta, checkpoint_dir

ANALYSES = ("weights", "logits", "rules", "shift")
TEXT_KINDS = ("data", "generations")


def parse_analyses(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if spec.strip() == "all":
        return list(ANALYSES)
    bad = [n for n in names if n not in ANALYSES]
    if bad or not names:
        raise ValueError(f"analyses: unknown {bad or spec!r}; choose from {list(ANALYSES)} or 'all'")
    return list(dict.fromkeys(names))


def parse_texts(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in TEXT_KINDS]
    if bad or not names:
        raise ValueError(f"texts: unknown {bad or spec!r}; choose from {list(TEXT_KINDS)} (comma-separated)")
    return names


def load_variant(spec: str, base_spec: str, **load_kwargs: Any) -> Any:
    """A variant model: any model spec, or a PEFT LoRA adapter directory merged into a fresh copy of the base."""
    from implicit_it.models import LoadedModel, ModelSource, load_model

    path = Path(spec)
    if not (path / "adapter_config.json").is_file():
        return load_model(spec, use_process_cache=False, **load_kwargs)
    from peft import PeftModel

    base = load_model(base_spec, use_process_cache=False, **load_kwargs)
    merged = PeftModel.from_pretrained(base.model, str(path)).merge_and_unload()
    merged.eval()
    return LoadedModel(merged, base.tokenizer, ModelSource(spec, "local", str(path.resolve())), base.load_seconds, "lora-merged")


@dataclass
class VariantDiff:
    """What one variant produced: a result per analysis, and the texts its logit analyses read."""

    variant: str
    results: dict[str, AnalysisResult] = field(default_factory=dict)
    texts: list[DiffText] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class LayerDiff:
    """Configured once; ``run`` compares the base with one variant."""

    analyses: Sequence[str] = ANALYSES
    texts: Sequence[str] = TEXT_KINDS
    pass_config: DeltaPassConfig = field(default_factory=DeltaPassConfig)
    rule_config: RuleConfig = field(default_factory=RuleConfig)
    vocab: str = "frequent:2048"  # see analyses.rule_family: a per-token bias over all tokens measures static bias
    max_new_tokens: int = 128
    batch_size: int = 8
    spectrum: bool = True
    top_n: int = 20

    def pass_analyses(self) -> list[PassAnalysis]:
        make = {
            "logits": lambda: LogitDelta(top_n=self.top_n),
            "rules": lambda: RuleComparison(vocab=self.vocab, top_n=self.top_n),
            "shift": lambda: TokenShift(top_n=self.top_n),
        }
        return [make[name]() for name in self.analyses if name in make]

    def run(
        self,
        base: Any,
        variant: Any,
        data_texts: Sequence[DiffText],
        *,
        base_spec: str,
        variant_spec: str,
        progress: Callable[[str, int, int], Callable[[int], None] | None] | None = None,
    ) -> VariantDiff:
        """``base``/``variant``: loaded models (needed unless only weights are asked for).
        ``progress(label, total)`` may return an ``advance`` callback for each stage."""
        out = VariantDiff(variant_spec)
        adapter = RuleAdapter(base.tokenizer if base is not None else load_tokenizer(base_spec), self.rule_config)
        if "weights" in self.analyses:
            t0 = time.perf_counter()
            weights = WeightDelta(rule_token_ids=list(rule_token_ids(adapter)), spectrum=self.spectrum)
            out.results["weights"] = weights.run(checkpoint_dir(base_spec), checkpoint_dir(variant_spec), label=variant_spec)
            out.timings["weights"] = time.perf_counter() - t0
        analyses = self.pass_analyses()
        if not analyses:
            return out
        texts = list(data_texts) if "data" in self.texts else []
        if "generations" in self.texts:
            t0 = time.perf_counter()
            texts += self._generate(variant, data_texts)
            out.timings["generation"] = time.perf_counter() - t0
        out.texts = texts
        t0 = time.perf_counter()
        delta_pass = DeltaPass(base, variant, texts, adapter, self.pass_config)
        observers = [a.observer(delta_pass) for a in analyses]
        advance = progress(f"Δ {Path(variant_spec).name}", len(texts)) if progress else None
        out.counts = delta_pass.run(observers, progress=advance)
        for analysis, observer in zip(analyses, observers, strict=True):
            out.results[analysis.name] = observer.result(variant_spec, out.counts)
        out.timings["delta_pass"] = time.perf_counter() - t0
        return out

    def _generate(self, variant: Any, data_texts: Sequence[DiffText]) -> list[DiffText]:
        from implicit_it.generation import generate_responses

        seen: dict[int, str] = {}
        for t in data_texts:
            seen.setdefault(t.instruction_index, t.instruction)
        results, _ = generate_responses(
            variant,
            list(seen.values()),
            fmt=self.pass_config.fmt,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            show_progress=False,
        )
        return [
            DiffText(ins, r.output.strip(), "generation", i) for (i, ins), r in zip(seen.items(), results, strict=True) if r.output.strip()
        ]


def merge_results(diffs: Sequence[VariantDiff]) -> dict[str, AnalysisResult]:
    """One result per analysis with every variant side by side (what ``DIR/<name>.json`` holds)."""
    merged: dict[str, AnalysisResult] = {}
    for diff in diffs:
        for name, result in diff.results.items():
            merged[name] = merged[name].merge(result) if name in merged else result
    return merged
