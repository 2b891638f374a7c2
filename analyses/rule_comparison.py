"""How rule-like is the variant's change, and at which depth?

For every layer (logit lens; layer L is the output) the variant's log-prob delta against the base
is compared with the paper's hand-written rule adapter and with the best-fitting *rule family*
(:mod:`.rule_family`), fitted on half of the instructions and scored on the other half. The
output layer's fit also gives the per-token constants, listed next to the paper's 15 tokens.

Fitted per-token constants are reported against the median of the tokens *in play* (in either
model's top 10 at some fit position), and a token's percentile is its rank among those tokens.

``emergence_layer`` is the first layer where the variance the rule family explains (held out, in
nats² per position-token cell) reaches half of its largest value over layers: the depth at which
the rule-shaped part of the change appears.

``vocab``: ``"all"`` scores every token of the vocabulary equally; ``"frequent:K"`` keeps the K
tokens most frequent in the texts' responses plus the rule tokens and EOS, so tokens that never
occur in running text do not dominate the variance.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from implicit_it.analysis import AnalysisResult, layer_axis, new_figure, register_result
from implicit_it.errors import UserError

from .delta_pass import FIT, ChunkContext, DeltaObserver, DeltaPass, LensChunk, PassAnalysis, rule_token_ids, token_label
from .rule_family import RuleFamilyFit

SCORE_KEYS = (
    "variance_explained_rules",
    "variance_explained_rules_unscaled",
    "correlation_rules",
    "variance_explained_rule_family",
    "delta_variance",
    "explained_variance_rule_family",
    "fitted_seen_coefficient",
    "fitted_eos_slope",
    "rules_scale",
)


def emergence_layer(per_layer: list[dict[str, Any]], key: str = "explained_variance_rule_family") -> int | None:
    """First layer whose ``key`` reaches half of its largest value over layers (None if never positive).

    The default key is the variance the rule family explains in nats² per cell, not R²: a layer
    where the models barely differ (e.g. the embeddings, when they were frozen) can have a high R²
    of a negligible delta."""
    values = [layer[key] for layer in per_layer if np.isfinite(layer[key])]
    if not values or max(values) <= 0:
        return None
    return next(layer["layer"] for layer in per_layer if np.isfinite(layer[key]) and layer[key] >= 0.5 * max(values))


def parse_vocab(spec: str) -> int | None:
    """``"all"`` -> None; ``"frequent:K"`` -> K."""
    if spec == "all":
        return None
    kind, _, k = spec.partition(":")
    if kind != "frequent" or not k.isdigit() or int(k) < 1:
        raise UserError(f"vocab: expected 'all' or 'frequent:K' (K > 0), got {spec!r}")
    return int(k)


def vocabulary_columns(spec: str, delta_pass: DeltaPass) -> torch.Tensor | None:
    """None for the whole vocabulary, else the sorted token ids ``frequent:K`` selects."""
    k = parse_vocab(spec)
    if k is None:
        return None
    tok = delta_pass.base.tokenizer
    counts = Counter(t for text in delta_pass.texts for t in tok(text.response, add_special_tokens=False)["input_ids"])
    ids = {t for t, _ in counts.most_common(k)} | set(rule_token_ids(delta_pass.adapter))
    return torch.tensor(sorted(i for i in ids if i < delta_pass.vocab_size))


@register_result
class RuleComparisonResult(AnalysisResult):
    """``rules.json``: per variant the output layer's numbers, ``emergence_layer`` and ``per_layer``."""

    name = "rules"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [{"variant": e["variant"], "n_layers": e["n_layers"], **layer} for e in self.entries for layer in e["per_layer"]]
        )

    def plot(self) -> Any:
        fig, (ax, ax_var) = new_figure(1, 2, figsize=(12, 4.2), layout="constrained")
        x_of, xlabel = layer_axis([{**e, "layers": e["per_layer"]} for e in self.entries])
        for e in self.entries:
            x = x_of({**e, "layers": e["per_layer"]})
            (line,) = ax.plot(
                x,
                [layer["variance_explained_rule_family"] for layer in e["per_layer"]],
                "-o",
                ms=3,
                label=f"{e['variant']}: token bias + seen + EOS slope (fitted)",
            )
            ax.plot(
                x,
                [layer["variance_explained_rules"] for layer in e["per_layer"]],
                "--",
                marker="s",
                ms=3,
                color=line.get_color(),
                label=f"{e['variant']}: paper's rules (scaled)",
            )
            ax_var.plot(x, [layer["delta_variance"] for layer in e["per_layer"]], ":", color=line.get_color(), label=f"{e['variant']}: Δ")
            ax_var.plot(
                x,
                [layer["explained_variance_rule_family"] for layer in e["per_layer"]],
                "-o",
                ms=3,
                color=line.get_color(),
                label=f"{e['variant']}: explained by token bias + seen + EOS slope",
            )
            if e["emergence_layer"] is not None:
                ax_var.axvline(
                    x[[layer["layer"] for layer in e["per_layer"]].index(e["emergence_layer"])], color=line.get_color(), lw=0.8, ls="--"
                )
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out share of Δ log p variance explained (R²)")
        ax.set_title("held-out variance of Δ log p explained, per layer", fontsize=10)
        ax.legend(fontsize=6)
        if any(layer["delta_variance"] > 0 for e in self.entries for layer in e["per_layer"]):
            ax_var.set_yscale("log")
        ax_var.set_xlabel(xlabel)
        ax_var.set_ylabel("variance per (position, token), nats²; dashed: emergence layer")
        ax_var.legend(fontsize=6)
        return fig


class RuleComparisonObserver(DeltaObserver):
    def __init__(self, delta_pass: DeltaPass, vocab: str, top_n: int):
        self.delta_pass, self.top_n, self.vocab = delta_pass, top_n, vocab
        self.columns = vocabulary_columns(vocab, delta_pass)
        eos = int(delta_pass.adapter.eos_token_id)
        n_vocab = delta_pass.vocab_size if self.columns is None else len(self.columns)
        eos_col = eos if self.columns is None else int((self.columns == eos).nonzero()[0, 0])
        self.fits = {layer: RuleFamilyFit(n_vocab, eos_col) for layer in delta_pass.layers}
        self.in_play = torch.zeros(n_vocab, dtype=torch.bool)  # in either model's top 10 at some fit position

    def _cols(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.columns is None else x[:, self.columns]

    def observe(self, ctx: ChunkContext, layer: int, lens: LensChunk) -> None:
        y = self._cols(lens.delta)
        seen, rules = self._cols(ctx.seen), self._cols(ctx.rule_scores)
        fit = self.fits[layer]
        if ctx.half == FIT:
            fit.add_fit(y, seen, ctx.n_generated, rules)
            if layer == self.delta_pass.n_layers:
                for lp in (lens.base, lens.variant):
                    top = self._cols(lp).topk(10, dim=-1).indices
                    self.in_play[top.flatten().cpu()] = True
        else:
            fit.add_heldout(y, seen, ctx.n_generated, rules)

    def end_half(self, half: int) -> None:
        if half == FIT:
            for fit in self.fits.values():
                fit.solve()

    def _token_id(self, col: int) -> int:
        return col if self.columns is None else int(self.columns[col])

    def _column(self, token_id: int | None) -> int | None:
        """Column of a token id in the scored vocabulary (None: unresolved or not scored)."""
        if token_id is None or token_id >= self.delta_pass.vocab_size:
            return None
        if self.columns is None:
            return token_id
        hit = (self.columns == token_id).nonzero()
        return int(hit[0, 0]) if len(hit) else None

    def result(self, label: str, counts: dict[str, int]) -> RuleComparisonResult:
        scores = {layer: self.fits[layer].scores() for layer in self.delta_pass.layers}
        per_layer = [{"layer": layer, **{k: scores[layer][k] for k in SCORE_KEYS}} for layer in self.delta_pass.layers]
        out = self.fits[self.delta_pass.n_layers]
        tok = self.delta_pass.base.tokenizer
        candidates = self.in_play.nonzero()[:, 0]
        # constants are defined up to one common offset: report them against the median token in play
        shift = out.token_shift - (out.token_shift[candidates].median() if len(candidates) else 0.0)
        in_play_shifts = shift[candidates]
        order = candidates[torch.argsort(in_play_shifts, descending=True)]

        def listing(cols: torch.Tensor) -> list[dict[str, Any]]:
            return [
                {"token_id": self._token_id(int(c)), "token": token_label(tok, self._token_id(int(c))), "fitted_shift": float(shift[c])}
                for c in cols[: self.top_n]
            ]

        paper = []
        for r in self.delta_pass.adapter.resolved:
            c = self._column(r.token_id)
            paper.append(
                {
                    "text": r.text,
                    "paper_score": r.score,
                    "token_id": r.token_id,
                    "fitted_shift": float(shift[c]) if c is not None else None,
                    "in_play": bool(self.in_play[c]) if c is not None else None,
                    "percentile": float((in_play_shifts < shift[c]).double().mean()) if c is not None and len(candidates) else None,
                }
            )
        return RuleComparisonResult(
            [
                {
                    "variant": label,
                    "n_layers": self.delta_pass.n_layers,
                    "vocab": self.vocab,
                    "n_vocab_columns": len(shift),
                    **scores[self.delta_pass.n_layers],
                    "emergence_layer": emergence_layer(per_layer),
                    "per_layer": per_layer,
                    "paper_rule_constants": {
                        "seen_coefficient": -self.delta_pass.adapter.config.diversity_penalty,
                        "eos_slope": self.delta_pass.adapter.config.eos_slope,
                    },
                    "top_token_shifts": {"up": listing(order), "down": listing(order.flip(0))},
                    "paper_tokens": paper,
                    **counts,
                }
            ]
        )


class RuleComparison(PassAnalysis):
    """Variance of the variant's Δ log p explained by the paper's rules and by the fitted rule family, per layer."""

    name = "rules"

    def __init__(self, *, vocab: str = "frequent:2048", top_n: int = 20):
        self.vocab, self.top_n = vocab, top_n

    @classmethod
    def for_diff(cls, diff: Any) -> "RuleComparison":
        return cls(vocab=diff.vocab, top_n=diff.top_n)

    def observer(self, delta_pass: DeltaPass) -> RuleComparisonObserver:
        return RuleComparisonObserver(delta_pass, self.vocab, self.top_n)
