"""The paper configs encode the paper's protocol (its scripts: john-hewitt/implicit-ins scripts/iclr2025/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from implicit_it.app.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# scripts/iclr2025/expt{1,2}_{llama,olmo}/*/finetune_seed1.sh: epochs=, --learning_rate
PAPER = {
    "llama2-7b": (
        1e-5,
        {
            "instruction": 15,
            "response": 5,
            "single_task-gsm": 7,
            "single_task-mbpp": 15,
            "single_task-chess": 15,
            "single_task-poetry": 15,
            "single_task-recipes": 20,
        },
    ),
    "olmo-7b": (
        3e-6,
        {
            "instruction": 15,
            "response": 7,
            "single_task-gsm": 7,
            "single_task-mbpp": 7,
            "single_task-chess": 20,
            "single_task-poetry": 5,
            "single_task-recipes": 20,
        },
    ),
}


@pytest.mark.parametrize("name", ["llama2-7b", "olmo-7b", "gemma3-270m-paper"])
def test_paper_configs_set_the_papers_side_of_every_switch(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    t, d = cfg.training, cfg.data
    assert cfg.format == "tulu"
    assert d.heldout_examples == 0 and d.strip_whitespace and d.multi_turn
    assert d.validation and d.validation.endswith("lima/val_reference_gpt35.json")
    assert (t.effective_batch_size, t.max_length, t.lr_scheduler, t.warmup_ratio, t.weight_decay) == (64, 2048, "linear", 0.03, 0.0)
    assert (t.loss_reduction, t.schedule_counting, t.sweep_metric, t.method, t.bf16) == (
        "example",
        "open_instruct",
        "val_win_rate",
        "full",
        True,
    )
    assert t.epoch_grid == [5, 7, 10, 15, 20] and not t.freeze_embeddings and t.overlong == "truncate"
    assert cfg.run.rank.max_length == 1024
    if name in PAPER:
        lr, epochs = PAPER[name]
        assert t.learning_rate == lr and t.epochs_by_variant == epochs
        assert cfg.run.seeds == [1, 2, 3, 4, 5]
        assert cfg.run.eval.reference == "instruction"
