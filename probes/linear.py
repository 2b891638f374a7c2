"""Linear probes: is "this response answers this instruction" linearly readable, layer by layer?

Instructions are paired at random (seeded) and each pair swaps responses: instruction i with its
own response (label 1) and with its partner's response (label 0), and the same for the partner.
Every response thus appears once as a match and once as a mismatch, inside one block of four
examples, so features of the response text alone carry no label information (chance is 50%),
and grouped cross-validation by block never tests a probe on an instruction *or a response* it
was trained on. (Independent random negatives would put a response in the training folds with
one label and in the test fold with the other, which pushes response-only features below chance.)
Features are the residual stream after each layer,
mean-pooled over the response tokens or taken at the last response token. Probes are
scikit-learn logistic regressions (standardised features) scored by grouped cross-validation:
both examples of an instruction fall in the same fold, so a probe is never tested on an
block it was trained on. A control probe fits the same features to shuffled labels (averaged
over a few shuffles) and must stay near 50%; the gap between the two is what the features carry.

Activations are pooled on the fly and written to disk batch by batch (``ActivationStore``), then
read back one layer at a time, so memory holds neither all layers x all tokens nor all layers x
all examples.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from implicit_it.analysis import Analysis, AnalysisResult, finish_accuracy_axes, layer_axis, new_figure, plot_band, register_result
from implicit_it.data import RankingSource
from implicit_it.errors import UserError
from implicit_it.formats import ChatFormat, get_format
from implicit_it.io import atomic_write
from implicit_it.lens import parse_layers

from .forward import PairBatch, PairForward, encode_groups
from .pairs import Candidate, RankingGroup

POOLS = ("mean", "last")


class ActivationStore:
    """Pooled activations as ``.npy`` shards of shape (rows, layers, d), one folder per pool."""

    def __init__(self, root: str | Path, layers: Sequence[int]):
        self.root = Path(root)
        self.layers = list(layers)
        self._shards: dict[str, int] = {}

    def append(self, pool: str, features: np.ndarray) -> Path:
        import io

        k = self._shards.get(pool, 0)
        self._shards[pool] = k + 1
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(features, dtype=np.float32))
        return atomic_write(self.root / pool / f"shard_{k:05d}.npy", lambda fh: fh.write(buf.getvalue()), binary=True)

    @staticmethod
    def remove(root: str | Path) -> None:
        """Delete the shards under ``root`` (and the folders they leave empty); any other file there is the user's
        and stays."""
        root = Path(root)
        for shard in root.glob("*/shard_*.npy"):
            shard.unlink()
        for folder in [*root.glob("*/"), root]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def layer(self, pool: str, layer: int) -> np.ndarray:
        """(rows, d) for one layer, read through memory maps (one layer in memory at a time)."""
        li = self.layers.index(layer)
        shards = sorted((self.root / pool).glob("shard_*.npy"))
        if not shards:
            raise FileNotFoundError(f"{self.root / pool}: no activation shards")
        return np.concatenate([np.load(s, mmap_mode="r")[:, li, :] for s in shards], axis=0)


def pool_batch(batch: PairBatch, layer: int) -> dict[str, torch.Tensor]:
    """Mean over the response-token positions (1..n of the chunk) and the last response token."""
    h = batch.residual[layer].float()
    n = batch.lengths.to(h.device)
    pos = torch.arange(h.shape[1], device=h.device)[None, :]
    keep = ((pos >= 1) & (pos <= n[:, None])).to(h.dtype)
    mean = (h * keep[..., None]).sum(1) / n[:, None].to(h.dtype)
    last = h[torch.arange(h.shape[0], device=h.device), n]
    return {"mean": mean, "last": last}


def cross_validated_accuracy(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = 5, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Per-fold accuracy of a standardised logistic regression under GroupKFold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    cv = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_score(probe, x, y, groups=groups, cv=cv, scoring="accuracy")


def swap_pair_groups(source: RankingSource, *, seed: int = 0) -> tuple[list[RankingGroup], list[int]]:
    """Pair instructions at random and swap their responses; returns the groups (own response
    first, partner's second) and each group's block id (the CV group). An odd one out is dropped."""
    import random

    order = list(range(len(source.instructions)))
    random.Random(seed).shuffle(order)
    groups, blocks = [], []
    for b in range(len(order) // 2):
        i, j = order[2 * b], order[2 * b + 1]
        for a, other in ((i, j), (j, i)):
            groups.append(RankingGroup(a, (Candidate(source.own_response[a], True), Candidate(source.own_response[other], False))))
            blocks.append(b)
    return groups, blocks


@register_result
class ProbeResult(AnalysisResult):
    """``probe.json``: linear-probe accuracy per layer and pooling, with its shuffled-label control."""

    name = "probe"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [{"model": e["model"], "pool": e["pool"], "n_layers": e["n_layers"], **layer} for e in self.entries for layer in e["layers"]]
        )

    def plot(self) -> Any:
        fig, ax = new_figure(figsize=(7, 4))
        x_of, xlabel = layer_axis(self.entries)
        for e in self.entries:
            color = None  # the control is drawn dotted in its probe's colour
            for key, style in (("accuracy", "-"), ("control_accuracy", ":")):
                y = np.array([layer[key] for layer in e["layers"]])
                sd = np.array([layer[key.replace("accuracy", "std")] for layer in e["layers"]])
                label = f"{e['model']} ({e['pool']}){' control' if key != 'accuracy' else ''}"
                line = plot_band(
                    ax,
                    x_of(e),
                    y,
                    y - sd,
                    y + sd,
                    label=label,
                    style=style,
                    marker="o" if key == "accuracy" else None,
                    color=color,
                    alpha=0.18 if color is None else 0.07,
                )
                color = line.get_color()
        finish_accuracy_axes(ax, xlabel=xlabel, ylabel="probe accuracy, grouped CV (mean ± std)", ylim=(0.3, 1))
        ax.set_title("linear probe: own vs another instruction's response (dotted: shuffled-label control)", fontsize=9)
        return fig


class ProbeRun(ProbeResult):
    """What :meth:`LinearProbe.run` returns: the probe result of one model, with the number of
    examples it was fitted on and the time it took."""

    def __init__(self, result: ProbeResult | list[dict[str, Any]], n_examples: int, seconds: float):
        super().__init__(result.entries if isinstance(result, AnalysisResult) else result)
        self.n_examples, self.seconds = n_examples, seconds

    @property
    def result(self) -> ProbeResult:
        """The plain result (what ``probe.json`` holds)."""
        return ProbeResult(self.entries)


class LinearProbe(Analysis):
    """Matched vs mismatched (instruction, response) probes on pooled residuals, per layer."""

    name = "probe"

    def __init__(
        self,
        source: RankingSource,
        *,
        activation_dir: str | Path,
        fmt: str | ChatFormat = "tulu",
        max_length: int | None = 512,
        layers: str | Sequence[int] = "all",
        pools: Sequence[str] = POOLS,
        folds: int = 5,
        c: float = 1.0,
        control_repeats: int = 3,
        seed: int = 0,
        max_batch_tokens: int = 4096,
    ):
        bad = [p for p in pools if p not in POOLS]
        if bad:
            raise UserError(f"unknown pooling {bad}; choose from {list(POOLS)}")
        self.source, self.fmt = source, get_format(fmt)
        self.groups, self.blocks = swap_pair_groups(source, seed=seed)
        self.activation_dir = Path(activation_dir)
        self.max_length, self.layers, self.pools = max_length, layers, list(pools)
        self.folds, self.c, self.control_repeats, self.seed, self.max_batch_tokens = folds, c, control_repeats, seed, max_batch_tokens

    def run(
        self, loaded: Any, *, label: str | None = None, fmt: str | ChatFormat | None = None, progress: Callable[[int], None] | None = None
    ) -> ProbeRun:
        import time

        t0 = time.perf_counter()
        forward = PairForward(loaded, max_batch_tokens=self.max_batch_tokens)
        layers = parse_layers(self.layers, forward.n_layers)
        encoded = encode_groups(loaded.tokenizer, fmt or self.fmt, self.source, self.groups, max_length=self.max_length)
        # a block is usable only if both of its instructions fit in max_length
        fitted = Counter(self.blocks[g.group_index] for g in encoded)
        whole = {b for b, n in fitted.items() if n == 2}
        encoded = [g for g in encoded if self.blocks[g.group_index] in whole]
        if len(whole) < self.folds:
            raise UserError(f"{len(whole)} instruction pairs fit in max_length={self.max_length}; need at least folds={self.folds}")
        if progress is not None:
            progress(len(self.groups) - len(encoded))  # skipped instructions count as done
        ActivationStore.remove(self.activation_dir)  # shards from an earlier run must not mix with these
        store = ActivationStore(self.activation_dir, layers)
        labels: list[int] = []
        group_ids: list[int] = []

        def consume(batch: PairBatch) -> None:
            pooled = {p: [] for p in self.pools}
            for layer in layers:
                for p, v in pool_batch(batch, layer).items():
                    if p in pooled:
                        pooled[p].append(v.cpu().numpy())
            for p, per_layer in pooled.items():
                store.append(p, np.stack(per_layer, axis=1))
            for g, c in batch.rows:
                labels.append(1 if c == 0 else 0)
                group_ids.append(self.blocks[g])

        forward.run(encoded, consume, layers=layers, progress=progress)
        y, grp = np.array(labels), np.array(group_ids)
        rng = np.random.default_rng(self.seed)
        y_controls = [rng.permutation(y) for _ in range(self.control_repeats)]
        entries = []
        for p in self.pools:
            per_layer = []
            for layer in layers:
                x = store.layer(p, layer)
                acc = cross_validated_accuracy(x, y, grp, folds=self.folds, c=self.c, seed=self.seed)
                ctl = np.concatenate(
                    [cross_validated_accuracy(x, yc, grp, folds=self.folds, c=self.c, seed=self.seed) for yc in y_controls]
                )
                per_layer.append(
                    {
                        "layer": layer,
                        "accuracy": float(acc.mean()),
                        "std": float(acc.std()),
                        "control_accuracy": float(ctl.mean()),
                        "control_std": float(ctl.std()),
                    }
                )
            entries.append(
                {
                    "model": label or loaded.source.spec,
                    "pool": p,
                    "n_layers": forward.n_layers,
                    "n_examples": len(y),
                    "n_instructions": len(encoded),
                    "folds": self.folds,
                    "C": self.c,
                    "control_repeats": self.control_repeats,
                    "design": "swap pairs (own vs partner's response), GroupKFold by pair",
                    "layers": per_layer,
                    "model_description": loaded.describe(),
                }
            )
        return ProbeRun(ProbeResult(entries), len(y), time.perf_counter() - t0)
