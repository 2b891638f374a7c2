"""The training stage: what ``iit train`` and the pipeline's train steps both call.

:func:`train_stage` trains one variant into its directory, or reuses a finished run there, or resumes an interrupted
one from its last complete checkpoint; it returns the manifest's numbers as a summary (a step's record) and a headline
(a terminal line). :func:`card_stage` rewrites a trained variant's model card with what a study measured on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from .card import write_model_card
from .checkpoints import latest_complete_checkpoint
from .config import TrainingExperiment
from .engine import MANIFEST_NAME, default_out_dir, train_variant
from .variants import Variant

SUMMARY_KEYS = ("final_loss", "heldout_nll", "val_nll", "tokens_per_second", "optimizer_steps", "tokens_seen")


@dataclass
class TrainStage:
    """One variant's training: its directory, its manifest (None on a non-main process of a distributed run) and
    whether it resumed from a checkpoint."""

    variant: Variant
    out_dir: Path
    manifest: dict[str, Any] | None
    resumed: bool = False

    def summary(self) -> dict[str, Any]:
        """The manifest's headline numbers (a pipeline step's record); the log files when ``training.report_to`` wrote any."""
        if self.manifest is None:
            return {}
        r = self.manifest["results"]
        out = {k: r.get(k) for k in SUMMARY_KEYS} | {
            "resumed": self.resumed,
            "train_seconds": self.manifest["timings_seconds"].get("train"),
        }
        return out | ({"logs": r["logs"]} if r.get("logs") else {})

    def headline(self) -> str:
        """One line for a terminal: examples, steps, final loss, held-out and validation NLL, speed."""
        if self.manifest is None:
            return ""
        r = self.manifest["results"]
        held = f", held-out NLL {r['heldout_nll']:.4f}" if "heldout_nll" in r else ""
        held += f", validation NLL {r['val_nll']:.4f}" if "val_nll" in r else ""
        return (
            f"{self.variant.name}: {r['data']['n_train_examples']} examples, {r['optimizer_steps']} steps, final loss "
            f"{r['final_loss']:.4f}{held}, {r['tokens_per_second']:.1f} tok/s, train "
            f"{self.manifest['timings_seconds']['train']:.0f}s -> {self.out_dir}"
        )


def train_stage(
    config: TrainingExperiment,
    variant: Variant,
    *,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    launch: Callable[[bool], None] | None = None,
) -> TrainStage:
    """Train ``variant`` of ``config`` into ``out_dir`` (default ``runs/<name>/<variant>``).

    ``resume="auto"`` (a pipeline step): a finished run in ``out_dir`` (its manifest) is reused as it is, an interrupted
    one resumes from its last complete checkpoint, anything else starts afresh. ``launch``: trains in another process
    instead (``accelerate launch`` over several GPUs), given whether to resume; its manifest is read back."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config, variant)
    manifest_path = out_dir / MANIFEST_NAME
    if resume == "auto":
        if manifest_path.is_file():
            return TrainStage(variant, out_dir, json.loads(manifest_path.read_text(encoding="utf-8")))
        resume = latest_complete_checkpoint(out_dir) is not None
    if launch is not None:
        launch(resume)
        return TrainStage(variant, out_dir, json.loads(manifest_path.read_text(encoding="utf-8")), resume)
    res = train_variant(
        config, variant, out_dir=out_dir, seed=seed, resume=resume, overwrite=overwrite, show_progress=show_progress, command=command
    )
    return TrainStage(variant, res.out_dir, res.manifest or None, resume)


def card_stage(train_dir: str | Path, evaluations: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Rewrite ``train_dir``'s model card (README.md) from its training manifest and the ``evaluations`` measured on it
    (rows of :func:`.card.evaluation_rows`)."""
    manifest = json.loads((Path(train_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    return write_model_card(train_dir, manifest, evaluations)
