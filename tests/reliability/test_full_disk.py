"""A full disk never leaves a partial result, a step marked finished, or a run that cannot resume (issue 19, case 4).

Before the fix, when the disk filled up during a step, the run's error handler wrote the run manifest
on the same full disk and raised *that* OSError (with a traceback) instead of naming the failed step;
and a checkpoint save that failed with ENOSPC left a half-written ``checkpoint-N`` that every resume
picked and failed on.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import StageFailed, run_study
from implicit_it.app.pipeline.steps import PENDING_FILE, STEP_FILE
from implicit_it.training import Variant, latest_complete_checkpoint, train_variant
from tests.helpers import study_config_dict
from tests.reliability.runs import MAX_STEPS, reference_run, same_weights, train_config_dict, weights


class FullDisk:
    """``os.fsync`` fails with ENOSPC (where a full disk shows itself for buffered writes) once a file under
    ``trigger`` is synced, and for every file after it, until ``free()``."""

    def __init__(self, trigger: Path):
        self.trigger, self.full = str(trigger.resolve()), False
        self.real = os.fsync

    def __call__(self, fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(self.trigger) and PENDING_FILE not in path:
            self.full = True
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd)


def _study(tiny_llama_dir, shared_data):
    data = study_config_dict(tiny_llama_dir, shared_data)
    data["training"].update(variants=["response"])
    data["run"].update(rank={"enabled": False}, probe={"enabled": False}, diff={"enabled": False})
    data["run"]["generate"]["rule_sets"] = []
    data["run"]["eval"]["ifeval"] = False
    return parse_config(data)


def test_a_full_disk_mid_step_leaves_no_partial_result_and_the_next_run_completes_it(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    cfg = _study(tiny_llama_dir, shared_data)
    run = tmp_path / "run"
    failing = run / "eval" / "ifsuite" / "response.s0"
    disk = FullDisk(failing)
    monkeypatch.setattr(os, "fsync", disk)
    with pytest.raises(StageFailed, match=r"step eval/ifsuite/response\.s0 .*No space left on device"):
        run_study(cfg, run, show_progress=False)
    monkeypatch.undo()
    assert disk.full
    assert sorted(p.name for p in failing.iterdir()) == [PENDING_FILE]  # no partial result, no temp file, not finished
    assert not list(run.rglob("*.tmp"))
    finished = {p.parent: p.read_bytes() for p in run.rglob(STEP_FILE)}
    assert run / "train" / "response.s0" in finished and run / "eval" / "ifsuite" / "base" in finished

    outcome = run_study(cfg, run, show_progress=False)
    assert outcome.statuses["eval/ifsuite/response.s0"] == "ran" and outcome.statuses["train/response.s0"] == "cached"
    assert all(outcome.statuses[f"{p.relative_to(run)}"] == "cached" for p in finished)
    assert all((p / STEP_FILE).read_bytes() == data for p, data in finished.items())  # nothing finished was lost
    assert (failing / STEP_FILE).is_file() and (failing / "ifsuite.json").is_file() and outcome.report.is_file()


def test_a_checkpoint_save_failing_on_a_full_disk_resumes_from_the_previous_complete_one(
    tiny_llama_dir, shared_data, tmp_path_factory, tmp_path, monkeypatch
):
    from transformers import Trainer

    reference = reference_run(tiny_llama_dir, shared_data, tmp_path_factory.mktemp("reference"))
    cfg = parse_config(train_config_dict(tiny_llama_dir, shared_data))
    real = Trainer._save_rng_state

    def save_rng_state(self, output_dir):  # weights and optimizer are written; the disk fills up here
        if self.state.global_step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "rng_state.pth"))
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)
    monkeypatch.undo()
    assert (out / "checkpoints" / "checkpoint-3").is_dir() and latest_complete_checkpoint(out).name == "checkpoint-2"
    resumed = train_variant(cfg, Variant("response"), out_dir=out, resume=True, show_progress=False)
    assert resumed.results["optimizer_steps"] == MAX_STEPS and resumed.results["resumed"] is True
    assert same_weights(weights(out), reference["weights"])
