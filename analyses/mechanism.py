"""Every causal analysis of one variant from one call, and the smallest patch that reproduces it.

:class:`Mechanism` loads nothing: it takes the loaded base (patched in place, restored exactly) and the
variant (loaded, or None: then the base runs as the variant with its tensors swapped in, so one model is held),
builds the shared :class:`~.patching.PatchSetup` once (the texts, the variant's reference
log-probs) and runs the chosen analyses (``weights``, ``activations``, ``steering``, ``rank``). The
``mechanism`` result then names, per variant, the smallest patch that recovers ``threshold`` of the
change: the fewest parameters among the weight-patching hybrids, the lowest rank, and one vector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.errors import UserError
from implicit_it.rules import RuleAdapter, RuleConfig

from .activation_patching import SITES, ActivationPatching
from .delta_pass import DiffText
from .low_rank import LowRank
from .patching import POSITION_CLASSES, Behaviour, CausalAnalysis, MechContext, PatchSetup, WeightSwap
from .steering import Steering
from .weight_patching import KINDS, WeightPatching

MECH_ANALYSES = {"weights": WeightPatching, "activations": ActivationPatching, "steering": Steering, "rank": LowRank}


@register_result
class MechanismResult(AnalysisResult):
    """``mechanism.json``: per variant, the smallest patch recovering ``threshold`` of the change, in one sentence."""

    name = "mechanism"

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for e in self.entries:
            for kind, s in e["smallest"].items():
                rows.append({"variant": e["variant"], "kind": kind, **{k: v for k, v in (s or {}).items() if not isinstance(v, dict)}})
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """The recovered fraction of each kind of smallest patch, per variant, against the threshold."""
        import numpy as np

        fig, ax = new_figure(figsize=(6, 2.6), layout="constrained")
        kinds = ["modules", "rank", "vector"]
        width = 0.8 / max(len(self.entries), 1)
        for j, e in enumerate(self.entries):
            values = [(e["smallest"].get(k) or {}).get("recovered") for k in kinds]
            ax.bar(np.arange(len(kinds)) + j * width, [np.nan if v is None else v for v in values], width, label=e["variant"])
        if self.entries:
            ax.axhline(self.entries[0]["threshold"], color="k", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, ["fewest modules", "lowest rank", "one vector"], fontsize=8)
        ax.set_ylabel("recovered")
        ax.legend(fontsize=7)
        ax.set_title("the smallest patch of each kind (dashed: the threshold)", fontsize=10)
        return fig


def smallest_patch(results: dict[str, AnalysisResult], threshold: float, label: str) -> dict[str, Any]:
    """The ``mechanism`` entry: the smallest patch of each kind reaching ``threshold``, and a sentence."""
    smallest: dict[str, Any] = {}
    if "weight_patching" in results:
        rows = [h for h in results["weight_patching"].entries[0]["hybrids"] if h["group"] != "all" and h["recovered"] is not None]
        good = [h for h in rows if h["recovered"] >= threshold]
        pick = (
            min(good, key=lambda h: (h["parameters"], -h["recovered"])) if good else max(rows, key=lambda h: h["recovered"], default=None)
        )
        if pick is not None:
            smallest["modules"] = {
                "what": pick["label"],
                "group": pick["group"],
                "parameters": pick["parameters"],
                "share_of_changed": pick["share_of_changed"],
                "recovered": pick["recovered"],
                "recovered_ci": pick.get("recovered_ci"),
                "texts": pick.get("texts"),
                "reaches": bool(good),
            }
    if "low_rank" in results:
        curve = [p for p in results["low_rank"].entries[0]["curve"] if p["recovered"] is not None]
        good = [p for p in curve if p["recovered"] >= threshold]
        pick = good[0] if good else None
        if pick is not None:
            smallest["rank"] = {
                "what": "full rank" if pick["full_rank"] else f"rank {pick['rank']}",
                "rank": pick["rank"],
                "parameters": pick["parameters"],
                "recovered": pick["recovered"],
                "recovered_ci": pick.get("recovered_ci"),
                "texts": pick.get("texts"),
                "reaches": True,
            }
    if "steering" in results:
        best = results["steering"].entries[0]["best"]
        if best is not None and best["recovered_heldout"] is not None:
            smallest["vector"] = {
                "what": f"δ at layer {best['layer']}, α = {best['alpha']:g}",
                "layer": best["layer"],
                "alpha": best["alpha"],
                "parameters": results["steering"].entries[0].get("hidden_size"),
                "recovered": best["recovered_heldout"],
                "recovered_ci": best.get("recovered_heldout_ci"),
                "texts": results["steering"].entries[0].get("heldout_texts"),
                "reaches": best["recovered_heldout"] >= threshold,
            }
    return {"variant": label, "threshold": threshold, "smallest": smallest, "sentence": sentence(label, smallest, threshold)}


def recovered_text(s: dict[str, Any]) -> str:
    """A recovered fraction with its 95% interval over texts and how many texts: "85% [78, 91] over 32 texts"."""
    ci, n = s.get("recovered_ci"), s.get("texts")
    interval = f" [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}]" if ci else ""
    return f"{s['recovered']:.0%}{interval}" + (f" over {n} texts" if n else "")


def sentence(label: str, smallest: dict[str, Any], threshold: float) -> str:
    """One sentence: the smallest patch whose point estimate reaches the threshold, what the other kinds reach, each
    with its interval over texts (a patch "reaches" on its estimate; the interval says how firmly)."""
    parts = []
    m = smallest.get("modules")
    if m:
        verb = "recovers" if m["reaches"] else "recovers at most"
        head = "the fewest modules" if m["reaches"] else "no module set short of all"
        parts.append(f"{head}: {m['what']} ({m['share_of_changed']:.0%} of the changed parameters) {verb} {recovered_text(m)}")
    r = smallest.get("rank")
    if r and r["what"] != "full rank":
        parts.append(f"the lowest rank tried: {r['what']} per matrix recovers {recovered_text(r)}")
    elif r:
        parts.append("no rank tried below full (the variant itself) reaches it")
    v = smallest.get("vector")
    if v:
        parts.append(f"one vector ({v['what']}) recovers {recovered_text(v)}, held out")
    if not parts:
        return f"{label}: no causal analysis ran."
    return (
        f"{label}, patches reaching {threshold:.0%} of the change (KL to the variant at response positions; 95% intervals "
        "over texts) — " + "; ".join(parts) + "."
    )


@dataclass
class Mechanism:
    """Configured once; ``run`` gives every chosen analysis's result for one variant, and the ``mechanism`` summary."""

    analyses: Sequence[str] = tuple(MECH_ANALYSES)
    blocks: str = "all"
    layers: str = "all"
    kinds: Sequence[str] = KINDS
    sites: Sequence[str] = SITES
    positions: Sequence[str] = POSITION_CLASSES
    alphas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    ranks: Sequence[int] = (0, 1, 2, 4, 8, 16, 32, 64)
    threshold: float = 0.8
    fmt: str = "tulu"
    max_length: int | None = 256
    response_tokens: int = 32
    max_batch_tokens: int = 2048
    max_new_tokens: int = 96
    batch_size: int = 8
    seed: int = 0
    rule_config: RuleConfig = field(default_factory=RuleConfig)

    def build(self) -> list[CausalAnalysis]:
        made: dict[str, CausalAnalysis] = {
            "weights": WeightPatching(self.blocks, self.kinds),
            "activations": ActivationPatching(self.layers, self.sites, self.positions),
            "steering": Steering(self.layers, self.alphas),
            "rank": LowRank(self.ranks),
        }
        unknown = [a for a in self.analyses if a not in made]
        if unknown:
            raise UserError(f"analyses: unknown {unknown}; choose from {list(MECH_ANALYSES)}")
        return [made[a] for a in self.analyses]

    def run(
        self,
        base: Any,
        variant: Any,
        texts: Sequence[DiffText],
        *,
        base_spec: str,
        variant_spec: str,
        label: str | None = None,
        behaviour: Behaviour | None = None,
        progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    ) -> tuple[dict[str, AnalysisResult], dict[str, float]]:
        """Results by name (with ``mechanism``) and seconds per analysis (``setup``: texts and references).
        ``variant``: the loaded variant, or None to hold one model only (the base runs as the variant with every
        changed tensor swapped in from ``variant_spec``'s checkpoint)."""
        label = label or variant_spec
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        swap = WeightSwap(base.model, base_spec, variant_spec)
        setup = PatchSetup(
            base,
            variant,
            texts,
            swap=swap,
            fmt=self.fmt,
            max_length=self.max_length,
            response_tokens=self.response_tokens,
            max_batch_tokens=self.max_batch_tokens,
            adapter=RuleAdapter(base.tokenizer, self.rule_config),
            seed=self.seed,
        )
        timings["setup"] = time.perf_counter() - t0
        ctx = MechContext(setup, swap, label, behaviour, self.max_new_tokens, self.batch_size)
        analyses = self.build()
        advance = progress(f"mech {label}", sum(a.steps(ctx) for a in analyses)) if progress else None
        ctx.progress = advance
        results: dict[str, AnalysisResult] = {}
        try:
            for analysis in analyses:
                t0 = time.perf_counter()
                results[analysis.name] = analysis.run(ctx)
                timings[analysis.name] = time.perf_counter() - t0
        finally:
            swap.restore()
        results["mechanism"] = MechanismResult([smallest_patch(results, self.threshold, label)])
        return results, timings
