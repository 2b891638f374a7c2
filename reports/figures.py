"""The report's layerwise figures, drawn from what the stages wrote (one function per figure).

Each returns a matplotlib figure, or None when the run has no data for it (a stage turned off).
Trained variants are drawn once per seed; the legend names the system (``response.s0``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from implicit_it.analysis import finish_accuracy_axes, new_figure, plot_band

from .collect import RunData

WEIGHT_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def weight_delta_heatmap(run: RunData) -> Any:
    """‖ΔW‖/‖W‖ per block (rows) and projection (columns), one panel per variant (first seed)."""
    panels = []
    for steps in run.by_label("diff").values():
        entries = steps[0].results("weights.json")
        if entries:
            panels.append((steps[0].system, entries[0]["tensors"]))
    if not panels:
        return None
    fig, axes = new_figure(1, len(panels), figsize=(2.4 + 2.6 * len(panels), 4.2), squeeze=False)
    vmax = max(
        (t["relative_delta"] for _, ts in panels for t in ts if t["kind"] in WEIGHT_KINDS and t["relative_delta"] == t["relative_delta"]),
        default=1.0,
    )
    image = None
    for i, (ax, (name, tensors)) in enumerate(zip(axes[0], panels, strict=True)):
        n_layers = max((t["layer"] or 0) for t in tensors)
        grid = np.full((n_layers, len(WEIGHT_KINDS)), np.nan)
        for t in tensors:
            if t["kind"] in WEIGHT_KINDS and t["layer"]:
                grid[t["layer"] - 1, WEIGHT_KINDS.index(t["kind"])] = t["relative_delta"]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(WEIGHT_KINDS)), WEIGHT_KINDS, fontsize=7)
        ticks = list(range(0, n_layers, max(1, n_layers // 9)))
        ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=7)  # blocks are numbered from 1, as in weights.parquet
        if i == 0:
            ax.set_ylabel("block")
    fig.colorbar(image, ax=list(axes[0]), label="‖ΔW‖ / ‖W‖", shrink=0.85)
    fig.suptitle("weight deltas against the base, per block and projection", fontsize=10)
    return fig


def _lines(run: RunData, stage: str, filename: str, draw: Callable[[Any, Any], None], *, title: str, ylabel: str) -> Any:
    entries = [(s, e) for s in run.stage(stage) for e in s.results(filename)]
    if not entries:
        return None
    fig, ax = new_figure(figsize=(6.4, 3.6))
    for step, entry in entries:
        draw(ax, (step, entry))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return fig


def logit_lens_kl(run: RunData) -> Any:
    def draw(ax: Any, item: Any) -> None:
        step, e = item
        ax.plot([layer["layer"] for layer in e["layers"]], [layer["kl"] for layer in e["layers"]], "-o", ms=3, label=step.system)

    return _lines(run, "diff", "logits.json", draw, title="KL(variant ‖ base) through the logit lens", ylabel="mean KL, nats")


def ranking_per_layer(run: RunData) -> Any:
    entries = [
        e for s in run.stage("rank") for e in s.results("layerwise_ranking.json") if e.get("score", "mean_logprob") == "mean_logprob"
    ]
    if not entries:
        return None
    fig, ax = new_figure(figsize=(6.4, 3.6))
    for e in entries:
        x = [layer["layer"] for layer in e["layers"]]
        plot_band(
            ax,
            x,
            [layer["accuracy"] for layer in e["layers"]],
            [layer["ci95"][0] for layer in e["layers"]],
            [layer["ci95"][1] for layer in e["layers"]],
            label=e["model"],
        )
    finish_accuracy_axes(ax, xlabel="layer (0 = embeddings)", ylabel="ranking accuracy (95% CI)")
    ax.set_title("response ranking through the logit lens", fontsize=10)
    return fig


def probe_per_layer(run: RunData) -> Any:
    entries = [e for s in run.stage("probe") for e in s.results("probe.json")]
    if not entries:
        return None
    fig, ax = new_figure(figsize=(6.4, 3.6))
    for e in entries:
        x = [layer["layer"] for layer in e["layers"]]
        acc, std = np.array([layer["accuracy"] for layer in e["layers"]]), np.array([layer["std"] for layer in e["layers"]])
        line = plot_band(ax, x, acc, acc - std, acc + std, label=f"{e['model']} ({e['pool']})")
        ax.plot(x, [layer["control_accuracy"] for layer in e["layers"]], ":", color=line.get_color(), lw=1)
    finish_accuracy_axes(ax, xlabel="layer (0 = embeddings)", ylabel="probe accuracy (± std over folds)")
    ax.set_title("linear probe: own vs another instruction's response (dotted: shuffled-label control)", fontsize=9)
    return fig


def rule_variance_per_layer(run: RunData) -> Any:
    def draw(ax: Any, item: Any) -> None:
        step, e = item
        x = [layer["layer"] for layer in e["per_layer"]]
        (line,) = ax.plot(
            x, [layer["variance_explained_rule_family"] for layer in e["per_layer"]], "-o", ms=3, label=f"{step.system}: rule family"
        )
        ax.plot(
            x,
            [layer["variance_explained_rules"] for layer in e["per_layer"]],
            "--",
            color=line.get_color(),
            lw=1,
            label=f"{step.system}: paper's rules",
        )

    fig = _lines(run, "diff", "rules.json", draw, title="held-out variance of Δ log p explained, per layer", ylabel="R² (held out)")
    if fig is not None:
        fig.axes[0].axhline(0, color="grey", lw=0.8, ls=":")
    return fig


FIGURES: dict[str, tuple[Callable[[RunData], Any], str]] = {
    "weights": (weight_delta_heatmap, "Relative weight change ‖ΔW‖/‖W‖ of each projection in each block, per variant."),
    "kl": (
        logit_lens_kl,
        "Mean KL(variant ‖ base) over response positions, reading each layer through the model's own final norm and unembedding.",
    ),
    "ranking": (ranking_per_layer, "Response-ranking accuracy per layer through the logit lens (the last point is the model's output)."),
    "probe": (
        probe_per_layer,
        "Linear-probe accuracy per layer (matched vs mismatched instruction/response), grouped CV; dotted: shuffled labels.",
    ),
    "rules": (
        rule_variance_per_layer,
        "Held-out R² of Δ log p explained by the fitted rule family (solid) and by the paper's rules with a fitted scale (dashed).",
    ),
}
