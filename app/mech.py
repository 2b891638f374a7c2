"""What ``iit mech`` and the pipeline's mech steps share: the behaviour prompts and their scorer.

The analyses room may not import the evaluation room, so the app builds the
:class:`~implicit_it.analyses.Behaviour` the causal analyses generate on: a stratified IFEval subset scored
loose (``run.mech.behaviour_data``), or, with no IFEval file, the data texts' own instructions (EOS rate and
template echo only)."""

from __future__ import annotations

from typing import Any, Sequence

from implicit_it.analyses.config import MechConfig
from implicit_it.analyses.stage import behaviour_generates

IFEVAL_LABEL = "IFEval"
INSTRUCTIONS_LABEL = "instructions"


def mech_behaviour(cfg: MechConfig, data_texts: Sequence[Any], *, seed: int = 0) -> Any:
    """The :class:`~implicit_it.analyses.Behaviour` of ``cfg``: ``behaviour_prompts`` prompts of IFEval, a subset
    stratified by instruction type (drawn with ``seed``), scored by their prompt-level loose accuracy as ``ifeval_loose``;
    with no ``behaviour_data``, the first instructions of ``data_texts`` and no scorer. None when nothing generates
    (no steering, or ``behaviour_prompts`` 0)."""
    from implicit_it.analyses import Behaviour

    n = cfg.behaviour_prompts
    if not behaviour_generates(cfg):
        return None
    if cfg.behaviour_data is None:
        return Behaviour(prompts=[t.instruction for t in data_texts][:n], label=INSTRUCTIONS_LABEL)
    from implicit_it.evaluation import load_ifeval

    prompts = load_ifeval(cfg.behaviour_data, limit=n, seed=seed)  # a stratified subset when n is below the set's size

    def score(outputs: list[str]) -> dict[str, float]:
        from implicit_it.evaluation import score_ifeval

        entry = score_ifeval(prompts, list(outputs), n_boot=200, seed=seed).entries[0]
        return {"ifeval_loose": float(entry["prompt_loose"]["accuracy"])}

    return Behaviour(prompts=[p.prompt for p in prompts], score=score, label=IFEVAL_LABEL)
