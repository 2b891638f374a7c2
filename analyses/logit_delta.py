"""How far the variant's next-token distribution moved from the base's, layer by layer.

Per layer (logit lens of each model on its own residual stream; layer L is the output): the mean
KL(variant ‖ base) over positions, split by where the text came from, and how often both models
agree on the top-1 token. At the output, the tokens that gained and lost the most probability
mass summed over positions (mass, not log-prob, so the 200k tokens nobody ever predicts do not
crowd the list). ``kl_emergence_layer`` is the first layer whose KL reaches half the output's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from implicit_it.analysis import AnalysisResult, layer_axis, new_figure, register_result

from .delta_pass import ChunkContext, DeltaObserver, DeltaPass, LensChunk, PassAnalysis, rule_token_ids, token_label


def first_layer_reaching(layers: list[dict[str, Any]], key: str, fraction: float = 0.5) -> int | None:
    """First layer whose ``key`` reaches ``fraction`` of its value at the last layer (None if that is not positive)."""
    final = layers[-1][key] if layers else float("nan")
    if not np.isfinite(final) or final <= 0:
        return None
    return next((layer["layer"] for layer in layers if np.isfinite(layer[key]) and layer[key] >= fraction * final), None)


@register_result
class LogitDeltaResult(AnalysisResult):
    """``logits.json``: KL(variant ‖ base) through the logit lens per layer, and the most moved tokens."""

    name = "logits"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{"variant": e["variant"], "n_layers": e["n_layers"], **layer} for e in self.entries for layer in e["layers"]])

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 4))
        x_of, xlabel = layer_axis(self.entries)
        for e in self.entries:
            ax.plot(x_of(e), [layer["kl"] for layer in e["layers"]], "-o", ms=3, label=e["variant"])
        ax.set_yscale("symlog", linthresh=1e-3)  # log above 1e-3 nats, linear (through 0) below
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean KL(variant ‖ base), nats (logit lens)")
        ax.set_title("KL(variant ‖ base) through the logit lens", fontsize=10)
        ax.legend(fontsize=7)
        return fig


class LogitDeltaObserver(DeltaObserver):
    def __init__(self, delta_pass: DeltaPass, top_n: int):
        self.delta_pass, self.top_n = delta_pass, top_n
        self.output_layer = delta_pass.n_layers
        self.kl: dict[tuple[str, int], float] = defaultdict(float)
        self.count: dict[tuple[str, int], int] = defaultdict(int)
        self.agree: dict[int, int] = defaultdict(int)
        self.mass_shift = torch.zeros(delta_pass.vocab_size, dtype=torch.float64)

    def observe(self, ctx: ChunkContext, layer: int, lens: LensChunk) -> None:
        kl = lens.kl()
        self.kl["all", layer] += float(kl.sum())
        self.count["all", layer] += len(kl)
        for origin in set(ctx.origins):
            rows = ctx.rows_of(origin)
            self.kl[origin, layer] += float(kl[rows].sum())
            self.count[origin, layer] += int(rows.sum())
        self.agree[layer] += int((lens.base.argmax(-1) == lens.variant.argmax(-1)).sum())
        if layer == self.output_layer:
            self.mass_shift += (lens.variant_probs.sum(0) - lens.base.exp().sum(0)).double().cpu()

    def result(self, label: str, counts: dict[str, int]) -> LogitDeltaResult:
        origins = sorted({o for o, _ in self.count if o != "all"})
        layers = []
        for layer in self.delta_pass.layers:
            n = self.count["all", layer]
            row = {
                "layer": layer,
                "kl": self.kl["all", layer] / n if n else float("nan"),
                "top1_agreement": self.agree[layer] / n if n else float("nan"),
            }
            for origin in origins:
                m = self.count[origin, layer]
                row[f"kl_{origin}"] = self.kl[origin, layer] / m if m else float("nan")
            layers.append(row)
        tok = self.delta_pass.base.tokenizer
        rule_ids = rule_token_ids(self.delta_pass.adapter)
        n_out = max(1, self.count["all", self.output_layer])

        def listing(order: torch.Tensor) -> list[dict[str, Any]]:
            return [
                {
                    "token_id": int(t),
                    "token": token_label(tok, int(t)),
                    "mean_probability_change": float(self.mass_shift[t]) / n_out,
                    "rule_token": int(t) in rule_ids,
                }
                for t in order[: self.top_n]
            ]

        order = torch.argsort(self.mass_shift, descending=True)
        return LogitDeltaResult(
            [
                {
                    "variant": label,
                    "n_layers": self.delta_pass.n_layers,
                    "layers": layers,
                    "kl_output": layers[-1]["kl"],
                    "kl_emergence_layer": first_layer_reaching(layers, "kl"),
                    "promoted_tokens": listing(order),
                    "demoted_tokens": listing(order.flip(0)),
                    **counts,
                }
            ]
        )


class LogitDelta(PassAnalysis):
    """KL(variant ‖ base) per layer and the tokens whose probability moved most."""

    name = "logits"

    def __init__(self, *, top_n: int = 20):
        self.top_n = top_n

    @classmethod
    def for_diff(cls, diff: Any) -> "LogitDelta":
        return cls(top_n=diff.top_n)

    def observer(self, delta_pass: DeltaPass) -> LogitDeltaObserver:
        return LogitDeltaObserver(delta_pass, self.top_n)
