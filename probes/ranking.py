"""Does the model rank an instruction's own response above other instructions' responses?

:class:`RankingProbe` runs the paper's protocol (see :mod:`.pairs`) on one model at a time and
returns a :class:`RankingRun`, from which come the documented results:

* ``ranking.json``: accuracy with a cluster-bootstrap 95% CI, for the mean log-prob (the paper's
  length-normalised score) and the total log-prob;
* ``layerwise_ranking.json``: the same accuracy with the logit lens after every layer, from the
  same forward pass (layer L equals the output exactly);
* per-pair scores as Parquet, so any other statistic can be computed from the raw numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from implicit_it.analysis import Analysis, AnalysisResult, finish_accuracy_axes, layer_axis, new_figure, plot_band, register_result
from implicit_it.data import RankingSource
from implicit_it.errors import UserError
from implicit_it.formats import ChatFormat, get_format
from implicit_it.lens import parse_layers

from .forward import EncodedGroup, PairForward, encode_groups
from .pairs import RankingGroup
from .scoring import OUTPUT, GroupScores, score_groups
from .stats import accuracy_with_ci

SCORES = ("mean_logprob", "total_logprob")


def ranking_wins(scores: np.ndarray) -> np.ndarray:
    """(instructions, 1 + negatives) scores, real first -> (instructions, negatives) real > other."""
    return scores[:, :1] > scores[:, 1:]


@register_result
class RankingResult(AnalysisResult):
    """``ranking.json``: response-ranking accuracy with a cluster-bootstrap 95% CI, per model and score."""

    name = "ranking"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "model": e["model"],
                    "score": e["score"],
                    "accuracy": e["accuracy"],
                    "ci95_low": e["ci95"][0],
                    "ci95_high": e["ci95"][1],
                    "n_pairs": e["n_pairs"],
                    "n_instructions": e["n_instructions"],
                }
                for e in self.entries
            ]
        )

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 0.6 + 0.45 * len(self.entries)))
        labels = [f"{e['model']} ({e['score']})" for e in self.entries]
        acc = np.array([e["accuracy"] for e in self.entries])
        err = np.array([[a - e["ci95"][0], e["ci95"][1] - a] for a, e in zip(acc, self.entries, strict=True)]).T
        ax.barh(range(len(acc)), acc, xerr=err, color="tab:blue", alpha=0.8, capsize=3)
        ax.set_yticks(range(len(acc)), labels)
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel("ranking accuracy (real response > other instruction's response), 95% CI")
        ax.invert_yaxis()
        return fig


@register_result
class LayerwiseRankingResult(AnalysisResult):
    """``layerwise_ranking.json``: ranking accuracy through the logit lens after every layer."""

    name = "layerwise_ranking"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "model": e["model"],
                    "score": e["score"],
                    "layer": layer["layer"],
                    "n_layers": e["n_layers"],
                    "accuracy": layer["accuracy"],
                    "ci95_low": layer["ci95"][0],
                    "ci95_high": layer["ci95"][1],
                }
                for e in self.entries
                for layer in e["layers"]
            ]
        )

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 4))
        x_of, xlabel = layer_axis(self.entries)
        for e in self.entries:
            lo, hi = np.array([layer["ci95"] for layer in e["layers"]]).T
            plot_band(ax, x_of(e), [layer["accuracy"] for layer in e["layers"]], lo, hi, label=e["model"])
        finish_accuracy_axes(ax, xlabel=xlabel, ylabel="ranking accuracy (logit lens), 95% CI", guides=(0.5, 0.6))
        ax.set_title("response ranking through the logit lens", fontsize=10)
        return fig


def first_layer_above(layers: Sequence[dict[str, Any]], threshold: float = 0.6) -> int | None:
    return next((layer["layer"] for layer in layers if layer["accuracy"] > threshold), None)


class RankingRun(RankingResult):
    """What :meth:`RankingProbe.run` returns: the ranking result of one model (its entries are
    ``ranking.json``'s), with everything the model produced, from which come the layerwise result
    (:meth:`layerwise`) and the per-pair table (:meth:`pairs_frame`)."""

    def __init__(
        self,
        model: str,
        description: dict[str, Any],
        groups: list[RankingGroup],
        encoded: list[EncodedGroup],
        output: GroupScores,
        layers: GroupScores | None,
        n_layers: int,
        n_boot: int,
        seed: int,
        seconds: float = 0.0,
    ):
        self.model, self.description, self.groups, self.encoded = model, description, groups, encoded
        self.output, self.layers, self.n_layers, self.n_boot, self.seed, self.seconds = output, layers, n_layers, n_boot, seed, seconds
        super().__init__(self._ranking_entries())

    def _entry(self, scores: GroupScores, key: Any, score: str) -> dict[str, Any]:
        values = scores.mean(key) if score == "mean_logprob" else scores.totals[key]
        present = scores.n_tokens[:, 1:] > 0  # a dropped self-draw leaves its group a negative short
        acc, ci = accuracy_with_ci(ranking_wins(values), present, n_boot=self.n_boot, seed=self.seed)
        return {"accuracy": acc, "ci95": [ci[0], ci[1]]}

    def ranking(self) -> RankingResult:
        """The plain result (what ``ranking.json`` holds), without this run's raw scores."""
        return RankingResult(self.entries)

    def _ranking_entries(self) -> list[dict[str, Any]]:
        n_pairs = sum(len(g.responses) - 1 for g in self.encoded)
        return [
            {
                "model": self.model,
                "score": s,
                **self._entry(self.output, OUTPUT, s),
                "n_pairs": n_pairs,
                "n_instructions": len(self.encoded),
                "n_skipped_instructions": len(self.groups) - len(self.encoded),
                "truncated_fraction": float(self.output.truncated[self.output.n_tokens > 0].mean()),
                "model_description": self.description,
            }
            for s in SCORES
        ]

    def layerwise(self, score: str = "mean_logprob") -> LayerwiseRankingResult:
        if self.layers is None:
            raise ValueError("this run computed no per-layer scores (pass layers)")
        per_layer = [{"layer": layer, **self._entry(self.layers, layer, score)} for layer in sorted(self.layers.totals)]
        return LayerwiseRankingResult(
            [
                {
                    "model": self.model,
                    "score": score,
                    "n_layers": self.n_layers,
                    "layers": per_layer,
                    "first_layer_above_0.6": first_layer_above(per_layer),
                    "n_pairs": sum(len(g.responses) - 1 for g in self.encoded),
                }
            ]
        )

    def pairs_frame(self) -> Any:
        """One row per (instruction, candidate): token count and summed/mean log-probs (output and per layer)."""
        import pandas as pd

        rows = []
        means = self.output.mean(OUTPUT)
        for gi, enc in enumerate(self.encoded):
            group = self.groups[enc.group_index]
            for ci, cand in enumerate(group.candidates):
                row = {
                    "model": self.model,
                    "instruction_index": group.instruction_index,
                    "candidate": ci,
                    "response_index": cand.response_index,
                    "is_real": cand.is_real,
                    "n_tokens": int(self.output.n_tokens[gi, ci]),
                    "truncated": bool(self.output.truncated[gi, ci]),
                    "total_logprob": float(self.output.totals[OUTPUT][gi, ci]),
                    "mean_logprob": float(means[gi, ci]),
                }
                if self.layers is not None:
                    for layer, totals in self.layers.totals.items():
                        row[f"lens{layer}_total_logprob"] = float(totals[gi, ci])
                rows.append(row)
        return pd.DataFrame(rows)


class RankingProbe(Analysis):
    """The paper's ranking protocol on one model; optionally through the logit lens per layer."""

    name = "ranking"

    def __init__(
        self,
        source: RankingSource,
        groups: Sequence[RankingGroup],
        *,
        fmt: str | ChatFormat = "tulu",
        max_length: int | None = 1024,
        layers: str | Sequence[int] | None = None,
        max_batch_tokens: int = 4096,
        n_boot: int = 2000,
        seed: int = 0,
    ):
        self.source, self.groups = source, list(groups)
        self.fmt = get_format(fmt)
        self.max_length, self.layers, self.max_batch_tokens = max_length, layers, max_batch_tokens
        self.n_boot, self.seed = n_boot, seed

    def run(
        self, loaded: Any, *, label: str | None = None, fmt: str | ChatFormat | None = None, progress: Callable[[int], None] | None = None
    ) -> RankingRun:
        import time

        t0 = time.perf_counter()
        encoded = encode_groups(loaded.tokenizer, fmt or self.fmt, self.source, self.groups, max_length=self.max_length)
        if not encoded:
            raise UserError(f"no instruction's prompt fits in max_length={self.max_length} tokens")
        if progress is not None and len(encoded) < len(self.groups):
            progress(len(self.groups) - len(encoded))  # skipped instructions count as done
        forward = PairForward(loaded, max_batch_tokens=self.max_batch_tokens)
        layer_scores = None
        if self.layers is not None:
            layers = parse_layers(self.layers, forward.n_layers)
            traced = sorted(set(layers) | {forward.n_layers})  # the last layer is the output: one pass gives both
            layer_scores = score_groups(forward, encoded, layers=traced, progress=progress)
            output = GroupScores({OUTPUT: layer_scores.totals[forward.n_layers]}, layer_scores.n_tokens, layer_scores.truncated)
            layer_scores.totals = {k: v for k, v in layer_scores.totals.items() if k in layers}
        else:
            output = score_groups(forward, encoded, progress=progress)
        return RankingRun(
            label or loaded.source.spec,
            loaded.describe(),
            self.groups,
            encoded,
            output,
            layer_scores,
            forward.n_layers,
            self.n_boot,
            self.seed,
            seconds=time.perf_counter() - t0,
        )
