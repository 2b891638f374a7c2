"""A run is recognised by what the tool wrote into it, not by a file's name (issue 34).

Before the fix: ``--overwrite`` took any ``pending.json`` as proof that a folder was a run (a folder holding
``thesis.tex`` and ``pending.json`` containing ``{}`` was wiped); ``iit report`` globbed every ``step.json`` below the
run, so a run nested inside another (``iit run -o runs/A/generate``) counted every row twice, as two seeds; a stale
sidecar manifest left by a kill between ``outputs.json`` and its ``.manifest.json`` gave another run's EOS flags; and a
killed atomic write left ``*.tmp`` litter in step folders for good.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.app.config import parse_config
from implicit_it.app.pipeline.steps import NotAStepDirectory, Step
from implicit_it.training import Variant, train_variant
from tests.reliability.runs import train_config_dict


@pytest.fixture
def thesis(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\chapter{Results}\n")
    return folder


@pytest.mark.parametrize(
    "forged", ["{}", '{"key": "x", "step": "train/response.s0"}', '{"key": "0123456789abcdef", "step": "train/other"}']
)
def test_overwrite_does_not_take_a_file_called_pending_json_as_proof_of_a_run(thesis, tiny_llama_dir, shared_data, monkeypatch, forged):
    import implicit_it.training.engine as engine

    monkeypatch.setattr(engine, "_prepare_model", lambda *a: pytest.fail("got as far as loading the model"))
    (thesis / "pending.json").write_text(forged)
    cfg = parse_config(train_config_dict(tiny_llama_dir, shared_data))
    with pytest.raises(ValueError, match=r"not an implicit-it training run .*thesis\.tex"):
        train_variant(cfg, Variant("response"), out_dir=thesis, overwrite=True, show_progress=False)
    assert (thesis / "thesis.tex").read_text() == "\\chapter{Results}\n"


def test_a_step_folder_is_deleted_only_on_its_own_record(tmp_path):
    step = Step("eval", "x", {"v": 2}, lambda s: {}, tmp_path / "run" / "eval" / "x")
    step.dir.mkdir(parents=True)
    (step.dir / "thesis.tex").write_text("mine")
    (step.dir / "pending.json").write_text("{}")
    with pytest.raises(NotAStepDirectory, match=r"thesis\.tex"):
        step.begin()
    other = Step("eval", "y", {"v": 1}, lambda s: {}, tmp_path / "run" / "eval" / "y")
    other.begin()  # a real record, but of another step: copied in, it proves nothing about this folder
    shutil.copy(other.dir / "pending.json", step.dir / "pending.json")
    with pytest.raises(NotAStepDirectory):
        step.begin()
    assert (step.dir / "thesis.tex").read_text() == "mine"

    stale = Step("eval", "x", {"v": 1}, lambda s: {}, step.dir)  # this step under an earlier config: its folder is ours
    (step.dir / "thesis.tex").unlink()
    (step.dir / "pending.json").unlink()
    stale.begin()
    stale.finish({}, 0.0)
    assert step.begin() is False


def _copy_run(tiny_study, tmp_path):
    _, run_dir, _ = tiny_study
    copy = tmp_path / "A"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors", ".iit.lock"))
    return copy


def test_a_run_nested_inside_another_is_not_counted_twice(tiny_study, tmp_path):
    from implicit_it.reports.collect import read_run
    from implicit_it.reports.sections import headline

    outer = _copy_run(tiny_study, tmp_path)
    alone = read_run(outer)
    shutil.copytree(outer, tmp_path / "nested")
    shutil.move(tmp_path / "nested", outer / "generate" / "nested")  # `iit run -o runs/A/generate/nested`
    shutil.copytree(outer / "generate" / "nested", tmp_path / "B" / "generate")  # `iit run -o runs/B/generate`, no outer manifest
    (tmp_path / "B" / "generate" / "manifest.json").unlink()
    nested = read_run(outer)
    assert [(s.stage, s.name) for s in nested.steps] == [(s.stage, s.name) for s in alone.steps]
    assert nested.seeds == alone.seeds and headline(nested) == headline(alone)
    with pytest.raises(Exception, match="no finished steps"):
        read_run(tmp_path / "B")  # only steps nested one level too deep: none is this folder's own


def test_a_stale_sidecar_never_lends_its_eos_flags_to_new_outputs(tmp_path):
    from implicit_it.evaluation import read_model_outputs
    from implicit_it.generation import write_outputs
    from implicit_it.manifest import build_manifest, write_manifest

    out = tmp_path / "o.json"
    records = [{"instruction": "Name a colour.", "output": "Red.", "generator": "m", "dataset": ""}]
    write_outputs(out, records)  # an earlier `--rules all` run: every response ended with EOS
    write_manifest(out, build_manifest(command="iit generate", config={}, seed=None, results={"per_record": [{"ended_with_eos": True}]}))
    assert read_model_outputs(out)[0].ended_with_eos is True

    stale = (tmp_path / "o.manifest.json").read_text()
    write_outputs(out, [dict(records[0], output="Red, and then it went on without end")])
    assert not (tmp_path / "o.manifest.json").exists()  # the old sidecar goes before the new outputs are written
    (tmp_path / "o.manifest.json").write_text(stale)  # ... and one put back (or left by an older version) is not believed
    assert read_model_outputs(out)[0].ended_with_eos is None


def test_eval_behaviour_reports_unknown_eos_not_another_runs(tmp_path):
    from implicit_it.generation import write_outputs
    from implicit_it.manifest import build_manifest, write_manifest

    out = tmp_path / "o.json"
    rec = {"instruction": "Name a colour.", "output": "Red.", "generator": "m", "dataset": ""}
    write_outputs(out, [rec])
    write_manifest(out, build_manifest(command="iit generate", config={}, seed=None, results={"per_record": [{"ended_with_eos": True}]}))
    stale = (tmp_path / "o.manifest.json").read_text()
    write_outputs(out, [dict(rec, output="Red red red red")])  # killed here, before the new sidecar
    (tmp_path / "o.manifest.json").write_text(stale)
    res = CliRunner().invoke(app, ["eval", "behaviour", "--outputs", str(out), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "EOS unknown" in res.output  # before the fix: "EOS 100.0%", the earlier run's flags
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["results"]["eos_fraction"] is None


def test_temp_files_of_a_killed_write_are_swept_by_the_next_run(tiny_study, tmp_path):
    from implicit_it.app.pipeline import run_study

    cfg, _, _ = tiny_study
    run = tmp_path / "A"
    shutil.copytree(tiny_study[1], run)
    step_dir = next(p.parent for p in sorted(run.glob("eval/*/*/step.json")))
    litter = []
    for prefix, suffix in ((".outputs.json.", ".tmp"), (".step.json.", ".tmp"), (".iit-write-check.", "")):
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=step_dir)  # what a SIGKILL mid-write leaves
        litter.append(path)
    mine = step_dir / "notes.tmp"
    mine.write_text("not ours")
    outcome = run_study(cfg, run, show_progress=False)
    assert set(outcome.statuses.values()) == {"cached"}
    assert not [p for p in litter if os.path.exists(p)] and mine.read_text() == "not ours"
