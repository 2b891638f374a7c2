"""``iit run``: the whole study from one config, each stage cached by a hash of its config and inputs."""

from .runner import RUN_MANIFEST, RunOutcome, StageFailed, run_study
from .stages import RULE_SETS, StudyPlan, System, parse_seeds, rule_system_name, validate_study
from .steps import Step

__all__ = [
    "RUN_MANIFEST",
    "RunOutcome",
    "StageFailed",
    "run_study",
    "RULE_SETS",
    "StudyPlan",
    "System",
    "parse_seeds",
    "rule_system_name",
    "validate_study",
    "Step",
]
