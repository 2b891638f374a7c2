"""The rank and probe stages: what ``iit rank`` / ``iit probe`` and the pipeline's rank/probe steps both call.

Each stage function reads its data as its config says, runs one loaded model, saves its results into ``out_dir``
(merged with an earlier model's, for side-by-side files) and returns them with a small summary. Manifests are the
caller's (they say which command ran)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from implicit_it.data import RankingSource, read_ranking_source
from implicit_it.lens import check_layer_spec

from .config import ProbeConfig, RankConfig, TemplateConfig
from .linear import ActivationStore, LinearProbe, ProbeResult
from .pairs import RankingGroup, build_ranking_groups
from .ranking import LayerwiseRankingResult, RankingProbe, RankingResult
from .template import TemplateResult, sample_user_turns, score_samples, user_prefix

PAIRS_FILE = "ranking_pairs.parquet"


@dataclass
class RankStage:
    """The rank stage after one or more models: the (merged) results as saved, and this model's run."""

    ranking: RankingResult
    layerwise: LayerwiseRankingResult | None
    pairs: Any  # pandas DataFrame, one row per (instruction, candidate) pair
    run: Any  # this model's RankingRun
    summary: dict[str, Any] = field(default_factory=dict)  # this model's output accuracy (mean log-prob score)


@dataclass
class ProbeStage:
    result: ProbeResult
    run: Any  # this model's ProbeRun
    summary: dict[str, Any] = field(default_factory=dict)


def rank_inputs(cfg: RankConfig, *, seed: int = 0) -> tuple[RankingSource, list[RankingGroup]]:
    """The instructions with responses and the negative draws of every model ranked with ``cfg`` (one draw per seed)."""
    check_layer_spec(cfg.layers)  # before any model loads (the range is checked against the model)
    source = read_ranking_source(cfg.data, limit=cfg.instructions)
    return source, build_ranking_groups(source, negatives=cfg.negatives, seed=seed, self_draws=cfg.self_draws)


def rank(
    loaded: Any,
    cfg: RankConfig,
    out_dir: str | Path,
    *,
    fmt: str,
    label: str,
    seed: int = 0,
    inputs: tuple[RankingSource, list[RankingGroup]] | None = None,
    earlier: RankStage | None = None,
    progress: Callable[[int], None] | None = None,
) -> RankStage:
    """Rank with one model; write ``ranking.json`` (+ ``layerwise_ranking.json`` when ``cfg.layers``) and the pairs parquet."""
    import pandas as pd

    from implicit_it.analysis import write_parquet

    out_dir = Path(out_dir)
    source, groups = inputs if inputs is not None else rank_inputs(cfg, seed=seed)
    run = RankingProbe(
        source,
        groups,
        fmt=fmt,
        max_length=cfg.max_length,
        layers=cfg.layers,
        max_batch_tokens=cfg.batch_tokens,
        n_boot=cfg.bootstrap,
        seed=seed,
    ).run(loaded, label=label, progress=progress)
    ranking = run.ranking()
    for e in ranking.entries:
        e["format"] = fmt
    own = ranking.entries[0]
    summary = {"accuracy": own["accuracy"], "ci95": own["ci95"], "n_pairs": own["n_pairs"]}
    pairs = run.pairs_frame().assign(format=fmt)
    layerwise = run.layerwise() if cfg.layers is not None else None
    if earlier is not None:
        ranking = earlier.ranking.merge(ranking)
        pairs = pd.concat([earlier.pairs, pairs], ignore_index=True)
        if layerwise is not None and earlier.layerwise is not None:
            layerwise = earlier.layerwise.merge(layerwise)
    ranking.save(out_dir)
    write_parquet(out_dir / PAIRS_FILE, pairs)
    if layerwise is not None:
        layerwise.save(out_dir)
    return RankStage(ranking, layerwise, pairs, run, summary)


def probe_source(cfg: ProbeConfig) -> RankingSource:
    check_layer_spec(cfg.layers)  # before any model loads (the range is checked against the model)
    return read_ranking_source(cfg.data, limit=cfg.instructions)


def probe(
    loaded: Any,
    cfg: ProbeConfig,
    out_dir: str | Path,
    *,
    fmt: str,
    label: str,
    seed: int = 0,
    source: RankingSource | None = None,
    activation_dir: str | Path | None = None,
    keep_activations: bool = True,
    earlier: ProbeStage | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProbeStage:
    """Probe one model; write ``probe.json`` (merged with ``earlier``). Activations are cached under ``activation_dir``
    (default ``out_dir/activations``), removed after unless ``keep_activations``."""
    out_dir = Path(out_dir)
    activations = Path(activation_dir) if activation_dir is not None else out_dir / "activations"
    run = LinearProbe(
        source if source is not None else probe_source(cfg),
        activation_dir=activations,
        fmt=fmt,
        max_length=cfg.max_length,
        layers=cfg.layers,
        pools=cfg.pools,
        folds=cfg.folds,
        c=cfg.c,
        seed=seed,
        max_batch_tokens=cfg.batch_tokens,
    ).run(loaded, label=label, progress=progress)
    result = run.result if earlier is None else earlier.result.merge(run.result)
    result.save(out_dir)
    if not keep_activations:
        ActivationStore.remove(activations)  # a cache of this run only; the JSON holds the result
    best = max(run.result.entries[0]["layers"], key=lambda layer: layer["accuracy"])
    summary = {"best_layer": best["layer"], "best_accuracy": best["accuracy"], "n_examples": run.n_examples}
    return ProbeStage(result, run, summary)


@dataclass
class TemplateStage:
    result: TemplateResult  # merged with the earlier models', as saved
    summary: dict[str, Any] = field(default_factory=dict)  # this model's numbers, without the samples
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The headline numbers a pipeline step records (the rest stays in template.json)."""
        return {k: v for k, v in self.summary.items() if k in ("n", "instruction_like", "ends", "distinct_2", "similarity")}


def template_references(cfg: TemplateConfig) -> dict[str, list[str]]:
    """The reference instruction sets' texts, read once for every model."""
    from implicit_it.data import read_instructions

    return {name: [i.instruction for i in read_instructions(path)] for name, path in cfg.references().items()}


def template(
    loaded: Any,
    cfg: TemplateConfig,
    out_dir: str | Path,
    *,
    fmt: str,
    label: str,
    seed: int = 0,
    embed: Callable[[Any], Any] | None = None,
    references: dict[str, list[str]] | None = None,
    earlier: TemplateStage | None = None,
    progress: Callable[[int], None] | None = None,
) -> TemplateStage:
    """Sample ``cfg.n`` user turns from the template alone and score them; write ``template.json`` (merged with ``earlier``).
    ``embed`` defaults to ``cfg.embedder`` (none: no diversity-by-embedding or similarity numbers)."""
    import time

    t0 = time.perf_counter()
    if embed is None and cfg.embedder is not None:
        from implicit_it.embedding import Embedder

        embed = Embedder(cfg.embedder)
    if references is None and embed is not None:
        references = template_references(cfg)
    samples = sample_user_turns(loaded, cfg, fmt=fmt, seed=seed, progress=progress)
    scores = score_samples(samples, embed=embed, references=references, n_boot=cfg.bootstrap, seed=seed)
    settings = cfg.model_dump(mode="json", exclude={"bootstrap", "enabled", "systems"})  # batch_size stays: samples depend on it
    entry = {"model": label, "format": fmt, "prefix": user_prefix(fmt, loaded.tokenizer), "seed": seed, **settings, **scores}
    own = TemplateResult([entry])
    result = own if earlier is None else earlier.result.merge(own)
    result.save(out_dir)
    return TemplateStage(result, own.summary(), round(time.perf_counter() - t0, 2))
