"""Steering: does one vector added to the base's residual stream reproduce the variant?

δ_L is the mean difference variant − base of the residual stream after block L over every position
of the fit half's texts (prompt and response, in the training format) but the first: BOS is an attention
sink whose residual norms are far larger than any other position's, and would dominate the mean. The base with α·δ_L added at
every position (after block L) is scored on both halves like any hybrid (:mod:`.patching`); the best
(L, α) is chosen on the fit half and reported on the held-out half, beside the paper's rule adapter
(the base ⊗ rules product of experts) scored the same way. α = 0 is the base.

Behaviour: with behaviour prompts (the application passes IFEval's, and a scorer), the base, the
variant, the steered base at the best (L, α) and the rule adapter generate greedily; the EOS rate
(responses that end), the template echo (responses that write a chat tag), the mean length and the
scorer's metrics are compared, and for each metric the fraction of the variant's change over the
base that steering and the rules recover: (m − m_base) / (m_variant − m_base).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.lens import parse_layers

from .delta_pass import FIT
from .patching import CausalAnalysis, MechContext, PatchBatch, block_node, heatmap

SYSTEMS = ("base", "steered", "rules", "variant")


@register_result
class SteeringResult(AnalysisResult):
    """``steering.json``: per variant, the (L, α) grid, the best vector, the rule adapter, and behaviour."""

    name = "steering"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], **g} for e in self.entries for g in e["grid"]])

    def plot(self) -> Any:
        """Per variant: held-out recovered fraction over (L, α), and the behaviour of base / steered / rules / variant."""
        n = len(self.entries)
        fig, axes = new_figure(n, 2, figsize=(10, 2.8 * n + 0.6), squeeze=False, layout="constrained")
        for (ax, bx), e in zip(axes, self.entries, strict=True):
            layers = sorted({g["layer"] for g in e["grid"]})
            alphas = sorted({g["alpha"] for g in e["grid"]})
            grid = np.full((len(layers), len(alphas)), np.nan)
            for g in e["grid"]:
                if g["recovered_heldout"] is not None:
                    grid[layers.index(g["layer"]), alphas.index(g["alpha"])] = g["recovered_heldout"]
            heatmap(ax, grid, [str(x) for x in layers], [f"{a:g}" for a in alphas], vmin=-1.0)  # below −1 saturates (the cell says)
            rules = e["rules"]["recovered_heldout"]
            ax.set_title(f"{e['variant']}: steering, held-out recovered (rules: {_fmt(rules)})", fontsize=9)
            ax.set_xlabel("α")
            ax.set_ylabel("layer L")
            systems = e.get("behaviour", {}).get("systems", {})
            metrics = [m for m in ("eos_rate", "template_echo", "ifeval_loose") if any(m in s for s in systems.values())]
            if systems and metrics:
                width = 0.8 / len(systems)
                for j, name in enumerate(s for s in SYSTEMS if s in systems):
                    values = [systems[name].get(m) if systems[name].get(m) is not None else np.nan for m in metrics]
                    bx.bar(np.arange(len(metrics)) + j * width, values, width, label=name)
                bx.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics, fontsize=8)
                bx.set_ylim(0, 1)
                bx.legend(fontsize=7)
                bx.set_title(f"behaviour on {e['behaviour']['prompts']} {e['behaviour']['label']} (best L, α)", fontsize=9)
            else:
                bx.set_axis_off()
        fig.suptitle("steering the base with the mean difference vector δ_L, beside the rule adapter", fontsize=10)
        return fig


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


class Steering(CausalAnalysis):
    """The steering sweep and its behaviour check; see the module docstring."""

    name = "steering"

    def __init__(self, layers: str | Sequence[int] = "all", alphas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)):
        self.layers, self.alphas = layers, [float(a) for a in alphas]

    def steps(self, ctx: MechContext) -> int:
        n = len(parse_layers(self.layers, ctx.setup.n_layers))
        return 1 + n * len(self.alphas) + 1 + (len(SYSTEMS) if ctx.behaviour and ctx.behaviour.prompts else 0)

    def vectors(self, ctx: MechContext) -> dict[int, torch.Tensor]:
        """δ_L for every layer, from the fit half's texts (one trace per model and batch)."""
        setup = ctx.setup
        layers = parse_layers(self.layers, setup.n_layers)
        sums = {layer: torch.zeros((), dtype=torch.float64) for layer in layers}
        count = 0
        fit = [(b, torch.tensor([t.half == FIT for t in b.texts])) for b in setup.batches]
        fit = [(b, rows) for b, rows in fit if rows.any()]
        with setup.as_variant() as variant:
            variant_sums = [variant.residual_sums(b, layers, rows) for b, rows in fit]
        for (batch, rows), v in zip(fit, variant_sums, strict=True):
            b = setup.base.residual_sums(batch, layers, rows)
            for layer in layers:
                sums[layer] = sums[layer] + (v[layer].cpu() - b[layer].cpu())
            count += int(batch.mask[rows.to(batch.mask.device), 1:].sum())
        ctx.tick()
        return {layer: (s / max(count, 1)).float() for layer, s in sums.items()}

    def run(self, ctx: MechContext) -> SteeringResult:  # type: ignore[override]
        t0 = time.perf_counter()
        setup = ctx.setup
        deltas = self.vectors(ctx)
        grid = []
        for layer, delta in deltas.items():
            for alpha in self.alphas:
                fit, held = setup.evaluate_halves(steer_edit(layer, alpha, delta))
                grid.append(
                    {
                        "layer": layer,
                        "alpha": alpha,
                        "vector_norm": float(delta.norm()),
                        "recovered_fit": fit["recovered"],
                        "recovered_heldout": held["recovered"],
                        "recovered_heldout_ci": held["recovered_ci"],
                        "eos_prob": held["eos_prob"],
                        "template_prob": held["template_prob"],
                    }
                )
                ctx.tick()
        rules_fit, rules_held = setup.rule_recovery()
        ctx.tick()
        scored = [g for g in grid if g["recovered_fit"] is not None]
        best = max(scored, key=lambda g: g["recovered_fit"]) if scored else None
        entry: dict[str, Any] = {
            "variant": ctx.label,
            "grid": grid,
            "best": best,
            "rules": {
                **rules_held,
                "recovered_fit": rules_fit["recovered"],
                "recovered_heldout": rules_held["recovered"],
                "recovered_heldout_ci": rules_held["recovered_ci"],
            },
            "hidden_size": len(next(iter(deltas.values()))) if deltas else 0,
            "fit_texts": sum(t.half == FIT for t in setup.texts),
            "heldout_texts": sum(t.half != FIT for t in setup.texts),
        }
        if best is not None and ctx.behaviour is not None and ctx.behaviour.prompts:
            entry["behaviour"] = self.behaviour(ctx, best["layer"], best["alpha"], deltas[best["layer"]])
        entry["seconds"] = time.perf_counter() - t0
        return SteeringResult([entry])

    def behaviour(self, ctx: MechContext, layer: int, alpha: float, delta: torch.Tensor) -> dict[str, Any]:
        """Greedy generations of the four systems on the behaviour prompts, and what each recovers."""
        from implicit_it.generation import generate_responses

        assert ctx.behaviour is not None
        setup, prompts = ctx.setup, ctx.behaviour.prompts
        base = setup.base.loaded
        tags = [t for t in (setup.fmt.user_tag, setup.fmt.assistant_tag) if t]

        def generate(loaded: Any, factory: Any = None) -> list[Any]:
            results, _ = generate_responses(
                loaded,
                prompts,
                fmt=setup.fmt,
                max_new_tokens=ctx.max_new_tokens,
                batch_size=ctx.batch_size,
                logits_processor_factory=factory,
                show_progress=False,
            )
            ctx.tick()
            return results

        outputs = {"base": generate(base), "rules": generate(base, setup.adapter.logits_processor)}
        with setup.as_variant() as variant:
            outputs["variant"] = generate(variant.loaded)
        with steered(base.model, layer, alpha, delta):
            outputs["steered"] = generate(base)
        systems: dict[str, dict[str, float | None]] = {}
        for name in SYSTEMS:
            results = outputs[name]
            texts = [r.output for r in results]
            metrics: dict[str, float | None] = {
                "eos_rate": float(np.mean([r.stopped for r in results])),
                "template_echo": float(np.mean([any(t in x for t in tags) for x in texts])) if tags else None,
                "mean_tokens": float(np.mean([len(r.token_ids) for r in results])),
            }
            if ctx.behaviour.score is not None:
                metrics.update(ctx.behaviour.score(texts))
            systems[name] = metrics
        fractions = {}
        for metric in systems["base"]:
            b, v = systems["base"][metric], systems["variant"][metric]
            if b is None or v is None or abs(v - b) < 1e-9:
                fractions[metric] = {"steered": None, "rules": None}
                continue
            fractions[metric] = {
                s: None if systems[s][metric] is None else (systems[s][metric] - b) / (v - b) for s in ("steered", "rules")
            }  # type: ignore[operator]
        return {
            "label": ctx.behaviour.label,
            "prompts": len(prompts),
            "layer": layer,
            "alpha": alpha,
            "max_new_tokens": ctx.max_new_tokens,
            "systems": systems,
            "fraction_of_variant": fractions,
            "outputs": {name: [r.output for r in outputs[name]] for name in SYSTEMS},
        }


def steer_edit(layer: int, alpha: float, delta: torch.Tensor) -> Any:
    """An edit adding α·δ to the residual stream after block ``layer`` at every position (inside a trace)."""

    def edit(decoder: Any, batch: PatchBatch) -> None:
        node = block_node(decoder, layer)
        node.output[:] = node.output + (alpha * delta).to(device=node.output.device, dtype=node.output.dtype)

    return edit


@contextlib.contextmanager
def steered(model: torch.nn.Module, layer: int, alpha: float, delta: torch.Tensor) -> Iterator[None]:
    """The plain model (no trace) with α·δ added after block ``layer`` at every position, e.g. while generating
    with the KV-cached loop of :mod:`implicit_it.generation` (each new position gets it as it is computed)."""
    decoder = model.get_decoder()
    module = decoder.embed_tokens if layer == 0 else decoder.layers[layer - 1]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + (alpha * delta).to(output[0]),) + tuple(output[1:])
        return output + (alpha * delta).to(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
