"""What the reliability tests share: a tiny training config, an uninterrupted reference run, a child that kills itself.

The child (:mod:`tests.reliability.kill_child`) runs in a real subprocess and SIGKILLs itself at a
chosen point, so nothing in this process (a ``finally``, a context manager) can tidy up after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from implicit_it.app.config import parse_config
from implicit_it.models import load_model

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 4


def train_config_dict(model_dir: Path, shared_data: Path, **training: Any) -> dict[str, Any]:
    """8 LIMA examples, 2 optimizer steps an epoch, ``MAX_STEPS`` steps, a checkpoint at every step."""
    t = dict(
        variants=["response"],
        learning_rate=1e-3,
        max_steps=MAX_STEPS,
        effective_batch_size=4,
        per_device_batch_size=2,
        max_length=96,
        warmup_ratio=0.0,
        save_steps=1,
    )
    t.update(training)
    return {
        "name": "reliability",
        "seed": 3,
        "model": {"spec": str(model_dir)},
        "data": {"train": str(shared_data / "lima" / "train.jsonl"), "max_train_examples": 8, "heldout_examples": 0},
        "training": t,
    }


_REFERENCE: dict[str, dict[str, Any]] = {}


def reference_run(model_dir: Path, shared_data: Path, root: Path) -> dict[str, Any]:
    """The uninterrupted run (same seed) every interrupted one must end up equal to: its manifest and weights. Once per session."""
    from implicit_it.training import Variant, train_variant

    key = str(model_dir)
    if key not in _REFERENCE:
        cfg = parse_config(train_config_dict(model_dir, shared_data))
        res = train_variant(cfg, Variant("response"), out_dir=root / "reference", show_progress=False)
        _REFERENCE[key] = {"manifest": res.manifest, "weights": weights(root / "reference")}
    return _REFERENCE[key]


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(out_dir, device="cpu", use_process_cache=False).model.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def run_child(**args: Any) -> subprocess.CompletedProcess:
    """``python -m tests.reliability.kill_child ARGS``; returns the finished process (killed: returncode -9)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.reliability.kill_child", json.dumps(args, default=str)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(res: Any) -> str:
    """The CLI result's single line ``error: ...`` (exit 2), and nothing else printed."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]
