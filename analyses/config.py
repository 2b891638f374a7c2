"""The analyses' configs: the layer diffs and the causal (mech) analyses."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from implicit_it.config import IFEVAL_DATA, RANKING_DATA, LayerSpec, PathText, StrictConfig, VocabSpec, check_distinct, split_commas


class DiffConfig(StrictConfig):
    """What the layer diffs read (``iit diff`` and the pipeline's diff steps): where a variant differs from the base
    (weights, logit lens, rule family, token shift)."""

    data: PathText = Field(default=RANKING_DATA, description="Instructions with responses (chat JSONL or AlpacaEval JSON).")
    analyses: Annotated[list[str], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=["all"],
        description="Analyses by name: weights, logits, rules, shift or any registered one; 'all': every registered analysis.",
    )
    limit: int | None = Field(default=12, ge=2, description="Only the first N instructions of `data` (none: all).")
    texts: Annotated[list[Literal["data", "generations"]], AfterValidator(check_distinct)] = Field(
        default=["data", "generations"],
        description="Texts the logit analyses read: the file's responses (data) and/or the variant's own greedy responses (generations).",
    )
    layers: LayerSpec = Field(
        default="every:3", description="Logit-lens layers: 'all', 'every:N' or e.g. 0,6,12-18 (the output layer is always included)."
    )
    vocab: VocabSpec = Field(
        default="frequent:2048",
        description="Tokens the rule comparison scores: 'all' or 'frequent:K' (the K most frequent in the texts, plus the rule tokens "
        "and EOS); the fitted family's per-token bias makes 'all' mostly measure static biases.",
    )
    max_length: int = Field(default=512, gt=8, description="Truncate prompt+response+EOS here.")
    max_new_tokens: int = Field(default=128, gt=0, description="Token budget of each variant generation.")
    spectrum: bool = Field(default=True, description="Singular values of each weight delta (effective rank, top-k energy).")
    rules_config: PathText | None = Field(default=None, description="YAML with rule constants (none: the paper's).")
    analysis_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options of analyses that declare their own (a class attribute `Options`), by analysis name: "
        "{name: {option: value}}; each is validated by that analysis before any model loads.",
    )


class RunDiffConfig(DiffConfig):
    """``run.diff``: the diff stage's config (every variant against the base)."""

    enabled: bool = True


MechAnalysis = Literal["weights", "activations", "steering", "rank"]
MECH_ANALYSES: tuple[MechAnalysis, ...] = ("weights", "activations", "steering", "rank")


def check_finite_distinct(v: list[float]) -> list[float]:
    """A non-empty list of finite numbers, repeats dropped."""
    bad = [x for x in v if not math.isfinite(x)]
    if bad:
        raise ValueError(f"expected finite numbers, got {bad}")
    return check_distinct(v)


class MechConfig(StrictConfig):
    """What the causal analyses read (``iit mech`` and the pipeline's mech steps): which parts of a variant are sufficient
    for its change (weight and activation patching), whether one vector or a low-rank ΔW reproduces it, and the smallest
    patch that recovers ``threshold`` of it."""

    data: PathText = Field(default=RANKING_DATA, description="Held-out instructions with responses (chat JSONL or AlpacaEval JSON).")
    analyses: Annotated[
        list[Literal["weights", "activations", "steering", "rank"]], BeforeValidator(split_commas), AfterValidator(check_distinct)
    ] = Field(
        default=list(MECH_ANALYSES),
        description="weights (weight patching per block/kind/cumulative), activations (activation patching per layer, site and "
        "position class), steering (difference vectors α·δ_L added to the base), rank (ΔW truncated to rank k).",
    )
    limit: int | None = Field(default=8, ge=2, description="Only the first N instructions of `data` (none: all).")
    blocks: LayerSpec = Field(
        default="all", description="Blocks patched one at a time, and the cut points of the cumulative sweeps (1 = the first block)."
    )
    layers: LayerSpec = Field(
        default="all", description="Layers for activation patching and steering (l = the residual stream after block l; 0 = embeddings)."
    )
    sites: Annotated[list[Literal["resid", "attn", "mlp"]], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=["resid", "attn", "mlp"],
        description="What activation patching copies from the variant: block output, attention output, MLP output.",
    )
    positions: Annotated[
        list[Literal["all", "instruction", "tags", "response"]], BeforeValidator(split_commas), AfterValidator(check_distinct)
    ] = Field(
        default=["all", "instruction", "tags", "response"],
        description="Position classes activation patching copies: every position, the instruction, the template's tags (and BOS), "
        "the response.",
    )
    alphas: Annotated[list[float], BeforeValidator(split_commas), AfterValidator(check_finite_distinct)] = Field(
        default=[0.5, 1.0, 2.0, 4.0], description="Steering strengths α: the base gets α·δ_L added after block L at every position."
    )
    ranks: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=[0, 1, 2, 4, 8, 16, 32, 64],
        description="Ranks k each matrix ΔW is truncated to (0: only the 1-D tensors change); full rank is always added.",
    )
    threshold: float = Field(default=0.8, gt=0, le=1, description="The recovered fraction the smallest patch must reach.")
    max_length: int = Field(default=256, gt=8, description="Truncate prompt+response+EOS here.")
    response_tokens: int = Field(
        default=32, gt=0, description="Response positions scored per text (its first N, and the one that predicts EOS)."
    )
    behaviour_data: PathText | None = Field(
        default=IFEVAL_DATA,
        description="Prompts the steered base, the variant, the base and the rule adapter generate on (IFEval's input_data.jsonl: "
        "scored loose too); none: the texts' instructions, EOS rate and template echo only.",
    )
    behaviour_prompts: int = Field(
        default=8, ge=0, description="How many behaviour prompts (a stratified IFEval subset); 0: no generation."
    )
    max_new_tokens: int = Field(default=96, gt=0, description="Token budget of each behaviour generation.")
    batch_size: int = Field(default=8, gt=0, description="Prompts per generation batch.")
    max_batch_tokens: int = Field(default=2048, gt=0, description="Tokens per forward pass (rows × longest text).")


class RunMechConfig(MechConfig):
    """``run.mech``: the causal analyses of every variant against the base (opt-in: minutes per variant on CPU)."""

    enabled: bool = False
