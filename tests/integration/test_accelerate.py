"""The shipped accelerate configs: accepted by accelerate, and `accelerate launch` trains unchanged.

Without GPUs, accelerate runs a 2-process launch as CPU data parallel (gloo); FSDP and DeepSpeed
need GPUs, so for those we check that accelerate's own launch-time parsing accepts the files and
builds its FSDP / DeepSpeed plugins from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from implicit_it.app.config import load_config
from implicit_it.models import load_model
from implicit_it.training import Variant, train_variant

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "configs" / "accelerate"


def _launch_env(config_file: Path, launcher: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file ...` would give each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "implicit_it", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if launcher == "deepspeed":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_fsdp_config_builds_accelerates_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    env = _launch_env(ACCELERATE / "fsdp.yaml", "multi_gpu")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # Trainer.save_model writes one HF directory
    assert plugin.cpu_ram_efficient_loading is True


def test_deepspeed_config_builds_accelerates_plugin(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    env = _launch_env(ACCELERATE / "deepspeed_zero3.yaml", "deepspeed")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert (REPO / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).resolve() == (ACCELERATE / "zero3.json").resolve()
    monkeypatch.chdir(REPO)  # the config names zero3.json relative to the repository root
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3
    ds = json.loads((ACCELERATE / "zero3.json").read_text())
    # everything the experiment config decides is left to Trainer
    assert {ds[k] for k in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size")} == {"auto"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_yaml(tiny_llama_dir, shared_data, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "seed": 0,
                "model": {"spec": str(tiny_llama_dir)},
                "data": {"train": str(shared_data / "lima" / "train.jsonl"), "max_train_examples": 16, "heldout_examples": 4},
                "training": {
                    "learning_rate": 1e-3,
                    "epochs": 2,
                    "effective_batch_size": 8,
                    "per_device_batch_size": 2,
                    "max_length": 96,
                    "warmup_ratio": 0.0,
                },
            }
        )
    )
    return path


@pytest.mark.parametrize("config_name", ["ddp", "fsdp"])
def test_two_process_launch_matches_one_process(config_name, tiny_yaml, tmp_path):
    """2 CPU processes x batch 2 x 2 accumulation = 1 process x batch 2 x 4: the same numbers."""
    single = train_variant(load_config(tiny_yaml), Variant("response"), out_dir=tmp_path / "single", show_progress=False)
    out = tmp_path / config_name
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE / f"{config_name}.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "implicit_it",
        "train",
        "--config",
        str(tiny_yaml),
        "--variant",
        "response",
        "--out",
        str(out),
        "-q",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "train_manifest.json").read_text())["results"]
    assert r["world_size"] == 2 and r["distributed_type"] == "MULTI_CPU"
    assert r["gradient_accumulation_steps"] == 2 and single.results["gradient_accumulation_steps"] == 4
    assert r["optimizer_steps"] == single.results["optimizer_steps"] == 4
    assert [p["loss"] for p in r["loss_curve"]] == pytest.approx([p["loss"] for p in single.results["loss_curve"]], rel=1e-4)
    assert r["heldout_nll"] == pytest.approx(single.results["heldout_nll"], rel=1e-4)
    load_model(out, device="cpu", use_process_cache=False)  # one ordinary HF directory


def test_iit_run_trains_under_accelerate_launch(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    """``run.accelerate_config``: the pipeline's training steps become `accelerate launch ... -m implicit_it train` processes."""
    from implicit_it.app.config import parse_config
    from implicit_it.app.pipeline import run_study
    from tests.helpers import study_config_dict

    data = study_config_dict(tiny_llama_dir, shared_data)
    data["training"].update(variants=["response"], max_steps=None, epochs=1, effective_batch_size=4, per_device_batch_size=2)
    data["run"] = {
        "accelerate_config": str(ACCELERATE / "ddp.yaml"),
        "accelerate_args": ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port())],
        "generate": {"ifsuite_prompts": 2, "max_new_tokens": 4, "rule_sets": []},
        "rank": {"enabled": False},
        "probe": {"enabled": False},
        "diff": {"enabled": False},
        "eval": {"ifeval": False},
    }
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    outcome = run_study(parse_config(data), tmp_path / "run", show_progress=False)
    assert outcome.statuses["train/response.s0"] == "ran" and outcome.statuses["eval/ifsuite/response.s0"] == "ran"
    r = json.loads((tmp_path / "run" / "train" / "response.s0" / "train_manifest.json").read_text())["results"]
    assert r["world_size"] == 2 and r["distributed_type"] == "MULTI_CPU"
    assert (tmp_path / "run" / "train" / "response.s0" / "experiment.yaml").is_file()
