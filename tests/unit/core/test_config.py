"""Configs: the shipped ones validate; mistakes are errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from implicit_it.app.config import load_config
from implicit_it.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.name and cfg.training.effective_batch_size % cfg.training.per_device_batch_size == 0


def test_paper_hyperparameters():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    assert by_name["llama2-7b"].training.learning_rate == 1e-5
    assert by_name["olmo-7b"].training.learning_rate == 3e-6
    for name in ("llama2-7b", "olmo-7b"):
        t = by_name[name].training
        assert (t.effective_batch_size, t.max_length, t.bf16, t.epoch_grid) == (64, 2048, True, [5, 7, 10, 15, 20])
    assert by_name["demo"].model.spec == "gemma-3-270m"
    paper_gemma = by_name["gemma3-270m-paper"].training
    assert (paper_gemma.effective_batch_size, paper_gemma.max_length, paper_gemma.bf16) == (64, 2048, True)
    for cfg in by_name.values():  # every shipped config can be swept: a validation set or a held-out split
        assert cfg.data.validation or cfg.data.heldout_examples > 0


def test_training_options_are_validated(tmp_path):
    p = _write(tmp_path, "name: x\ntraining:\n  overlong: chop\n  save_steps: 0\n  max_steps: -1\n")
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert "training.overlong" in msg and "training.save_steps" in msg and "training.max_steps" in msg


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_field(tmp_path):
    p = _write(tmp_path, "name: x\ntraining:\n  learning_rte: 1.0e-5\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and "training.learning_rte: unknown key" in str(err.value)


def test_wrong_type_and_value(tmp_path):
    p = _write(tmp_path, "name: x\nrun:\n  generate:\n    batch_size: many\nformat: chatml\n")
    msg = str(pytest.raises(ConfigError, load_config, p).value)
    assert "run.generate.batch_size" in msg and "format" in msg and "2 problems" in msg


def test_batch_divisibility(tmp_path):
    p = _write(tmp_path, "name: x\ntraining:\n  effective_batch_size: 10\n  per_device_batch_size: 4\n")
    assert "multiple of per_device_batch_size" in str(pytest.raises(ConfigError, load_config, p).value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = _write(tmp_path, "name: x\nmodel:\n  spec: [unclosed\n")
    assert str(pytest.raises(ConfigError, load_config, p).value).startswith(f"{p}:")


def test_missing_name_and_not_mapping(tmp_path):
    assert "name: Field required" in str(pytest.raises(ConfigError, load_config, _write(tmp_path, "seed: 1\n")).value)
    assert "must be a YAML mapping" in str(pytest.raises(ConfigError, load_config, _write(tmp_path, "- a\n")).value)


def test_rule_family_defaults_to_frequent_tokens():
    """With vocab 'all' the fitted family has a free constant per token (262k for Gemma) and its R² mostly measures a
    static per-token bias; every entry point defaults to the 2,048 most frequent tokens instead."""
    import inspect

    from implicit_it.analyses import LayerDiff, RuleComparison
    from implicit_it.analyses.config import RunDiffConfig

    assert RunDiffConfig().vocab == "frequent:2048"
    for cls in (LayerDiff, RuleComparison):
        assert inspect.signature(cls).parameters["vocab"].default == "frequent:2048", cls.__name__


def test_set_overrides_dotted_keys_and_names_bad_ones(tmp_path):
    """``iit run --set run.mech.enabled=true``: a dotted key sets one field (value read as YAML); the validation names
    an unknown key; a key through a non-mapping or without '=' is one error."""
    path = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
    cfg = load_config(path, ["run.mech.enabled=true", "run.mech.alphas=[1, 2]", "seed=3"])
    assert cfg.run.mech.enabled and cfg.run.mech.alphas == [1.0, 2.0] and cfg.seed == 3
    assert not load_config(path).run.mech.enabled
    with pytest.raises(ConfigError, match=r"(?s)with run.mech.bogus=1.*run\.mech\.bogus: unknown key"):
        load_config(path, ["run.mech.bogus=1"])
    with pytest.raises(ConfigError, match="seed is not a mapping"):
        load_config(path, ["seed.x=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["run.mech.enabled"])
