"""``implicit_it.evaluation``: does a model follow instructions, and how would a judge rate it?

* :mod:`.alpaca`, :mod:`.judges`: AlpacaEval 2 through the ``alpaca-eval`` library (its annotators,
  cache and metric functions), with GPT-4-turbo, an OpenAI-compatible server or a local model as
  judge, and LC data resolved offline;
* :mod:`.ifeval`: IFEval (the standard judge-free benchmark: official verifiers, four metrics with CIs);
* :mod:`.ifsuite`: a quick judge-free IFEval-style suite (our prompts, regex-checkable constraints);
* :mod:`.behaviour`: EOS, repetition, template echo and length of any outputs;
* :mod:`.similarity`: the paper's Fig. 5 (domain pull of a single-task model's responses);
* :mod:`.outputs`: the AlpacaEval output layout every evaluation reads.
"""

from implicit_it.embedding import Embedder

from .alpaca import (
    AlpacaEvalResult,
    LCData,
    alpaca_metrics,
    annotate,
    annotations_frame,
    find_lc_data,
    instruction_positions,
    load_reference,
    pair_with_reference,
)
from .behaviour import TEMPLATE_MARKERS, behaviour_metrics, distinct_ngram_ratio, echoes_template, write_behaviour
from .ifeval import IfEvalPrompt, IfEvalResult, load_ifeval, read_ifeval_responses, reference_responses, score_ifeval, stratified_subset
from .ifsuite import CHECKS, IfPrompt, IfSuiteResult, load_suite, loose_variants, score_responses
from .judges import Judge, JudgeUnavailable, local_logprob_completions, parse_judge
from .outputs import ModelOutput, generator_name, read_model_outputs
from .similarity import DomainSimilarity, SimilarityConfig, SimilarityResult, load_examples
from .stage import ScoreStage, alpaca_scores, alpaca_stage, ifeval_stage, ifsuite_stage

__all__ = [
    "ScoreStage",
    "alpaca_scores",
    "alpaca_stage",
    "ifeval_stage",
    "ifsuite_stage",
    "AlpacaEvalResult",
    "LCData",
    "alpaca_metrics",
    "annotate",
    "annotations_frame",
    "find_lc_data",
    "instruction_positions",
    "load_reference",
    "pair_with_reference",
    "TEMPLATE_MARKERS",
    "behaviour_metrics",
    "distinct_ngram_ratio",
    "echoes_template",
    "write_behaviour",
    "IfEvalPrompt",
    "IfEvalResult",
    "load_ifeval",
    "read_ifeval_responses",
    "reference_responses",
    "score_ifeval",
    "stratified_subset",
    "CHECKS",
    "IfPrompt",
    "IfSuiteResult",
    "load_suite",
    "loose_variants",
    "score_responses",
    "Judge",
    "JudgeUnavailable",
    "local_logprob_completions",
    "parse_judge",
    "ModelOutput",
    "generator_name",
    "read_model_outputs",
    "DomainSimilarity",
    "Embedder",
    "SimilarityConfig",
    "SimilarityResult",
    "load_examples",
]
