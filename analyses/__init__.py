"""``implicit_it.analyses``: where each variant differs from its base, and how rule-like that is.

* :mod:`.weights`: per-tensor weight deltas, streamed from safetensors or a LoRA adapter;
* :mod:`.delta_pass`: one traced forward of base and variant over shared texts, the exact logit lens
  per layer, fed to observers (``observe(ctx, layer, lens)`` with a :class:`LensChunk`);
* :mod:`.logit_delta`: KL(variant ‖ base) per layer and the most moved tokens;
* :mod:`.rule_family`, :mod:`.rule_comparison`: variance of Δ log p explained by the paper's
  rules and by the fitted rule family, per layer;
* :mod:`.token_shift`: ranks of the variant's greedy tokens under the base (URIAL's shift);
* :mod:`.layer_diff`: every registered diff analysis from one call (``iit diff``); a new one registers
  with :func:`register_diff_analysis` (and its result with :func:`implicit_it.analysis.register_result`);
* causal analyses (``iit mech``), on the shared machinery of :mod:`.patching`: :mod:`.weight_patching`,
  :mod:`.activation_patching`, :mod:`.steering`, :mod:`.low_rank`, all from one call in :mod:`.mechanism`
  (with the smallest patch that reproduces the variant).
"""

from .activation_patching import ActivationPatching, ActivationPatchingResult
from .delta_pass import (
    FIT,
    HELDOUT,
    ChunkContext,
    DeltaObserver,
    DeltaPass,
    DeltaPassConfig,
    DiffText,
    LensChunk,
    PassAnalysis,
    split_halves,
    texts_from_source,
)
from .layer_diff import (
    ANALYSES,
    LayerDiff,
    VariantDiff,
    load_variant,
    merge_results,
    parse_analyses,
    register_diff_analysis,
    unregister_diff_analysis,
)
from .logit_delta import LogitDelta, LogitDeltaResult
from .low_rank import LowRank, LowRankResult
from .mechanism import MECH_ANALYSES, Mechanism, MechanismResult, smallest_patch
from .patching import Behaviour, MechContext, PatchSetup, WeightSwap
from .rule_comparison import RuleComparison, RuleComparisonResult, emergence_layer, parse_vocab, vocabulary_columns
from .rule_family import RuleFamilyFit
from .stage import (
    DiffStage,
    MechStage,
    behaviour_generates,
    diff,
    diff_runner,
    mech,
    mech_data_files,
    mech_runner,
    mech_runner_check,
    needs_models,
    stage_texts,
)
from .steering import Steering, SteeringResult
from .token_shift import TokenShift, TokenShiftResult
from .weight_patching import WeightPatching, WeightPatchingResult
from .weights import LoraAdapter, SafetensorsCheckpoint, WeightDelta, WeightDeltaResult, checkpoint_dir, describe_tensor, spectrum_stats

__all__ = [
    "behaviour_generates",
    "mech_data_files",
    "stage_texts",
    "ActivationPatching",
    "ActivationPatchingResult",
    "Behaviour",
    "LowRank",
    "LowRankResult",
    "MECH_ANALYSES",
    "MechContext",
    "MechStage",
    "Mechanism",
    "MechanismResult",
    "PatchSetup",
    "Steering",
    "SteeringResult",
    "WeightPatching",
    "WeightPatchingResult",
    "WeightSwap",
    "mech",
    "mech_runner",
    "mech_runner_check",
    "smallest_patch",
    "DiffStage",
    "diff",
    "diff_runner",
    "needs_models",
    "FIT",
    "HELDOUT",
    "ChunkContext",
    "DeltaObserver",
    "DeltaPass",
    "DeltaPassConfig",
    "DiffText",
    "LensChunk",
    "PassAnalysis",
    "split_halves",
    "texts_from_source",
    "ANALYSES",
    "LayerDiff",
    "VariantDiff",
    "register_diff_analysis",
    "unregister_diff_analysis",
    "load_variant",
    "merge_results",
    "parse_analyses",
    "LogitDelta",
    "LogitDeltaResult",
    "RuleComparison",
    "RuleComparisonResult",
    "emergence_layer",
    "parse_vocab",
    "vocabulary_columns",
    "RuleFamilyFit",
    "TokenShift",
    "TokenShiftResult",
    "LoraAdapter",
    "SafetensorsCheckpoint",
    "WeightDelta",
    "WeightDeltaResult",
    "checkpoint_dir",
    "describe_tensor",
    "spectrum_stats",
]
