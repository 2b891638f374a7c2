"""Token distribution shift along the variant's own greedy outputs (Lin et al. 2023, URIAL/AlignTDS).

At each position of a variant-generated response, where does the variant's top-1 token rank under
the base model? Rank 1: *unshifted*; 2–3: *marginal*; > 3: *shifted*. The tokens most often
moved (marginal or shifted) are listed with whether they are rule tokens (the paper's 15 and EOS),
and the share of moved positions whose token is a rule token is compared with that share among
all positions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from implicit_it.analysis import AnalysisResult, new_figure, register_result

from .delta_pass import ChunkContext, DeltaObserver, DeltaPass, LensChunk, PassAnalysis, rule_token_ids, token_label

BUCKETS = ("unshifted", "marginal", "shifted")
BUCKET_RANKS = {"unshifted": "1", "marginal": "2-3", "shifted": ">3"}  # the variant's top-1 token's rank under the base


@register_result
class TokenShiftResult(AnalysisResult):
    """``shift.json``: per variant the fractions of positions in each rank bucket and the most moved tokens."""

    name = "shift"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "variant": e["variant"],
                    "texts": e["texts_used"],
                    "n_positions": e["n_positions"],
                    **{b: e[b] for b in BUCKETS},
                    "rule_token_share_of_moved": e["rule_token_share_of_moved"],
                    "rule_token_share_of_all": e["rule_token_share_of_all"],
                }
                for e in self.entries
            ]
        )

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 0.8 + 0.5 * len(self.entries)))
        left = np.zeros(len(self.entries))
        for bucket, color in zip(BUCKETS, ("tab:green", "tab:orange", "tab:red"), strict=True):
            values = np.array([e[bucket] for e in self.entries])
            ax.barh(range(len(values)), values, left=left, color=color, label=f"{bucket} (base rank {BUCKET_RANKS[bucket]})")
            left += values
        ax.set_yticks(range(len(self.entries)), [e["variant"] for e in self.entries], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of the variant's greedy tokens, by their rank under the base")
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        ax.invert_yaxis()
        return fig


class TokenShiftObserver(DeltaObserver):
    def __init__(self, delta_pass: DeltaPass, top_n: int):
        self.delta_pass, self.top_n = delta_pass, top_n
        origins = {t.origin for t in delta_pass.texts}
        self.origin = "generation" if "generation" in origins else None  # None: every text (no generations were made)
        self.buckets = Counter()
        self.moved: Counter[int] = Counter()
        self.rule_ids = rule_token_ids(delta_pass.adapter)
        self.rule_all = self.follows_text = 0

    def observe(self, ctx: ChunkContext, layer: int, lens: LensChunk) -> None:
        if layer != self.delta_pass.n_layers:
            return
        rows = slice(None) if self.origin is None else ctx.rows_of(self.origin)
        base_lp, targets = lens.base[rows], ctx.targets[rows]
        if len(targets) == 0:
            return
        top = lens.variant[rows].argmax(-1)
        rank = 1 + (base_lp > base_lp.gather(1, top[:, None])).sum(-1)
        self.follows_text += int((top == targets).sum())
        for t, r in zip(top.tolist(), rank.tolist(), strict=True):
            self.buckets[BUCKETS[0] if r == 1 else BUCKETS[1] if r <= 3 else BUCKETS[2]] += 1
            self.rule_all += t in self.rule_ids
            if r > 1:
                self.moved[t] += 1

    def result(self, label: str, counts: dict[str, int]) -> TokenShiftResult:
        n = sum(self.buckets.values())
        n_moved = sum(self.moved.values())
        tok = self.delta_pass.base.tokenizer
        top = [
            {
                "token_id": t,
                "token": token_label(tok, t),
                "count": c,
                "rule_token": t in self.rule_ids,
                "paper_score": (None if np.isnan(self.rule_ids[t]) else self.rule_ids[t]) if t in self.rule_ids else None,
            }
            for t, c in self.moved.most_common(self.top_n)
        ]
        return TokenShiftResult(
            [
                {
                    "variant": label,
                    "texts_used": self.origin or "all",
                    "n_positions": n,
                    **{b: self.buckets[b] / n if n else float("nan") for b in BUCKETS},
                    "top1_follows_text": self.follows_text / n if n else float("nan"),
                    "rule_token_share_of_moved": sum(c for t, c in self.moved.items() if t in self.rule_ids) / n_moved
                    if n_moved
                    else float("nan"),
                    "rule_token_share_of_all": self.rule_all / n if n else float("nan"),
                    "rule_tokens_in_top": sum(x["rule_token"] for x in top),
                    "top_moved_tokens": top,
                    **counts,
                }
            ]
        )


class TokenShift(PassAnalysis):
    """Rank of the variant's greedy token under the base (unshifted / marginal / shifted)."""

    name = "shift"

    def __init__(self, *, top_n: int = 20):
        self.top_n = top_n

    @classmethod
    def for_diff(cls, diff: Any) -> "TokenShift":
        return cls(top_n=diff.top_n)

    def observer(self, delta_pass: DeltaPass) -> TokenShiftObserver:
        return TokenShiftObserver(delta_pass, self.top_n)
