"""Low rank: how many directions of ΔW does the change need?

Every changed matrix ΔW = W_variant − W_base is truncated to its top-k singular directions (SVD, kept
as k·(m+n) factors for the largest k asked for) and the base gets W_base + ΔW_k in place of each
matrix; 1-D tensors (norm scales, biases) have no rank and are swapped whole at every k, so k = 0
shows what they alone carry. At k ≥ min(m, n) a matrix gets the variant's own tensor (no SVD
round-off): full rank is the variant exactly. Scored like every hybrid (:mod:`.patching`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from implicit_it.analysis import AnalysisResult, new_figure, register_result

from .patching import CausalAnalysis, MechContext


@register_result
class LowRankResult(AnalysisResult):
    """``low_rank.json``: per variant, the recovered fraction as each ΔW's rank k grows."""

    name = "low_rank"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], **p} for e in self.entries for p in e["curve"]])

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(5.5, 3.4), layout="constrained")
        for e in self.entries:
            pts = [p for p in e["curve"] if p["recovered"] is not None]
            ax.plot([max(p["rank"], 0.5) for p in pts], [p["recovered"] for p in pts], marker="o", ms=3, label=e["variant"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank k of each ΔW (0 plotted at ½: 1-D tensors only; last point: full rank)")
        ax.set_ylabel("recovered")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
        ax.set_title("low-rank ΔW: the base + ΔW truncated to rank k", fontsize=10)
        return fig


class LowRank(CausalAnalysis):
    """The rank curve; see the module docstring."""

    name = "low_rank"

    def __init__(self, ranks: Sequence[int] = (0, 1, 2, 4, 8, 16, 32, 64)):
        self.ranks = sorted(set(ranks))

    def steps(self, ctx: MechContext) -> int:
        return len(self.ranks) + 1

    def factors(self, ctx: MechContext, k_max: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
        """Name -> (U_k·S_k, V_kᵀ, full rank) of each changed matrix, for k up to ``k_max``."""
        out = {}
        for name in ctx.swap.changed:
            base = ctx.swap.base.get(name)
            if base.ndim != 2:
                continue
            delta = (ctx.swap.variant.get(name) - base).double()
            k = min(k_max, *delta.shape)
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            out[name] = ((u[:, :k] * s[:k]).float(), vh[:k].float(), min(delta.shape))
        return out

    def run(self, ctx: MechContext) -> LowRankResult:  # type: ignore[override]
        t0 = time.perf_counter()
        swap = ctx.swap
        factors = self.factors(ctx, max(self.ranks, default=0))
        vectors = [n for n in swap.changed if n not in factors]

        def truncated(k: int):
            def make(name: str) -> torch.Tensor:
                if name not in factors or k >= factors[name][2]:
                    return swap.variant.get(name)
                us, vh, _ = factors[name]
                return swap.base.get(name) + us[:, :k] @ vh[:k]

            return make

        curve = []
        full = max((f[2] for f in factors.values()), default=0)
        for k in [*self.ranks, full]:
            if curve and k == full and curve[-1]["rank"] >= full:
                break
            names = list(swap.changed) if k > 0 else vectors
            with swap.hybrid(names, truncated(k)):
                scores = ctx.setup.evaluate()
            params = sum(matrix_parameters(f, k) for f in factors.values()) + swap.size(vectors)
            curve.append({"rank": k, "full_rank": k >= full, "parameters": params, **scores})
            ctx.tick()
        entry = {
            "variant": ctx.label,
            "matrices": len(factors),
            "vectors": len(vectors),
            "max_rank": full,
            "changed_parameters": swap.size(swap.changed),
            "curve": curve,
            "seconds": time.perf_counter() - t0,
        }
        return LowRankResult([entry])


def matrix_parameters(factor: tuple[torch.Tensor, torch.Tensor, int], k: int) -> int:
    """What a rank-k ΔW of an m×n matrix costs to store: k·(m+n), or m·n once k reaches its full rank (the tensor itself)."""
    us, vh, full = factor
    m, n = us.shape[0], vh.shape[1]
    return m * n if k >= full else k * (m + n)
