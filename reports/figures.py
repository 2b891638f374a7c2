"""The report's figures: every one is drawn by its result's own ``plot()``.

The report reads each step's result files through the result registry
(:func:`implicit_it.analysis.result_class`), merges the results of one analysis across systems
(``merge``), and draws the merged result, so a figure looks the same in a step directory
(``<name>.png``) and in the report. Layerwise figures of trained variants are drawn once per seed;
the legend names the system (``response.s0``); the weight heatmap shows each variant's first seed.

:data:`FIGURES` are the figures of the report's own sections; :func:`generic_figures` adds one for
every registered result the report has no section for (see :func:`.sections.generic_sections`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from implicit_it.analysis import AnalysisResult

from .collect import RunData


@dataclass(frozen=True)
class ResultFigure:
    """The merged ``name`` results of ``stage``'s steps, drawn by their ``plot()``."""

    stage: str | None  # None: every stage
    name: str
    caption: str
    first_seed: bool = False
    select: Callable[[dict[str, Any]], bool] | None = None  # which entries to draw

    def result(self, run: RunData) -> AnalysisResult | None:
        stages = [self.stage] if self.stage is not None else list(dict.fromkeys(s.stage for s in run.steps))
        merged: AnalysisResult | None = None
        for stage in stages:
            result = run.merged(stage, self.name, first_seed=self.first_seed)
            if result is not None:
                merged = result if merged is None else merged.merge(result)
        if merged is not None and self.select is not None:
            merged = type(merged)([e for e in merged.entries if self.select(e)])
        return merged if merged is not None and merged.entries else None

    def __call__(self, run: RunData) -> Any:
        result = self.result(run)
        return None if result is None else result.plot()


FIGURES: dict[str, ResultFigure] = {
    "weights": ResultFigure(
        "diff", "weights", "Relative weight change ‖ΔW‖/‖W‖ of each projection in each block, per variant.", first_seed=True
    ),
    "kl": ResultFigure(
        "diff",
        "logits",
        "Mean KL(variant ‖ base) over response positions, reading each layer through the model's own final norm and unembedding.",
    ),
    "ranking": ResultFigure(
        "rank",
        "layerwise_ranking",
        "Response-ranking accuracy per layer through the logit lens (the last point is the model's output).",
        select=lambda e: e.get("score", "mean_logprob") == "mean_logprob",
    ),
    "probe": ResultFigure(
        "probe",
        "probe",
        "Linear-probe accuracy per layer (matched vs mismatched instruction/response), grouped CV; dotted: shuffled labels.",
    ),
    "rules": ResultFigure(
        "diff",
        "rules",
        "Left: held-out R² of Δ log p explained by the fitted rule family (solid) and by the paper's rules with a fitted scale "
        "(dashed). Right: the variance of Δ log p and the part the family explains; dashed vertical: emergence layer.",
    ),
    # "Where the change lives" (the mech steps: causal analyses of each variant against the base)
    "weight_patching": ResultFigure(
        "mech",
        "weight_patching",
        "Weight patching: the fraction of each variant's change recovered when the base gets the variant's weights of one "
        "block, of one kind of tensor, or of the blocks up to / from a cut point.",
        first_seed=True,
    ),
    "activation_patching": ResultFigure(
        "mech",
        "activation_patching",
        "Activation patching: the fraction recovered when the variant's activations are copied into the base's forward pass, "
        "per layer, site (block output, attention, MLP) and position class.",
    ),
    "steering": ResultFigure(
        "mech",
        "steering",
        "Steering: the base with α·δ_L (the mean difference of the variant's residual stream) added after layer L, beside the "
        "variant, the base and the rule adapter on the same prompts.",
    ),
    "low_rank": ResultFigure(
        "mech",
        "low_rank",
        "Low-rank ΔW: the fraction recovered when every matrix's change is truncated to rank k (0: only the 1-D tensors change).",
    ),
}
MECH_FIGURES = ("weight_patching", "activation_patching", "steering", "low_rank")
MECHANISM = ResultFigure("mech", "mechanism", "The smallest patch recovering the threshold, per variant.")

# results the report's own sections show (tables or a figure above); any other registered result gets a generic section
COVERED = frozenset(
    {"ranking", "layerwise_ranking", "probe", "weights", "logits", "rules", "shift", "ifeval", "ifsuite", "alpaca_eval"}
    | {*MECH_FIGURES, MECHANISM.name}
)


def generic_key(name: str) -> str:
    return f"result-{name}"


def uncovered_results(run: RunData) -> list[str]:
    """Names of the registered results some step wrote that no section of the report shows, in run order."""
    seen: dict[str, None] = {}
    for step in run.steps:
        for name in step.result_names():
            if name not in COVERED and step.result(name) is not None:
                seen.setdefault(name)
    return list(seen)


def generic_figures(run: RunData) -> dict[str, ResultFigure]:
    return {
        generic_key(name): ResultFigure(None, name, f"{name}: every system side by side (the result's own figure).")
        for name in uncovered_results(run)
    }
