"""The probes' configs: response ranking, linear probes, the template-only generation probe."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from implicit_it.config import RANKING_DATA, LayerSpec, PathText, StrictConfig, check_distinct


class RankConfig(StrictConfig):
    """What the response ranking reads (``iit rank`` and the pipeline's rank steps): the paper's Table 2, at the output
    and through the logit lens."""

    data: PathText = Field(
        default=RANKING_DATA, description="Instructions with responses, never trained on (chat JSONL or AlpacaEval JSON)."
    )
    instructions: int = Field(default=56, gt=1, description="Instructions (the first N of the file); each gives `negatives` pairs.")
    negatives: int = Field(default=5, gt=0, description="Other instructions' responses ranked against each instruction's own.")
    self_draws: Literal["redraw", "drop", "tie"] = Field(
        default="redraw",
        description="A draw of the instruction's own response: redraw it, drop it (the paper's plot_ratios.py), or score it as a tie.",
    )
    max_length: int = Field(default=1024, gt=8, description="Truncate prompt+response+EOS here (the paper: --max_seq_length 1024).")
    layers: LayerSpec | None = Field(
        default="every:2",
        description="Also rank through the logit lens after these layers: 'all', 'every:N' or e.g. 0,6,12-18 (0 = embeddings); "
        "none: the output only.",
    )
    batch_tokens: int = Field(default=4096, ge=64, description="Padded tokens per forward batch.")
    bootstrap: int = Field(default=2000, ge=100, description="Cluster-bootstrap resamples for the 95% CI.")


class RunRankConfig(RankConfig):
    """``run.rank``: the rank stage's config and which systems it ranks."""

    enabled: bool = True
    systems: list[str] | None = Field(default=None, description="Base and variant names (e.g. [base, instruction, response]); None: all.")


class ProbeConfig(StrictConfig):
    """What the linear probes read (``iit probe`` and the pipeline's probe steps): matched vs mismatched instruction/response,
    per layer, with a shuffled-label control."""

    data: PathText = Field(default=RANKING_DATA, description="Instructions with responses (chat JSONL or AlpacaEval JSON).")
    instructions: int = Field(
        default=56,
        ge=4,
        description="Instructions (the first N), paired at random; each pair swaps responses (two matched, two mismatched examples).",
    )
    layers: LayerSpec = Field(default="every:2", description="'all', 'every:N' or e.g. 0,6,12-18 (0 = embeddings).")
    pools: Annotated[list[Literal["mean", "last"]], AfterValidator(check_distinct)] = Field(
        default=["mean"], description="Features: the mean over response tokens and/or the last response token."
    )
    folds: int = Field(default=5, ge=2, description="GroupKFold splits (grouped by instruction).")
    c: float = Field(default=1.0, gt=0, description="Inverse L2 strength of the logistic regression.")
    max_length: int = Field(default=512, gt=8, description="Truncate prompt+response+EOS here.")
    batch_tokens: int = Field(default=4096, ge=64, description="Padded tokens per forward batch.")


class RunProbeConfig(ProbeConfig):
    """``run.probe``: the probe stage's config and which systems it probes."""

    enabled: bool = True
    systems: list[str] | None = Field(default=None, description="Base and variant names; None: all.")


class TemplateConfig(StrictConfig):
    """The template-only generation probe (``iit probe template``, Magpie 2024): samples from the user-turn prefix alone."""

    n: int = Field(default=64, ge=2, description="Samples drawn from the user-turn prefix.")
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(default=0, ge=0, description="Sample among the K most likely tokens (0: off).")
    max_new_tokens: int = Field(default=96, gt=0, description="Token budget of each sample.")
    batch_size: int = Field(default=16, gt=0, description="Samples decoded together.")
    lima: PathText | None = Field(
        default="../shared/data/lima/train.jsonl", description="LIMA's instructions (chat JSONL) each sample is compared with; none: skip."
    )
    alpaca_eval: PathText | None = Field(
        default="../shared/data/alpaca_eval/eval_set.json", description="AlpacaEval's instructions (JSON list) compared with; none: skip."
    )
    embedder: str | None = Field(
        default="all-minilm-l6-v2", description="sentence-transformers model for diversity and similarity; none: skip both."
    )
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples for the 95% CIs.")

    def references(self) -> dict[str, str]:
        """The reference instruction files by name (those set)."""
        return {name: path for name, path in (("lima", self.lima), ("alpaca_eval", self.alpaca_eval)) if path is not None}


class RunTemplateConfig(TemplateConfig):
    """``run.template``: the template probe per system (off by default: it samples and embeds on every system)."""

    enabled: bool = False
    systems: list[str] | None = Field(default=None, description="Base and variant names; None: all.")
