"""Nothing of the user's is deleted (issue 19, case 2).

Before the fix ``iit train --overwrite --out ~/notes`` removed the whole folder (the user's notes.txt
included) before the model even loaded; a pipeline step whose directory held files of the user's
(no ``step.json`` / ``pending.json``) was removed the same way; and a finished training run removed
all of ``checkpoints/``, not just the ``checkpoint-N`` folders it wrote there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.app.config import parse_config
from implicit_it.app.pipeline.steps import PENDING_FILE, STEP_FILE, NotAStepDirectory, Step
from implicit_it.training import Variant, train_variant
from tests.reliability.runs import train_config_dict


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("notes.txt", "ideas.md", "results.csv", "todo.txt"):
        (folder / name).write_text(f"the user's {name}\n")
    (folder / "drafts").mkdir()
    return folder


def test_overwrite_refuses_a_folder_that_is_not_a_run(notes, tiny_llama_dir, shared_data, monkeypatch):
    import implicit_it.training.engine as engine

    monkeypatch.setattr(engine, "_prepare_model", lambda *a: pytest.fail("got as far as loading the model"))
    before = sorted(p.name for p in notes.iterdir())
    cfg = parse_config(train_config_dict(tiny_llama_dir, shared_data))
    with pytest.raises(ValueError, match=r"not an implicit-it training run .* it holds drafts, ideas\.md, notes\.txt and 2 more"):
        train_variant(cfg, Variant("response"), out_dir=notes, overwrite=True, show_progress=False)
    assert sorted(p.name for p in notes.iterdir()) == before


def test_the_cli_says_why_in_one_line(notes, tiny_llama_dir, shared_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(train_config_dict(tiny_llama_dir, shared_data)))
    res = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(notes), "--overwrite", "-q"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "will not delete it" in errors[0] and "notes.txt" in errors[0]
    assert (notes / "notes.txt").read_text() == "the user's notes.txt\n"


def test_overwrite_replaces_an_earlier_run_and_a_run_keeps_other_files_under_checkpoints(tiny_llama_dir, shared_data, tmp_path):
    cfg = parse_config(train_config_dict(tiny_llama_dir, shared_data, max_steps=2))
    earlier = tmp_path / "earlier"
    (earlier / "checkpoints" / "checkpoint-7").mkdir(parents=True)
    (earlier / "checkpoints" / "checkpoint-7" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    (earlier / "train_manifest.json").write_text(json.dumps({"command": "iit train", "results": {"optimizer_steps": 7}}))
    (earlier / "stale-shard.safetensors").write_bytes(b"old")
    res = train_variant(cfg, Variant("response"), out_dir=earlier, overwrite=True, show_progress=False)
    assert res.results["optimizer_steps"] == 2 and not (earlier / "stale-shard.safetensors").exists()

    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "checkpoints" / "README.txt").write_text("mine")
    train_variant(cfg, Variant("response"), out_dir=fresh, show_progress=False)
    assert [p.name for p in (fresh / "checkpoints").iterdir()] == ["README.txt"]  # our checkpoint-N folders went, the rest stays


def _step(tmp_path, key_config):
    return Step("eval", "x", key_config, lambda step: {}, tmp_path / "run" / "eval" / "x")


def test_a_step_deletes_only_a_directory_a_step_wrote(tmp_path):
    step = _step(tmp_path, {"v": 2})
    step.dir.mkdir(parents=True)
    (step.dir / "analysis.ipynb").write_text("{}")
    with pytest.raises(NotAStepDirectory, match=r"analysis\.ipynb"):
        step.begin()
    assert (step.dir / "analysis.ipynb").is_file()

    stale = _step(tmp_path, {"v": 1})  # the same step under an earlier config: its directory is ours to replace
    (step.dir / "analysis.ipynb").unlink()
    stale.begin()
    stale.finish({"n": 1}, 1.0)
    (stale.dir / "result.json").write_text("{}")
    assert step.begin() is False
    assert sorted(p.name for p in step.dir.iterdir()) == [PENDING_FILE] and not (step.dir / STEP_FILE).exists()


def test_the_probe_removes_only_its_activation_shards(tmp_path):
    """`iit probe --out DIR` caches shards in DIR/activations and removes them after: a user's own files there stay."""
    from implicit_it.probes.linear import ActivationStore

    root = tmp_path / "activations"
    store = ActivationStore(root, [0, 1])
    store.append("mean", np.zeros((2, 2, 3), dtype=np.float32))
    (root / "notes.txt").write_text("mine")
    ActivationStore.remove(root)
    assert not (root / "mean").exists() and (root / "notes.txt").read_text() == "mine"
    store = ActivationStore(tmp_path / "only_shards", [0])
    store.append("last", np.zeros((1, 1, 3), dtype=np.float32))
    ActivationStore.remove(tmp_path / "only_shards")
    assert not (tmp_path / "only_shards").exists()
