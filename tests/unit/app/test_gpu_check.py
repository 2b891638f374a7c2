"""The GPU readiness check (scripts/gpu_check.py, iit doctor --gpu): its tiny mode on CPU, its failure exit, its budget arithmetic."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from implicit_it.app import gpu_check
from implicit_it.app.cli import app

# Every step of the tiny run, as the table names them (the train rows carry a note after the method).
EXPECTED_STEPS = [
    "build (random init on the device)",
    "train lora",
    "train frozen_embeddings",
    "train full",
    "generate batch-1 vs batched",
    "generate batch-1 vs batched + rules",
    "save 2 checkpoints",
    "load_model(device_map=None)",
    "generate batched",
    "generate batched + rules",
    "generate batch-1 vs batched",
    "generate batch-1 vs batched + rules",
    "rank (lens at all)",
    "rank, the paper's loop (reference)",
    "delta pass: lens KL",
    "delta pass: rule comparison",
    "delta pass: lens KL (CPU reference)",
    "delta pass: rule comparison (CPU reference)",
    "weight diff (streamed, spectra)",
]
EXPECTED_CHECKS = [
    "train lora: loss",
    "train lora: trained weights",
    "train frozen_embeddings: trained weights",
    "train full: trained weights",
    "generate batch-1 vs batched (fp32)",
    "generate batch-1 vs batched + rules (fp32)",
    "generate batch-1 vs batched (bf16)",
    "generate batch-1 vs batched + rules (bf16)",
    "rule adapter scores: device vs CPU",
    "checkpoint round trip",
    "rank: fast path vs paper loop (bf16)",
    "delta pass: finite lens KL",
    "lens KL: device vs CPU",
    "rule comparison: device vs CPU",
    "weight diff",
]


def test_tiny_run_passes_every_check_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = gpu_check.main(["--tiny", "--shapes", "tiny-llama", "--json", str(out), "--workdir", str(tmp_path)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert rc == 0 and report["ok"], failed
    assert "| model | step | dtype | tokens | seconds | tokens/s | MFU | peak GPU mem |" in printed
    assert "| model | check | result | detail |" in printed and "checks passed" in printed
    assert "bf16 on the CPU, compared against fp32 on the CPU" in printed  # says what was compared without CUDA
    steps = [r["step"] for r in report["rows"]]
    assert steps == EXPECTED_STEPS
    assert sorted(set(EXPECTED_CHECKS) - {c["name"] for c in report["checks"]}) == []
    train = next(r for r in report["rows"] if r["step"] == "train full")
    assert train["tokens"] and train["seconds"] > 0 and train["flops"] > 0
    gen = next(r for r in report["rows"] if r["step"] == "generate batched + rules")
    assert gen["tokens_per_second"] > 0
    assert list(tmp_path.iterdir()) == [out]  # checkpoints were written under --workdir and removed after


def test_a_broken_check_exits_non_zero(tmp_path, capsys):
    rc = gpu_check.main(
        ["--tiny", "--shapes", "tiny-llama", "--steps", "generate", "--inject", "generation", "--json", str(tmp_path / "c.json")]
    )
    report = json.loads((tmp_path / "c.json").read_text())
    assert rc == 1 and not report["ok"]
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == ["generate batch-1 vs batched (fp32)"]
    assert "prompt 0 parts at token 0" in bad[0]["detail"]
    assert "FAIL" in capsys.readouterr().out


def test_full_mode_is_sized_to_the_budget_on_one_h200():
    h200 = gpu_check.assumed_device("H200:141")
    (plan,) = gpu_check.make_plans(h200, tiny=False, shapes=["llama-2-7b"])
    assert plan.counts["total"] == 6_878_924_800  # Llama-2-7B's shape with SmolLM2's 49,152-token vocabulary
    assert plan.settings.effective_batch == 64 and plan.skip_methods == {}
    assert plan.estimate_seconds < gpu_check.BUDGET_SECONDS / 2  # the 7B part leaves room for Gemma and a slow device
    full = gpu_check.train_flops(plan.counts, plan.config, "full", 64 * 1024, 1024)
    assert full == pytest.approx(6 * 6.677e9 * 65536, rel=0.03)  # 6·N·T (+ 2% attention at 1,024 tokens)
    (small,) = gpu_check.make_plans(gpu_check.assumed_device("H100:80"), tiny=False, shapes=["llama-2-7b"])
    assert set(small.skip_methods) == {"full", "frozen_embeddings"}  # fp32 Adam states do not fit 80 GB: LoRA only


def test_iit_doctor():
    runner = CliRunner()
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    assert "torch" in res.output and "CUDA available" in res.output
    res = runner.invoke(app, ["doctor", "--gpu", "--tiny", "--shapes", "tiny-llama", "--steps", "rank"])
    assert res.exit_code == 0, res.output
    assert "rank: fast path vs paper loop" in res.output and "checks passed" in res.output
