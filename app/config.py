"""The experiment config: one YAML file, assembled from each room's config and validated by pydantic.

Unknown keys and wrong types are errors (``extra="forbid"``): a misspelt hyperparameter that
silently falls back to a default would produce a different experiment than the one written
down. Errors name the file and the dotted field path. Relative data paths are resolved against
the current working directory (run ``iit`` from the repository root for the shipped configs).

Validation happens in two layers. The schema (:func:`parse_config`) checks every value on its own, with no file
system: types, finite positive numbers (``inf``/``nan`` are refused everywhere), layer and vocabulary specs, device
strings, distinct seeds and epoch counts, and a ``name`` that is one safe path component. :func:`check_config` then
checks what needs the machine: every data file the run reads exists (and is a file), the model spec resolves (a hub
id is only checked for syntax) and a rule-constants file parses. ``iit config validate`` and ``iit run`` run both,
and the study plan, before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from implicit_it.analyses.config import RunDiffConfig, RunMechConfig
from implicit_it.config import (
    MAX_SEED,
    ModelConfig,
    PathText,
    RunGenerateConfig,
    StrictConfig,
    apply_overrides,
    check_run_name,
    check_variant_name,
    format_validation_error,
)
from implicit_it.errors import ConfigError
from implicit_it.evaluation.config import RunEvalConfig
from implicit_it.formats import FORMATS
from implicit_it.probes.config import RunProbeConfig, RunRankConfig, RunTemplateConfig
from implicit_it.training.config import DataConfig, TrainingConfig


class RunConfig(StrictConfig):
    """What ``iit run`` does after training: one block per stage."""

    seeds: list[int] | None = Field(default=None, description="distinct training seeds (None: [seed]); `iit run --seeds 1..5` overrides")
    seeds_by_variant: dict[str, list[int]] = Field(
        default_factory=dict,
        description=(
            "Seeds for named variants instead of `seeds` (variant name -> seeds), e.g. {response: [0, 1, 2]}: three training"
            " runs of the variant you can afford most. Every seed is trained, generated and evaluated; the analyses (rank, "
            "probe, diff, mech) read the seeds the variant shares with `seeds`, else its first."
        ),
    )
    accelerate_config: PathText | None = Field(
        default=None,
        description=(
            "Multi-GPU training (7B): each training step runs as `accelerate launch --config_file FILE [ARGS] -m implicit_it "
            "train ...` in a subprocess; the other stages run in this process (set model.device_map: auto for models beyond "
            "one GPU)."
        ),
    )
    accelerate_args: list[str] = Field(default_factory=list, description='e.g. [--num_processes, "8"]')
    generate: RunGenerateConfig = Field(default_factory=RunGenerateConfig)
    rank: RunRankConfig = Field(default_factory=RunRankConfig)
    probe: RunProbeConfig = Field(default_factory=RunProbeConfig)
    template: RunTemplateConfig = Field(default_factory=RunTemplateConfig)
    diff: RunDiffConfig = Field(default_factory=RunDiffConfig)
    mech: RunMechConfig = Field(default_factory=RunMechConfig)
    eval: RunEvalConfig = Field(default_factory=RunEvalConfig)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one seed (or leave it out: the config's seed)")
        bad = [s for s in v if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must be integers from 0 to {MAX_SEED}, got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v} (each seed is one training run)")
        return v

    @field_validator("seeds_by_variant")
    @classmethod
    def _variant_seeds(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, seeds in v.items():
            check_variant_name(name)
            try:
                cls._distinct_seeds(seeds)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _judge_needs_instructions(self) -> "RunConfig":
        if self.eval.judge is not None and self.generate.instructions is None:
            raise ValueError("eval.judge is set but generate.instructions is not: name the instruction set the judge compares on")
        return self


class ExperimentConfig(StrictConfig):
    """One experiment: a base model, its data, and how each stage runs."""

    name: str = Field(description="the study's name: one path component (runs/study/<name>)")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    format: str = "tulu"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    notes: str = ""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_run_name(v)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown chat format {v!r}; choose one of {sorted(FORMATS)}")
        return v


def parse_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a YAML config (with ``overrides``, see :func:`apply_overrides`); errors name the file, line
    (YAML syntax) or field."""
    from implicit_it.errors import DataFormatError
    from implicit_it.io import read_input_bytes

    path = Path(path)
    try:
        text = read_input_bytes(path).decode("utf-8")
    except DataFormatError as exc:
        raise ConfigError(f"{path}: {'config file not found' if exc.problem == 'file not found' else exc.problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
        apply_overrides(data, overrides)
    return parse_config(data, f"{path} (with {' '.join(overrides)})" if overrides else str(path))


def _file_problem(field: str, path: str, hint: str = "") -> str | None:
    """``field: path: ...`` when ``path`` is not a readable file, else None."""
    from implicit_it.io import input_file_problem

    what = input_file_problem(Path(path).expanduser())
    return None if what is None else f"{field}: {path}: {what}{hint}"


def config_paths(cfg: ExperimentConfig) -> dict[str, str]:
    """Every local file the study reads, by field (``hub:`` sources and unused stages left out)."""
    run, d = cfg.run, cfg.data
    paths: dict[str, str] = {}
    if cfg.training.variants:
        paths["data.train"] = d.train
        if "single_task" in cfg.training.variants:
            for task in cfg.training.single_task_sources:
                if task in d.single_task:
                    paths[f"data.single_task.{task}"] = d.single_task[task]
    if d.validation is not None:
        paths["data.validation"] = d.validation
    if run.generate.instructions is not None:
        paths["run.generate.instructions"] = run.generate.instructions
    if run.rank.enabled:
        paths["run.rank.data"] = run.rank.data
    if run.probe.enabled:
        paths["run.probe.data"] = run.probe.data
    if run.template.enabled and run.template.embedder is not None:
        paths |= {f"run.template.{name}": path for name, path in run.template.references().items()}
    if run.diff.enabled and cfg.training.variants:
        paths["run.diff.data"] = run.diff.data
        if run.diff.rules_config is not None:
            paths["run.diff.rules_config"] = run.diff.rules_config
    if run.eval.ifeval:
        paths["run.eval.ifeval_data"] = run.eval.ifeval_data
    if run.accelerate_config is not None:
        paths["run.accelerate_config"] = run.accelerate_config
    return {field: path for field, path in paths.items() if not path.startswith("hub:")}


PATH_HINTS = {"run.eval.ifeval_data": " (IFEval's input_data.jsonl, or hub:ifeval; run.eval.ifeval: false switches IFEval off)"}


def _layer_problems(cfg: ExperimentConfig, depth: int | None) -> list[str]:
    """Every enabled stage's layer spec against the model's depth (0 = embeddings .. L), so that ``0-99`` is refused
    now and not at the rank step after training and generation. Nothing to check when the depth is unknown (a hub id)."""
    from implicit_it.lens import parse_layers

    if depth is None:
        return []
    problems = []
    for stage, names in {"rank": ("layers",), "probe": ("layers",), "diff": ("layers",), "mech": ("layers", "blocks")}.items():
        block = getattr(cfg.run, stage)
        for name in names if block.enabled else ():
            spec = getattr(block, name)
            if spec is None:
                continue
            try:
                parse_layers(spec, depth)
            except ValueError as exc:
                problems.append(f"run.{stage}.{name}: {spec!r}: {exc} (model.spec {cfg.model.spec!r})")
    return problems


def check_config(cfg: ExperimentConfig, source: str = "<config>") -> list[str]:
    """What the schema cannot check without the machine: every data file the study reads exists and is a file, the
    model spec resolves (nothing is loaded; a hub id is checked for syntax only) and a rule-constants file parses.
    Raises one :class:`ConfigError` listing every problem (each naming its field); returns notes about what was
    not checked."""
    from implicit_it.errors import ModelSpecError
    from implicit_it.models import hub_offline, model_depth, resolve_model_spec

    problems = [p for field, path in config_paths(cfg).items() if (p := _file_problem(field, path, PATH_HINTS.get(field, "")))]
    if cfg.run.eval.lc_data is not None and not Path(cfg.run.eval.lc_data).expanduser().is_dir():
        problems.append(f"run.eval.lc_data: {cfg.run.eval.lc_data}: directory not found")
    if "run.diff.rules_config" in config_paths(cfg) and not any(p.startswith("run.diff.rules_config:") for p in problems):
        from implicit_it.rules import load_rule_config

        try:
            load_rule_config(cfg.run.diff.rules_config or "")
        except ConfigError as exc:
            problems.append(f"run.diff.rules_config: {exc}")
    notes = []
    try:
        model = resolve_model_spec(cfg.model.spec)
        if model.kind == "hub":
            offline = " (HF_HUB_OFFLINE is set: it must be in the local HF cache)" if hub_offline() else ""
            notes.append(f"model.spec {cfg.model.spec!r} is a hub id: its syntax was checked, not the hub{offline}")
        problems += _layer_problems(cfg, model_depth(model))
    except (ModelSpecError, OSError) as exc:
        problems.append(f"model.spec: {exc}")
    if problems:
        s = "s" if len(problems) > 1 else ""
        raise ConfigError("\n".join([f"{source}: invalid config ({len(problems)} problem{s})", *(f"  {p}" for p in problems)]))
    return notes
