"""Judge-free instruction following: our own prompts, each with constraints a regex can verify.

Small models cannot be graded reliably by a small judge, and a large judge is not always at hand;
IFEval-style checks (word counts, casing, JSON, ...) give a reproducible score from outputs alone.
"""

from .checks import CHECKS, loose_variants
from .suite import IfPrompt, IfSuiteResult, load_suite, score_responses

__all__ = ["CHECKS", "IfPrompt", "IfSuiteResult", "load_suite", "loose_variants", "score_responses"]
