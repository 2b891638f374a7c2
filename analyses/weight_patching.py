"""Weight patching: which of the variant's weights are *sufficient* for its change.

Each hybrid is the base with one set of the variant's tensors swapped in (in place, restored after):
one block at a time, one kind at a time (attention, MLP, norms, embeddings: across all blocks), and
cumulatively from the bottom (blocks 1..c) and from the top (blocks c..n); the final norm and the embeddings
belong to no block (they count in their kinds, and in "all"). Each is scored by the fraction
of the variant's change it recovers (:mod:`.patching`), and by behaviour proxies at the same positions:
p(EOS) where the response really ends, p(the chat template's first token) at the response's start (the
base's urge to start another turn), and the recovered fraction at the first response token alone.
"all" (every changed tensor) is the variant itself, so its row reads 1.0: a live check of the swap.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from implicit_it.analysis import AnalysisResult, new_figure, register_result

from .patching import CausalAnalysis, MechContext, block_layers, heatmap, tensor_group
from .weights import describe_tensor

KINDS = ("attention", "mlp", "norms", "embeddings")


@register_result
class WeightPatchingResult(AnalysisResult):
    """``weight_patching.json``: per variant, every hybrid's recovered fraction and behaviour proxies."""

    name = "weight_patching"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], **h} for e in self.entries for h in e["hybrids"]])

    def plot(self) -> Any:
        """Per-block and per-kind recovered fraction (variants × columns), and the cumulative sweeps."""
        fig, axes = new_figure(1, 3, figsize=(13, 1.6 + 0.5 * len(self.entries)), layout="constrained", width_ratios=[3, 1.2, 2])
        names = [e["variant"] for e in self.entries]
        image = None
        for ax, group in zip(axes[:2], ("block", "kind"), strict=True):
            cols = list(dict.fromkeys(h["label"] for e in self.entries for h in e["hybrids"] if h["group"] == group))
            grid = np.full((len(names), len(cols)), np.nan)
            for r, e in enumerate(self.entries):
                for h in e["hybrids"]:
                    if h["group"] == group and h["recovered"] is not None:
                        grid[r, cols.index(h["label"])] = h["recovered"]
            image = heatmap(ax, grid, names, [c.removeprefix("block ") for c in cols])
            ax.set_title("one block at a time" if group == "block" else "one kind, every block", fontsize=9)
        ax = axes[2]
        for e in self.entries:
            for group, style in (("bottom_up", "-"), ("top_down", "--")):
                rows = [h for h in e["hybrids"] if h["group"] == group]
                if rows:
                    ax.plot(
                        [h["blocks"] for h in rows],
                        [h["recovered"] for h in rows],
                        style,
                        marker="o",
                        ms=3,
                        label=f"{e['variant']} {group}",
                    )
        ax.set_xlabel("blocks patched (from the bottom: —, from the top: --)")
        ax.set_ylabel("recovered")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend(fontsize=6)
        if image is not None:
            fig.colorbar(image, ax=list(axes[:2]), label="recovered fraction", shrink=0.8)
        fig.suptitle("weight patching: the base with the variant's weights in some modules", fontsize=10)
        return fig


class WeightPatching(CausalAnalysis):
    """Hybrids per block, per kind and cumulative; see the module docstring."""

    name = "weight_patching"

    def __init__(self, blocks: str | Sequence[int] = "all", kinds: Sequence[str] = KINDS):
        self.blocks, self.kinds = blocks, tuple(kinds)

    def hybrids(self, ctx: MechContext) -> list[tuple[dict[str, Any], list[str]]]:
        """(row fields, tensor names) of every hybrid, in the order they run."""
        changed = ctx.swap.changed
        layer_of = {n: describe_tensor(n)[0] for n in changed}
        blocks = block_layers(self.blocks, ctx.setup.n_layers)
        n = ctx.setup.n_layers
        out: list[tuple[dict[str, Any], list[str]]] = []
        for b in blocks:
            out.append(({"group": "block", "label": f"block {b}", "blocks": 1}, [t for t in changed if layer_of[t] == b]))
        for kind in self.kinds:
            out.append(({"group": "kind", "label": kind, "blocks": None}, [t for t in changed if tensor_group(t) == kind]))
        for c in blocks:
            out.append(
                (
                    {"group": "bottom_up", "label": f"blocks 1-{c}", "blocks": c},
                    [t for t in changed if (layer_of[t] or 0) and layer_of[t] <= c],
                )
            )
        for c in blocks:
            out.append(
                ({"group": "top_down", "label": f"blocks {c}-{n}", "blocks": n - c + 1}, [t for t in changed if (layer_of[t] or 0) >= c])
            )
        out.append(({"group": "all", "label": "all", "blocks": n}, list(changed)))
        return out

    def steps(self, ctx: MechContext) -> int:
        return len(self.hybrids(ctx))

    def run(self, ctx: MechContext) -> WeightPatchingResult:  # type: ignore[override]
        t0 = time.perf_counter()
        rows = []
        total = ctx.swap.size(ctx.swap.changed)
        for fields, names in self.hybrids(ctx):
            if names:
                with ctx.swap.hybrid(names):
                    scores = ctx.setup.evaluate()
            else:  # nothing of this kind changed: the hybrid is the base
                scores = {**ctx.setup.reference.base, "recovered": 0.0, "first_token_recovered": 0.0}
            size = ctx.swap.size(names)
            rows.append({**fields, "tensors": len(names), "parameters": size, "share_of_changed": size / total if total else 0.0, **scores})
            ctx.tick()
        ref = ctx.setup.reference
        entry = {
            "variant": ctx.label,
            "kl_base": ref.kl_base / max(ref.n_positions, 1),
            "positions": ref.n_positions,
            "texts": len(ctx.setup.texts),
            "changed_tensors": len(ctx.swap.changed),
            "changed_parameters": total,
            "base": ref.base,
            "variant_proxies": ref.variant_proxies,
            "hybrids": rows,
            "seconds": time.perf_counter() - t0,
        }
        return WeightPatchingResult([entry])
