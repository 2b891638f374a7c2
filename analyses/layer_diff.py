"""Base against each variant, every registered diff analysis from one call: what ``iit diff`` runs.

Weight deltas stream from the checkpoints (no model is loaded for them). The logit analyses
share one :class:`~.delta_pass.DeltaPass` per variant over the same texts: the data file's
responses and, unless turned off, the variant's own greedy generations for the same
instructions (which the token-shift analysis needs).

The analyses come from a registry (:func:`register_diff_analysis`): a
:class:`~.delta_pass.PassAnalysis` observes the shared pass; any other class is a checkpoint
analysis, ``for_diff(diff, rule_token_ids).run(base_dir, variant_dir, label=)``. ``ANALYSES`` is
a live view of the registered names, so a newly registered analysis runs in ``iit diff`` and in
the pipeline's diff step (both pass ``ANALYSES``) with no edit here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from pydantic import ValidationError

from implicit_it.analysis import AnalysisResult, merge_by_name, same_definition
from implicit_it.errors import UserError
from implicit_it.models import load_tokenizer
from implicit_it.rules import RuleAdapter, RuleConfig

from .delta_pass import DeltaPass, DeltaPassConfig, DiffText, PassAnalysis, rule_token_ids
from .logit_delta import LogitDelta
from .rule_comparison import RuleComparison
from .token_shift import TokenShift
from .weights import WeightDelta, checkpoint_dir

TEXT_KINDS = ("data", "generations")

A = TypeVar("A", bound=type)
_DIFF_ANALYSES: dict[str, type] = {}


def register_diff_analysis(cls: A) -> A:
    """Class decorator: ``LayerDiff`` runs ``cls`` (by ``cls.name``) by default. ``cls`` is a
    :class:`~.delta_pass.PassAnalysis`, or a checkpoint analysis (see the module docstring)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == "all" or "," in name:
        raise TypeError(f"{cls.__name__}: a diff analysis needs a class attribute `name` (not 'all', no commas)")
    old = _DIFF_ANALYSES.get(name)
    if old is not None and not same_definition(old, cls):
        raise ValueError(f"diff analysis {name!r} is taken by {old.__module__}.{old.__qualname__}")
    _DIFF_ANALYSES[name] = cls
    return cls


def unregister_diff_analysis(name: str) -> None:
    _DIFF_ANALYSES.pop(name, None)


class _RegisteredNames(Sequence[str]):
    """The registered diff analyses' names, read at each use (``LayerDiff(analyses=ANALYSES)`` stays current)."""

    def __getitem__(self, i: Any) -> Any:
        return list(_DIFF_ANALYSES)[i]

    def __len__(self) -> int:
        return len(_DIFF_ANALYSES)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_DIFF_ANALYSES))

    def __contains__(self, name: object) -> bool:
        return name in _DIFF_ANALYSES

    def __repr__(self) -> str:
        return repr(tuple(_DIFF_ANALYSES))


for _builtin in (WeightDelta, LogitDelta, RuleComparison, TokenShift):
    register_diff_analysis(_builtin)
ANALYSES: Sequence[str] = _RegisteredNames()


def parse_analyses(spec: str) -> list[str]:
    """Comma-separated names of registered diff analyses, or ``all``."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if spec.strip() == "all":
        return list(ANALYSES)
    bad = [n for n in names if n not in ANALYSES]
    if bad or not names:
        raise UserError(f"analyses: unknown {bad or spec!r}; choose from {list(ANALYSES)} or 'all'")
    return list(dict.fromkeys(names))


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
    analysis_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {analysis: {option: value}}

    def options_for(self, cls: type) -> Any:
        """``cls``'s declared ``Options`` filled from ``analysis_options[cls.name]`` (None when it declares none); a bad
        value is an error naming ``analysis_options.<name>.<field>``."""
        model = getattr(cls, "Options", None)
        given = dict(self.analysis_options.get(cls.name, {}))
        if model is None:
            if given:
                raise UserError(f"analysis_options.{cls.name}: {cls.__name__} declares no options, got {sorted(given)}")
            return None
        try:
            return model.model_validate(given)
        except ValidationError as err:
            problems = [f"analysis_options.{cls.name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
            raise UserError("; ".join(problems)) from None

    def check_options(self) -> None:
        """Every entry of ``analysis_options`` names a selected analysis and validates: an error now, before models load."""
        selected = {cls.name: cls for cls in self._classes()}
        unknown = sorted(set(self.analysis_options) - set(selected))
        if unknown:
            raise UserError(f"analysis_options: {unknown} name no selected analysis; selected: {sorted(selected)}")
        for cls in selected.values():
            self.options_for(cls)

    def names(self) -> list[str]:
        """The analyses this diff runs: ``analyses`` with ``all`` read as every registered one (at call time)."""
        names = [n for name in self.analyses for n in (list(_DIFF_ANALYSES) if name == "all" else [name])]
        unknown = [name for name in names if name not in _DIFF_ANALYSES]
        if unknown:
            raise UserError(f"analyses: unknown {unknown}; registered: {list(_DIFF_ANALYSES)}")
        return list(dict.fromkeys(names))

    def _classes(self) -> list[type]:
        return [_DIFF_ANALYSES[name] for name in self.names()]

    @property
    def needs_models(self) -> bool:
        """Whether any analysis reads the models (a :class:`PassAnalysis`); checkpoint analyses alone stream the weights."""
        return any(issubclass(cls, PassAnalysis) for cls in self._classes())

    def pass_analyses(self) -> list[PassAnalysis]:
        return [cls.for_diff(self) for cls in self._classes() if issubclass(cls, PassAnalysis)]

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
        checkpoint = [cls for cls in self._classes() if not issubclass(cls, PassAnalysis)]
        rule_ids = list(rule_token_ids(adapter)) if checkpoint else []
        for cls in checkpoint:
            t0 = time.perf_counter()
            analysis = cls.for_diff(self, rule_ids)
            out.results[analysis.name] = analysis.run(checkpoint_dir(base_spec), checkpoint_dir(variant_spec), label=variant_spec)
            out.timings[analysis.name] = time.perf_counter() - t0
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
    return merge_by_name([diff.results for diff in diffs])
