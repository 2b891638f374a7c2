"""``iit probe template`` writes its result and manifest; ``iit probe`` without a subcommand is still the linear probe."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from implicit_it.app.cli import app

runner = CliRunner()


def test_probe_template_writes_result_and_manifest(tmp_path, tiny_llama_dir):
    out = tmp_path / "t"
    args = ["probe", "template", "-m", str(tiny_llama_dir), "--n", "4", "--max-new-tokens", "6", "--seed", "3", "--out", str(out), "-q"]
    res = runner.invoke(app, [*args, "--embedder", "none", "--lima", "none", "--alpaca-eval", "none"])
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "template.json").read_text())["results"][0]
    assert entry["n"] == 4 and entry["seed"] == 3 and entry["prefix"] == "<|user|>\n" and len(entry["samples"]) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["config"]["n"] == 4 and "samples" not in manifest["results"]["template"][0]


def test_probe_template_refuses_a_format_without_user_tag(tmp_path, tiny_llama_dir):
    res = runner.invoke(app, ["probe", "template", "-m", str(tiny_llama_dir), "-f", "raw", "--out", str(tmp_path / "t")])
    assert res.exit_code != 0 and "no user tag" in res.output


def test_probe_without_subcommand_is_the_linear_probe():
    res = runner.invoke(app, ["probe", "--model", "x", "--help"])
    assert res.exit_code == 0 and "--pools" in res.output
