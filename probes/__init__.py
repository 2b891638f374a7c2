"""``implicit_it.probes``: response-ranking likelihood pairs and linear probes, layer by layer.

* :mod:`.pairs`: the paper's ranking protocol (which responses each instruction is compared with);
* :mod:`.forward`: one batched forward pass per group of pairs, reusing the instruction prefix;
* :mod:`.scoring`, :mod:`.ranking`: ranking accuracy at the output and per layer, with CIs;
* :mod:`.linear`: logistic-regression probes on pooled residuals with grouped CV and a control;
* :mod:`.template`: what a model writes as the user, given only the chat template's user-turn prefix (Magpie).

Per-layer activations are read with nnsight on the loaded HF module (:mod:`implicit_it.hooking`);
a test checks the TransformerLens bridge gives the same per-layer numbers.
"""

from implicit_it.lens import LogitLens, decoder_of, parse_layers

from .forward import EncodedGroup, PairBatch, PairForward, encode_groups
from .linear import POOLS, ActivationStore, LinearProbe, ProbeResult, cross_validated_accuracy, pool_batch, swap_pair_groups
from .pairs import Candidate, RankingGroup, build_ranking_groups
from .ranking import SCORES, LayerwiseRankingResult, RankingProbe, RankingResult, RankingRun, first_layer_above, ranking_wins
from .scoring import OUTPUT, GroupScores, paper_scores, score_groups
from .stage import ProbeStage, RankStage, TemplateStage, probe, probe_source, rank, rank_inputs, template, template_references
from .stats import accuracy_with_ci
from .template import Sample, TemplateResult, cut_sample, distinct_n, instruction_check, sample_user_turns, score_samples, user_prefix

__all__ = [
    "ProbeStage",
    "RankStage",
    "probe",
    "probe_source",
    "rank",
    "rank_inputs",
    "TemplateStage",
    "template",
    "template_references",
    "Sample",
    "TemplateResult",
    "cut_sample",
    "distinct_n",
    "instruction_check",
    "sample_user_turns",
    "score_samples",
    "user_prefix",
    "EncodedGroup",
    "PairBatch",
    "PairForward",
    "encode_groups",
    "LogitLens",
    "decoder_of",
    "parse_layers",
    "POOLS",
    "ActivationStore",
    "LinearProbe",
    "ProbeResult",
    "cross_validated_accuracy",
    "pool_batch",
    "swap_pair_groups",
    "Candidate",
    "RankingGroup",
    "build_ranking_groups",
    "SCORES",
    "LayerwiseRankingResult",
    "RankingProbe",
    "RankingResult",
    "RankingRun",
    "first_layer_above",
    "ranking_wins",
    "OUTPUT",
    "GroupScores",
    "paper_scores",
    "score_groups",
    "accuracy_with_ci",
]
