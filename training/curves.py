"""Loss curves: pulled from ``Trainer``'s log history, drawn to ``loss.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from implicit_it.analysis import save_figure


def loss_curve(log_history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """One point per logged optimizer step: ``step``, ``epoch``, ``loss``, ``learning_rate`` and the pre-clip ``grad_norm``."""
    return [
        {
            "step": int(h["step"]),
            "epoch": round(float(h.get("epoch", 0.0)), 4),
            "loss": float(h["loss"]),
            "learning_rate": float(h.get("learning_rate", 0.0)),
            **({"grad_norm": float(h["grad_norm"])} if h.get("grad_norm") is not None else {}),
        }
        for h in log_history
        if "loss" in h and "step" in h
    ]


def write_loss_plot(path: str | Path, curve: Sequence[dict[str, float]], *, title: str = "") -> Path:
    """Training loss per optimizer step, learning rate on a second axis (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["loss"] for p in curve], color="tab:blue", marker="." if len(curve) < 60 else None, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / response token)", color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [p["learning_rate"] for p in curve], color="tab:gray", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(path, fig, dpi=110)
