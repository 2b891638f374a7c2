"""A run SIGKILLed at any point resumes to the same result as an uninterrupted one (issue 19, case 1).

Each kill happens in a real subprocess that kills itself (``kill -9``: no ``finally``, no cleanup):
mid-checkpoint-save (weights written, ``trainer_state.json`` not yet), between two optimizer steps, and
after the final model is saved but before ``train_manifest.json``. Before the fix, a resume after the
first always picked the half-written ``checkpoint-N`` (Trainer's highest-numbered folder) and failed on
every retry with FileNotFoundError for its ``trainer_state.json``.
"""

from __future__ import annotations

import json
import signal

import pytest

from implicit_it.app.config import parse_config
from implicit_it.locks import LOCK_NAME
from implicit_it.training import Variant, latest_complete_checkpoint, train_variant
from tests.helpers import study_config_dict
from tests.reliability.runs import MAX_STEPS, reference_run, run_child, same_weights, train_config_dict, weights


@pytest.fixture
def reference(tiny_llama_dir, shared_data, tmp_path_factory):
    return reference_run(tiny_llama_dir, shared_data, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize(
    "kill,at,resumes_from",
    [
        ("save_state", 3, 2),  # mid-save of checkpoint-3: weights on disk, no trainer_state.json
        ("step", 2, 1),  # end of step 2, before its checkpoint
        ("manifest", 0, MAX_STEPS),  # the model saved, the manifest not yet
    ],
)
def test_a_killed_training_resumes_to_the_uninterrupted_result(kill, at, resumes_from, reference, tiny_llama_dir, shared_data, tmp_path):
    data = train_config_dict(tiny_llama_dir, shared_data)
    out = tmp_path / "killed"
    child = run_child(mode="train", kill=kill, at=at, config=data, out=out)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert not (out / "train_manifest.json").exists()
    assert latest_complete_checkpoint(out).name == f"checkpoint-{resumes_from}"
    if kill == "save_state":
        half = out / "checkpoints" / f"checkpoint-{at}"
        assert half.is_dir() and any(half.glob("*.safetensors")) and not (half / "trainer_state.json").exists()

    cfg = parse_config(data)
    with pytest.raises(ValueError, match="pass --resume"):  # an unfinished run is never silently restarted
        train_variant(cfg, Variant("response"), out_dir=out, show_progress=False)
    resumed = train_variant(cfg, Variant("response"), out_dir=out, resume=True, show_progress=False)

    r, ref = resumed.results, reference["manifest"]["results"]
    assert r["resumed"] is True and r["optimizer_steps"] == ref["optimizer_steps"] == MAX_STEPS
    assert [p["step"] for p in r["loss_curve"]] == list(range(1, MAX_STEPS + 1))
    assert [p["loss"] for p in r["loss_curve"]] == pytest.approx([p["loss"] for p in ref["loss_curve"]], abs=1e-6)
    assert json.loads((out / "train_manifest.json").read_text())["results"]["optimizer_steps"] == MAX_STEPS
    assert same_weights(weights(out), reference["weights"])
    assert not (out / "checkpoints").exists() and not (out / LOCK_NAME).exists()


def test_a_study_killed_mid_checkpoint_resumes_and_keeps_what_finished(tiny_llama_dir, shared_data, tmp_path):
    """``iit run`` killed while a later training step saves a checkpoint: the re-run reuses the finished
    training step, resumes the killed one from its last complete checkpoint and finishes the study."""
    data = study_config_dict(tiny_llama_dir, shared_data)
    data["training"].update(variants=["instruction", "response"], max_steps=3)
    data["run"].update(rank={"enabled": False}, probe={"enabled": False}, diff={"enabled": False})
    data["run"]["generate"]["rule_sets"] = []
    data["run"]["eval"]["ifeval"] = False
    run = tmp_path / "run"
    child = run_child(mode="study", kill="save_state", at=2, where="response.s0", config=data, out=run)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    finished = run / "train" / "instruction.s0"
    killed = run / "train" / "response.s0"
    assert (finished / "step.json").is_file() and (killed / "pending.json").is_file()
    before = (finished / "model.safetensors").read_bytes()
    assert not (killed / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()

    from implicit_it.app.pipeline import run_study

    outcome = run_study(parse_config(data), run, show_progress=False)
    assert outcome.statuses["train/instruction.s0"] == "cached" and outcome.statuses["train/response.s0"] == "ran"
    assert all(s in ("ran", "cached") for s in outcome.statuses.values())
    summary = json.loads((killed / "step.json").read_text())["summary"]
    assert summary["resumed"] is True and summary["optimizer_steps"] == 3
    assert (finished / "model.safetensors").read_bytes() == before
    assert outcome.report.is_file() and not (run / LOCK_NAME).exists()
