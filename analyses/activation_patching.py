"""Activation patching: at which layer, in which stream and at which positions the change is carried.

For each layer L the variant runs once on a batch and its activation at L is read: the residual
stream after block L (``resid``), or what block L's attention or MLP computed (``attn``/``mlp``, before
any post-norm). The base then runs on the same batch with that activation written over its own at one
position class (every position, the instruction's tokens, the template's tags and BOS, or the
response's tokens), and the fraction of the variant's change it recovers is scored (:mod:`.patching`).
Only one layer's activations are held at a time (of every batch, read in one swap when the variant runs in place of
the base, :meth:`~.patching.PatchSetup.as_variant`).

Patching the residual stream at every position of the last layer hands the base the variant's final
hidden state: what is then missing is only what the variant's final norm and unembedding changed.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.lens import parse_layers

from .patching import POSITION_CLASSES, CausalAnalysis, MechContext, PatchBatch, Recovery, block_node, site_output

SITES = ("resid", "attn", "mlp")


@register_result
class ActivationPatchingResult(AnalysisResult):
    """``activation_patching.json``: per variant, the recovered fraction per (layer, site, position class)."""

    name = "activation_patching"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], **c} for e in self.entries for c in e["cells"]])

    def plot(self) -> Any:
        """Recovered fraction by layer: one panel per site, one line per (variant, position class)."""
        sites = [s for s in SITES if any(c["site"] == s for e in self.entries for c in e["cells"])]
        fig, axes = new_figure(1, max(len(sites), 1), figsize=(4.2 * max(len(sites), 1), 3.4), squeeze=False, layout="constrained")
        styles = dict(zip(POSITION_CLASSES, ("-", ":", "-.", "--"), strict=True))
        for ax, site in zip(axes[0], sites, strict=False):
            for i, e in enumerate(self.entries):
                for cls in POSITION_CLASSES:
                    pts = [c for c in e["cells"] if c["site"] == site and c["positions"] == cls and c["recovered"] is not None]
                    if pts:
                        ax.plot(
                            [c["layer"] for c in pts],
                            [c["recovered"] for c in pts],
                            styles[cls],
                            color=f"C{i}",
                            marker="o",
                            ms=2.5,
                            label=f"{e['variant']}: {cls}",
                        )
            ax.set_title(f"patched: {site}", fontsize=9)
            ax.set_xlabel("layer")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.axhline(0.0, color="grey", lw=0.5)
        axes[0][0].set_ylabel("recovered")
        axes[0][-1].legend(fontsize=6)
        fig.suptitle("activation patching: the variant's activation at layer L written into the base", fontsize=10)
        return fig

    def best(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        cells = [c for c in entry["cells"] if c["recovered"] is not None]
        return max(cells, key=lambda c: c["recovered"]) if cells else None


class ActivationPatching(CausalAnalysis):
    """The per-layer patching sweep; see the module docstring."""

    name = "activation_patching"

    def __init__(self, layers: str | Sequence[int] = "all", sites: Sequence[str] = SITES, positions: Sequence[str] = POSITION_CLASSES):
        self.layers, self.sites, self.positions = layers, tuple(sites), tuple(positions)

    def cells(self, n_layers: int) -> list[tuple[int, str]]:
        return [
            (layer, site) for layer in parse_layers(self.layers, n_layers) for site in self.sites if not (layer == 0 and site != "resid")
        ]

    def steps(self, ctx: MechContext) -> int:
        return len(parse_layers(self.layers, ctx.setup.n_layers))

    def run(self, ctx: MechContext) -> ActivationPatchingResult:  # type: ignore[override]
        t0 = time.perf_counter()
        setup = ctx.setup
        cells = []
        for layer in parse_layers(self.layers, setup.n_layers):
            sites = [s for s in self.sites if not (layer == 0 and s != "resid")]
            sums = {(s, p): Recovery() for s in sites for p in self.positions}
            with setup.as_variant() as variant:  # this layer's activations of every batch, nothing else
                layer_acts = [variant.read(batch, layer, sites) for batch in setup.batches]
            for i, (batch, acts) in enumerate(zip(setup.batches, layer_acts, strict=True)):
                for site in sites:
                    for cls in self.positions:
                        edit = patch_edit(layer, site, cls, acts[site])
                        setup.reference.score(i, batch, setup.base.logprobs(batch, edit), sums[site, cls])
            del layer_acts
            for (site, cls), rec in sums.items():
                cells.append({"layer": layer, "site": site, "positions": cls, **rec.as_dict(setup.reference)})
            ctx.tick()
        entry = {
            "variant": ctx.label,
            "n_layers": setup.n_layers,
            "kl_base": setup.reference.kl_base / max(setup.reference.n_positions, 1),
            "cells": cells,
            "seconds": time.perf_counter() - t0,
        }
        return ActivationPatchingResult([entry])


def patch_edit(layer: int, site: str, position_class: str, values: Any) -> Any:
    """An edit writing ``values`` (B, T, d) over the base's ``site`` output at ``layer`` in one position class."""

    def edit(decoder: Any, batch: PatchBatch) -> None:
        rows, cols = batch.class_index(position_class)
        if len(rows):
            target = site_output(block_node(decoder, layer, site), site)
            target[rows, cols] = values[rows, cols].to(target.dtype)

    return edit
