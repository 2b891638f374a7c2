"""One config surface: the stage commands' options come from the stage configs; one error path for user errors."""

from __future__ import annotations

import typing

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from implicit_it.analyses.config import DiffConfig, MechConfig, RunDiffConfig, RunMechConfig
from implicit_it.app.cli.common import user_errors
from implicit_it.app.cli.main import app
from implicit_it.app.cli.options import PREFIX, build_config, field_options, kebab, stage_options
from implicit_it.config import GenerateConfig, IfsuiteGenerateConfig, InstructionsGenerateConfig, RunGenerateConfig
from implicit_it.errors import ConfigError
from implicit_it.evaluation.config import IfevalCommandConfig, IfevalConfig, JudgeConfig, RunEvalConfig
from implicit_it.probes.config import ProbeConfig, RankConfig, RunProbeConfig, RunRankConfig, TemplateConfig

runner = CliRunner()
STAGES = {
    "rank": RankConfig,
    "probe linear": ProbeConfig,
    "probe template": TemplateConfig,
    "diff": DiffConfig,
    "mech": MechConfig,
    "generate": InstructionsGenerateConfig,
    "eval ifeval": IfevalCommandConfig,
    "eval ifsuite": IfsuiteGenerateConfig,
    "eval alpaca": JudgeConfig,
}


def _command(path: str):
    command = typer.main.get_command(app)
    for part in path.split():
        command = command.commands[part]
    return command


@pytest.mark.parametrize("command", sorted(STAGES))
def test_every_stage_field_is_an_option_with_the_configs_default(command):
    model = STAGES[command]
    params = {p.name: p for p in _command(command).params}
    options = field_options(model)
    nested = {
        n
        for n, f in model.model_fields.items()
        if (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)) or typing.get_origin(f.annotation) is dict
    }
    assert set(options) == set(model.model_fields) - nested  # only a nested block or a mapping is left to --set / --config
    for name, opt in options.items():
        param = params[PREFIX + name]
        assert kebab(name) in param.opts, (command, name, param.opts)
        default = model.model_fields[name].get_default(call_default_factory=True)
        shown = opt.convert(param.default) if param.default is not None else None
        assert model.model_validate({name: shown} if shown is not None else {}).model_dump()[name] == default, (command, name)
    assert "--config" in params[PREFIX + "config_file"].opts and "--set" in params[PREFIX + "sets"].opts


def test_run_blocks_are_the_stage_configs_plus_pipeline_fields():
    for run_block, stage in (
        (RunRankConfig, RankConfig),
        (RunProbeConfig, ProbeConfig),
        (RunDiffConfig, DiffConfig),
        (RunMechConfig, MechConfig),
    ):
        assert issubclass(run_block, stage)
        assert set(run_block.model_fields) - set(stage.model_fields) <= {"enabled", "systems"}
    assert issubclass(RunGenerateConfig, GenerateConfig)  # plus the study's prompt sets, per-system caps and rule sets
    # one definition of which prompts are scored, shared by the study's blocks and the eval commands
    assert (
        issubclass(RunGenerateConfig, IfsuiteGenerateConfig)
        and issubclass(RunGenerateConfig, InstructionsGenerateConfig)
        and issubclass(RunEvalConfig, IfevalConfig)
        and issubclass(RunEvalConfig, JudgeConfig)
    )
    for stage in set(STAGES.values()):
        assert all(stage.model_fields[n].description for n in stage.model_fields), stage.__name__


def _probe_app():
    seen = {}
    probe_app = typer.Typer()

    @probe_app.command()
    @user_errors
    @stage_options(RankConfig, short={"data": "-d"})
    def rank(cfg: RankConfig, seed: int = typer.Option(0, "--seed")) -> None:
        seen["cfg"], seen["seed"] = cfg, seed

    @probe_app.command()
    def other() -> None:  # a second command keeps `rank` a subcommand
        pass

    return probe_app, seen


def test_set_config_file_and_options_in_order(tmp_path):
    probe_app, seen = _probe_app()
    block = tmp_path / "rank.yaml"
    block.write_text("instructions: 20\nnegatives: 3\nlayers: all\n")
    res = runner.invoke(probe_app, ["rank", "--config", str(block), "--negatives", "4", "--set", "max_length=256", "--set", "layers=null"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.instructions, cfg.negatives, cfg.max_length, cfg.layers) == (20, 4, 256, None)
    res = runner.invoke(probe_app, ["rank", "--instructions", "9", "--layers", "none", "-d", "x.json"])
    assert res.exit_code == 0 and (seen["cfg"].instructions, seen["cfg"].layers, seen["cfg"].data) == (9, None, "x.json")
    res = runner.invoke(probe_app, ["rank"])
    assert res.exit_code == 0 and seen["cfg"] == RankConfig()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "negativs=3"], "--set negativs: unknown key"),
        (["--set", "negatives"], "expected KEY=VALUE"),
        (["--set", "negatives=0"], "--negatives (negatives): Input should be greater than 0"),
        (["--self-draws", "maybe"], "--self-draws"),
        (["--instructions", "1"], "--instructions"),
    ],
)
def test_bad_values_are_one_error_naming_the_field(args, needle):
    probe_app, _ = _probe_app()
    res = runner.invoke(probe_app, ["rank", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.count("error:") == 1 and len(res.output.strip().splitlines()) == 1, res.output


def test_unknown_key_in_stage_file(tmp_path):
    block = tmp_path / "rank.yaml"
    block.write_text("instructions: 20\nnegativs: 3\n")
    with pytest.raises(ConfigError, match="negativs"):
        build_config(RankConfig, file=block)


def test_user_errors_print_one_line_with_markup_escaped_and_exit_2(tmp_path):
    err_app = typer.Typer()

    @err_app.command()
    @user_errors
    def missing(path: str) -> None:
        open(path, encoding="utf-8")  # noqa: SIM115 - FileNotFoundError from the user's path

    @err_app.command()
    @user_errors
    def bug() -> None:
        raise KeyError("an internal bug")

    path = str(tmp_path / "[red]x[/red].yaml")
    res = runner.invoke(err_app, ["missing", path])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {path}: No such file or directory"
    res = runner.invoke(err_app, ["bug"])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)  # a bug keeps its exception (and traceback)


def test_config_error_path_with_markup_prints_literally(tmp_path):
    bad = tmp_path / "[bold]c.yaml"  # rich would swallow the tag
    bad.write_text("name: x\ntraining:\n  overlong: chop\n  save_steps: 0\n")
    res = runner.invoke(app, ["config", "validate", str(bad)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert str(bad) in res.output and "training.overlong" in res.output and "training.save_steps" in res.output


def test_verbose_keeps_the_traceback_of_a_user_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    res = runner.invoke(app, ["config", "validate", str(missing)])
    assert res.exit_code == 2 and res.exception is not None and isinstance(res.exception, SystemExit)
    res = runner.invoke(app, ["-v", "config", "validate", str(missing)])
    assert res.exit_code == 1 and isinstance(res.exception, ConfigError)


# --- commands that read a whole experiment config: every field of a block is an option ------------------------------


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_take_every_training_field_as_an_option(command):
    from implicit_it.training.config import TrainingConfig

    params = {p.name: p for p in _command(command).params}
    for name in field_options(TrainingConfig):
        if name == "variants":  # `--variant` picks among them
            assert PREFIX + name not in params
            continue
        assert kebab(name) in params[PREFIX + name].opts and params[PREFIX + name].default is None, (command, name)


def test_block_options_turn_the_options_given_into_overrides_of_their_fields():
    from implicit_it.app.cli.options import block_options
    from implicit_it.training.config import TrainingConfig

    seen = {}
    block_app = typer.Typer()

    @block_app.command()
    @block_options({"training": TrainingConfig})
    def train(overrides: list[str], name: str = typer.Option("x", "--name")) -> None:
        seen["overrides"], seen["name"] = overrides, name

    @block_app.command()
    def other() -> None:
        pass

    res = runner.invoke(block_app, ["train", "--epochs", "2", "--epoch-grid", "1,3", "--no-bf16", "--max-steps", "none", "--name", "y"])
    assert res.exit_code == 0, res.output
    assert sorted(seen["overrides"]) == sorted(
        ["training.epochs=2.0", 'training.epoch_grid=["1", "3"]', "training.bf16=false", "training.max_steps=null"]
    )
    assert seen["name"] == "y"
    runner.invoke(block_app, ["train"])
    assert seen["overrides"] == []  # nothing given: the config's values stand
    with pytest.raises(TypeError, match="clashes"):  # a field named like one of the command's own options

        @block_options({"training": TrainingConfig})
        def clash(overrides: list[str], epochs: int = 1) -> None:
            pass
