"""The study as a list of steps: train → generate → rank/probe → diff → mech → eval → report.

``plan_study`` turns one experiment config into steps, each keyed by its config and inputs
(:mod:`.steps`). Every system the study compares gets a name used throughout the run:

* ``base``: the config's base model;
* ``<variant>.s<seed>`` (``response.s0``, ``single_task-gsm.s1``): a trained variant;
* ``rules``, ``rules-no_eos``, ...: the base combined with the paper's rule adapter (all three
  rules, or one removed: the paper's Table 4 ablations).

AlpacaEval pairs systems as the paper does: seed s of a variant against seed s of the reference
(``run.eval.reference``, the instruction-tuned variant), and the seedless base and rule adapter
against every seed of the reference (``eval/alpaca/rules/vs-instruction.s1``, ...), so the report
gives mean ± std over those pairs. Each system generates up to its own cap:
``run.generate.max_new_tokens_by_system`` (by label), else ``run.generate.max_new_tokens``.

IFEval (``run.eval.ifeval``) is generated and scored like the judge-free suite (``generate/ifeval/<system>``,
``eval/ifeval/<system>``). The reference systems ``reference-constant``, ``reference-echo`` and ``reference-empty``
(:data:`implicit_it.evaluation.ifeval.REFERENCE_SYSTEMS`) generate nothing: they are scored on both prompt sets
(``eval/ifeval/reference-echo``, ``eval/ifsuite/reference-echo``) to show what each metric gives for free.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from implicit_it.analyses.config import DiffConfig, MechConfig
from implicit_it.app.config import ExperimentConfig, check_config
from implicit_it.config import MAX_SEED, RULE_SETS
from implicit_it.errors import ConfigError, UserError
from implicit_it.io import atomic_write_json
from implicit_it.lists import parse_list
from implicit_it.probes.config import ProbeConfig, RankConfig, TemplateConfig
from implicit_it.rules import rule_constants_key

from .steps import Step

REPORT_FORMAT = 3  # bump when the report's layout changes, so that a re-run renders it again
IFSUITE = "ifsuite"
IFEVAL = "ifeval"
ALPACA = "alpaca"
IFEVAL_SUBSET_SEED = 0  # one fixed stratified draw of run.eval.ifeval_prompts: every run and config scores the same subset
REFERENCE = "reference-"  # prefix of the reference systems' names (reference-constant, ...)


@dataclass(frozen=True)
class System:
    """A model the study generates with and compares."""

    name: str
    kind: str  # base | variant | rules | proxy
    label: str  # what tables call it: base, response, rules-no_eos (no seed)
    seed: int | None = None
    rules: tuple[str, ...] = ()
    train: Step | None = None  # a proxy system's: its expert's (the variant's first seed)
    alpha: float | None = None  # proxy systems: base + alpha·(expert − base), implicit_it.proxy

    def meta(self) -> dict[str, Any]:
        return {"system": self.name, "kind": self.kind, "label": self.label, "seed": self.seed, "rules": list(self.rules)}


def validate_study(config: ExperimentConfig, *, seeds: list[int] | None = None, source: str = "<config>") -> list[str]:
    """The whole check ``iit config validate`` makes and ``iit run`` makes before step 1 (:meth:`StudyPlan.build`):
    data files, model spec, rule constants, judge syntax and the plan itself (systems, references), without running
    anything. Raises one :class:`ConfigError` naming the field; returns notes about what could not be checked."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="iit-validate-") as tmp:
        plan = StudyPlan(config, Path(tmp) / "run", seeds=seeds, show_progress=False)
        plan.build(source)
        return plan.notes


def rule_system_name(rule_set: str) -> str:
    return "rules" if rule_set == "all" else f"rules-{rule_set}"


def parse_seeds(text: str) -> list[int]:
    """``1..5`` (inclusive), ``0,1,2``, or ``3``."""
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split("..", 1))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        seeds = parse_list(text, int, what="--seeds")
    except ValueError:
        raise UserError(f"--seeds: expected e.g. 1..5 or 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s <= MAX_SEED for s in seeds):
        raise UserError(f"--seeds: expected distinct integers from 0 to {MAX_SEED}, got {text!r}")
    return seeds


# What training reads of ``data`` and ``training`` besides the per-variant fields (training/engine.py, training/variants.py):
# the epoch grid, the sweep metric, the variant list and other variants' epochs are read by other commands, not by a train step.
TRAIN_DATA_FIELDS = ("train", "max_train_examples", "heldout_examples", "validation", "strip_whitespace", "multi_turn")
TRAIN_EXCLUDED_FIELDS = {
    "variants",
    "single_task_sources",
    "epochs",
    "epochs_by_variant",
    "epoch_grid",
    "sweep_metric",
    "lora",
    "merge_lora",
    "report_to",  # where the loss is logged, not what is trained
}


def train_key_config(config: ExperimentConfig, variant: Any) -> dict[str, Any]:
    """Exactly the config one variant's training reads: its data source, its epochs, the training hyperparameters
    (LoRA's only with method lora). Editing anything else (another variant's epochs, the sweep grid) keeps the key."""
    from implicit_it.training import train_source

    d, t = config.data, config.training
    data = {k: getattr(d, k) for k in TRAIN_DATA_FIELDS}
    if variant.kind == "single_task":
        data["single_task"] = train_source(config, variant)
    if variant.kind == "delusive":
        data["delusive_seed"] = d.delusive_seed
    if variant.kind == "content_free":
        data["content_free_instruction"] = d.content_free_instruction
    training = t.model_dump(exclude=TRAIN_EXCLUDED_FIELDS) | {"epochs": t.epochs_for(variant.name)}
    if t.weights_dtype == "float32":  # the default keeps the keys of runs made before the field existed
        training.pop("weights_dtype")
    if t.method == "lora":
        training |= {"lora": t.lora.model_dump(), "merge_lora": t.merge_lora}
    return {"data": data, "training": training}


def stage_fields(block: Any, stage: type[BaseModel]) -> dict[str, Any]:
    """The fields of a ``run.<stage>`` block that the stage function reads (not ``enabled``, ``systems``)."""
    return block.model_dump(mode="json", include=set(stage.model_fields))


class StudyPlan:
    """Builds the steps of one study. Models are loaded inside steps, one at a time (the base stays cached)."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path,
        *,
        seeds: list[int] | None = None,
        show_progress: bool = True,
        command: str = "iit run",
    ):
        from implicit_it.training import config_variants

        self.config, self.run_dir, self.show_progress, self.command = config, Path(run_dir), show_progress, command
        self.seeds = seeds or config.run.seeds or [config.seed]
        try:
            self.variants = config_variants(config)
        except ValueError as exc:
            raise ConfigError(f"training.variants: {exc}") from None
        self.steps: list[Step] = []
        self.systems: list[System] = []
        self.notes: list[str] = []  # what validation could not check (a hub id offline), for the caller to show

    # -- building ---------------------------------------------------------------------------
    def validate(self, source: str = "<config>") -> list[str]:
        """Everything checkable before step 1 beyond the schema: data files, the model spec, the rule constants
        (:func:`check_config`), the judge's syntax, the diff analyses' names and that the run directory can be
        written. One :class:`ConfigError` naming the field; returns notes about what was not checked."""
        from implicit_it.paths import check_writable

        notes = check_config(self.config, source)
        run = self.config.run
        if run.generate.backend == "vllm":
            from implicit_it.engines import VLLM_EXTRA, vllm_version

            if vllm_version() is None:
                raise ConfigError(f"{source}: run.generate.backend: 'vllm' needs vLLM, which is not installed: {VLLM_EXTRA}")
        if run.eval.judge is not None:
            from implicit_it.evaluation import parse_judge

            try:
                parse_judge(run.eval.judge, run.eval.judge_model)
            except ValueError as exc:
                raise ConfigError(f"run.eval.judge: {exc}") from None
        if run.diff.enabled:
            from implicit_it.analyses import parse_analyses

            try:
                parse_analyses(",".join(run.diff.analyses))
            except ValueError as exc:
                raise ConfigError(f"run.diff.{exc}") from None
        if run.mech.enabled and self.config.training.variants:
            self._validate_mech()
        self._validate_ifeval()
        check_writable(self.run_dir, directory=True)
        return notes

    def _validate_ifeval(self) -> None:
        """Every IFEval file the run reads, parsed with its checkers' arguments (:func:`load_ifeval`): a wrong type
        (``num_words: "many"``) is one error naming the file and line now, not a TypeError after generation."""
        from implicit_it.analyses import behaviour_generates
        from implicit_it.errors import DataFormatError
        from implicit_it.evaluation import load_ifeval
        from implicit_it.evaluation.ifeval import HUB_IFEVAL

        run = self.config.run
        fields = {"run.eval.ifeval_data": run.eval.ifeval_data if run.eval.ifeval else None}
        if run.mech.enabled and self.config.training.variants and behaviour_generates(run.mech):
            fields["run.mech.behaviour_data"] = run.mech.behaviour_data
        for field, path in fields.items():
            if path is None or path == HUB_IFEVAL or not Path(path).expanduser().is_file():
                continue  # hub data is checked where it is read; a missing file was already named by check_config
            try:
                load_ifeval(Path(path).expanduser())
            except DataFormatError as exc:
                raise ConfigError(f"{field}: {exc}") from None

    def _validate_mech(self) -> None:
        """``run.mech``: its layer/block specs (:func:`~implicit_it.analyses.mech_runner_check`) and the files it reads."""
        from implicit_it.analyses import mech_data_files, mech_runner_check

        m = self.config.run.mech
        try:
            mech_runner_check(m)
        except ValueError as exc:
            raise ConfigError(f"run.mech.{exc}") from None
        for path in mech_data_files(m):
            field = "data" if path == m.data else "behaviour_data"
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"run.mech.{field}: {path}: file not found")

    def build(self, source: str = "<config>") -> list[Step]:
        """Validate the whole study (:meth:`validate`), then make its steps: a bad value anywhere is one
        :class:`ConfigError` naming the field, before any step runs."""
        self.notes = self.validate(source)
        try:
            return self._build()
        except ConfigError:
            raise
        except ValueError as exc:  # the plan's own checks (unknown systems, references) name their field
            raise ConfigError(str(exc)) from None

    def _build(self) -> list[Step]:
        run = self.config.run
        self.steps = []
        self.systems = [System("base", "base", "base")]
        unknown = sorted(set(run.seeds_by_variant) - {v.name for v in self.variants})
        if unknown:
            raise UserError(f"run.seeds_by_variant: {unknown} not among the study's variants {[v.name for v in self.variants]}")
        analysed: list[System] = []  # what rank, probe, diff and mech read: the plan's seeds, else the variant's first
        for variant in self.variants:
            seeds = run.seeds_by_variant.get(variant.name, self.seeds)
            shared = [s for s in seeds if s in self.seeds] or seeds[:1]
            for seed in seeds:
                train = self._train_step(variant, seed)
                system = System(f"{variant.name}.s{seed}", "variant", variant.name, seed, train=train)
                self.systems.append(system)
                if seed in shared:
                    analysed.append(system)
        for rule_set in run.generate.rule_sets:
            self.systems.append(System(rule_system_name(rule_set), "rules", rule_system_name(rule_set), rules=RULE_SETS[rule_set]))
        self.systems += [self._proxy_system(item) for item in run.generate.proxy_systems]
        self._select(self.systems, list(run.generate.max_new_tokens_by_system), "run.generate.max_new_tokens_by_system")
        self._select(self.systems, list(run.generate.instructions_limit_by_system), "run.generate.instructions_limit_by_system")
        names = {n for s in self.systems for n in (s.name, s.label)}
        unknown = sorted(set(run.eval.ifeval_prompts_by_system) - names)
        if unknown:
            raise UserError(f"run.eval.ifeval_prompts_by_system: unknown system(s) {unknown}; choose from {sorted(names)}")
        sets = [IFSUITE] + ([IFEVAL] if run.eval.ifeval else []) + ([ALPACA] if run.generate.instructions else [])
        # the systems on the base model (base, rule adapters) first and together, so one engine serves all of them
        by_model = sorted(self.systems, key=lambda s: s.kind == "variant")
        generated = {(s.name, name): self._generate_step(s, name) for s in by_model for name in sets}
        model_systems = [s for s in self.systems if s.kind == "base" or s in analysed]
        if run.rank.enabled:
            for s in self._select(model_systems, run.rank.systems, "run.rank.systems"):
                self._rank_step(s)
        if run.probe.enabled:
            for s in self._select(model_systems, run.probe.systems, "run.probe.systems"):
                self._probe_step(s)
        if run.template.enabled:
            for s in self._select(model_systems, run.template.systems, "run.template.systems"):
                self._template_step(s)
        if run.diff.enabled:
            for s in model_systems:
                if s.kind == "variant":
                    self._diff_step(s)
        if run.mech.enabled:
            for s in model_systems:
                if s.kind == "variant":
                    self._mech_step(s)
        for s in self.systems:
            self._ifsuite_step(s, generated[(s.name, IFSUITE)])
        if run.eval.ifeval:
            for s in self.systems:
                self._ifeval_step(s, generated[(s.name, IFEVAL)])
        from implicit_it.evaluation.ifeval import REFERENCE_SYSTEMS

        for set_name in [IFSUITE] + ([IFEVAL] if run.eval.ifeval else []):
            for kind in REFERENCE_SYSTEMS:
                self._reference_step(set_name, kind)
        if run.eval.judge:
            references = self._alpaca_references()
            for s in self.systems:
                for ref in self._paired_references(s, references):
                    self._check_covered(s, ref)
                    self._alpaca_step(
                        s, generated[(s.name, ALPACA)], ref, generated[(ref.name, ALPACA)] if ref else None, several=len(references) > 1
                    )
        self._add(
            Step(
                "report",
                "report",
                {"format": REPORT_FORMAT, "samples": run.generate.samples},
                self._run_report,
                self.run_dir / "report",
                inputs=list(self.steps),
            )
        )
        return self.steps

    def _proxy_system(self, item: str) -> System:
        """``response@0.5``: the variant's first seed is the expert, the base both the anti-expert and the proxy's base."""
        from implicit_it.config import parse_proxy_system, proxy_system_label

        variant, alpha = parse_proxy_system(item)
        expert = next((s for s in self.systems if s.kind == "variant" and s.label == variant), None)
        if expert is None:
            raise UserError(f"run.generate.proxy_systems: {item!r} names no variant of this study {[v.name for v in self.variants]}")
        label = proxy_system_label(variant, alpha)
        return System(label, "proxy", label, train=expert.train, alpha=alpha)

    def _select(self, systems: list[System], names: list[str] | None, field: str) -> list[System]:
        if names is None:
            return systems
        labels = {s.label for s in systems}
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise UserError(f"{field}: unknown system(s) {unknown}; choose from {sorted(labels)}")
        return [s for s in systems if s.label in names]

    def _add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def _dir(self, stage: str, name: str) -> Path:
        return self.run_dir / stage / name

    def _model_config(self) -> dict[str, Any]:
        return {"spec": self.config.model.spec, **self.config.model.model_dump(exclude={"spec"}), "format": self.config.format}

    def _train_step(self, variant: Any, seed: int) -> Step:
        from implicit_it.training import train_source

        cfg = self.config
        config = {"variant": variant.name, "seed": seed, "model": self._model_config(), **train_key_config(cfg, variant)}
        files = [f for f in {cfg.data.train, train_source(cfg, variant)} if not f.startswith("hub:")]
        return self._add(
            Step(
                "train",
                f"{variant.name}.s{seed}",
                config,
                lambda step: self._run_train(step, variant, seed),
                self._dir("train", f"{variant.name}.s{seed}"),
                data_files=sorted(files),
                meta={"system": f"{variant.name}.s{seed}", "label": variant.name, "seed": seed},
            )
        )

    def _max_new_tokens(self, system: System) -> int:
        """The system's own cap (``run.generate.max_new_tokens_by_system``, by label), else ``max_new_tokens``."""
        g = self.config.run.generate
        return g.max_new_tokens_by_system.get(system.label, g.max_new_tokens)

    def _instructions_limit(self, system: System | None) -> int | None:
        """The system's own limit on the AlpacaEval-style set (``run.generate.instructions_limit_by_system``), else the run's."""
        g = self.config.run.generate
        return g.instructions_limit_by_system.get(system.label, g.instructions_limit) if system else g.instructions_limit

    def _check_covered(self, system: System, ref: System | None) -> None:
        """A judged system's instructions must all have a reference output: its limit may not exceed the reference's."""
        mine, theirs = self._instructions_limit(system), self._instructions_limit(ref) if ref else None
        if ref is not None and theirs is not None and (mine is None or mine > theirs):
            raise UserError(
                f"run.generate.instructions_limit_by_system: {system.name} would be judged on {mine or 'all'} instructions "
                f"but its reference {ref.name} answers only {theirs}"
            )

    def _backend(self, system: System) -> str:
        """A proxy system decodes three models at once, which only the hf backend can: it ignores ``backend: vllm``."""
        return "hf" if system.kind == "proxy" else self.config.run.generate.backend

    def _generate_step(self, system: System, set_name: str) -> Step:
        g = self.config.run.generate
        instructions = {
            IFSUITE: g.ifsuite_prompts,
            IFEVAL: self._ifeval_config(system) if set_name == IFEVAL else None,
            ALPACA: [g.instructions, self._instructions_limit(system)],
        }[set_name]
        config = {
            "system": system.name,
            "model": self._model_config(),
            "rules": list(system.rules),
            **({"proxy": {"expert": system.train.name, "anti": "base", "alpha": system.alpha}} if system.kind == "proxy" else {}),
            **({"rule_constants": rule_constants_key()} if system.rules else {}),
            "set": set_name,
            "max_new_tokens": self._max_new_tokens(system),
            "batch_size": g.batch_size,
            "instructions": instructions,
            # the engine decides the outputs too; hf keys stay as they were before there was a choice
            **({"backend": g.backend, "vllm": g.vllm.model_dump()} if self._backend(system) != "hf" else {}),
        }
        files = [g.instructions] if set_name == ALPACA else self._ifeval_files() if set_name == IFEVAL else []
        return self._add(
            Step(
                "generate",
                f"{set_name}/{system.name}",
                config,
                lambda step: self._run_generate(step, system, set_name),
                self._dir("generate", f"{set_name}/{system.name}"),
                inputs=[system.train] if system.train else [],
                data_files=files,
                meta={**system.meta(), "set": set_name},
            )
        )

    def _rank_step(self, system: System) -> Step:
        r = self.config.run.rank
        config = {"system": system.name, "model": self._model_config(), "seed": self.config.seed, **stage_fields(r, RankConfig)}
        return self._add(
            Step(
                "rank",
                system.name,
                config,
                lambda step: self._run_rank(step, system),
                self._dir("rank", system.name),
                inputs=[system.train] if system.train else [],
                data_files=[r.data],
                meta=system.meta(),
            )
        )

    def _probe_step(self, system: System) -> Step:
        p = self.config.run.probe
        config = {
            "system": system.name,
            "model": self._model_config(),
            "seed": self.config.seed,
            **stage_fields(p, ProbeConfig),
        }
        return self._add(
            Step(
                "probe",
                system.name,
                config,
                lambda step: self._run_probe(step, system),
                self._dir("probe", system.name),
                inputs=[system.train] if system.train else [],
                data_files=[p.data],
                meta=system.meta(),
            )
        )

    def _template_step(self, system: System) -> Step:
        t = self.config.run.template
        config = {"system": system.name, "model": self._model_config(), "seed": self.config.seed, **stage_fields(t, TemplateConfig)}
        return self._add(
            Step(
                "template",
                system.name,
                config,
                lambda step: self._run_template(step, system),
                self._dir("template", system.name),
                inputs=[system.train] if system.train else [],
                data_files=list(t.references().values()) if t.embedder is not None else [],
                meta=system.meta(),
            )
        )

    def _diff_step(self, system: System) -> Step:
        from implicit_it.analyses import parse_analyses

        d = self.config.run.diff
        config = {"system": system.name, "model": self._model_config(), "seed": self.config.seed, **stage_fields(d, DiffConfig)}
        config["analyses"] = parse_analyses(",".join(d.analyses))  # 'all' keyed as the analyses registered now
        config["rule_constants"] = rule_constants_key(d.rules_config)
        return self._add(
            Step(
                "diff",
                system.name,
                config,
                lambda step: self._run_diff(step, system),
                self._dir("diff", system.name),
                inputs=[system.train],
                data_files=[d.data],
                meta=system.meta(),
            )
        )

    def _mech_step(self, system: System) -> Step:
        from implicit_it.analyses import mech_data_files

        m = self.config.run.mech
        config = {"system": system.name, "model": self._model_config(), "seed": self.config.seed, **stage_fields(m, MechConfig)}
        config["rule_constants"] = rule_constants_key()  # the mechanism compares each variant with the paper's adapter
        return self._add(
            Step(
                "mech",
                system.name,
                config,
                lambda step: self._run_mech(step, system),
                self._dir("mech", system.name),
                inputs=[system.train],
                data_files=mech_data_files(m),
                meta=system.meta(),
            )
        )

    def _ifsuite_step(self, system: System, generated: Step) -> Step:
        return self._add(
            Step(
                "eval",
                f"{IFSUITE}/{system.name}",
                {"suite": "packaged"},
                lambda step: self._run_ifsuite(step, system, generated),
                self._dir("eval", f"{IFSUITE}/{system.name}"),
                inputs=[generated],
                meta=system.meta(),
            )
        )

    def _ifeval_step(self, system: System, generated: Step) -> Step:
        return self._add(
            Step(
                "eval",
                f"{IFEVAL}/{system.name}",
                {"benchmark": IFEVAL, **self._ifeval_config(system)},
                lambda step: self._run_ifeval(step, system, generated),
                self._dir("eval", f"{IFEVAL}/{system.name}"),
                inputs=[generated],
                data_files=self._ifeval_files(),
                meta=system.meta(),
            )
        )

    def _reference_step(self, set_name: str, kind: str) -> Step:
        """A degenerate system scored on a prompt set without generating: its row shows what the metric gives for free."""
        name = f"{REFERENCE}{kind}"
        prompts = (
            self._ifeval_config() if set_name == IFEVAL else {"suite": "packaged", "prompts": self.config.run.generate.ifsuite_prompts}
        )
        meta = {"system": name, "kind": "reference", "label": name, "seed": None, "rules": [], "set": set_name}
        return self._add(
            Step(
                "eval",
                f"{set_name}/{name}",
                {"reference": kind, **prompts},
                lambda step: self._run_reference(step, set_name, kind),
                self._dir("eval", f"{set_name}/{name}"),
                data_files=self._ifeval_files() if set_name == IFEVAL else [],
                meta=meta,
            )
        )

    def _ifeval_limit(self, system: System | None) -> int | None:
        """The system's IFEval prompt count (``run.eval.ifeval_prompts_by_system`` by name, then label; None = all); the
        reference systems (``system`` None) score the largest set any system generates on."""
        e = self.config.run.eval
        if system is None:
            limits = [self._ifeval_limit(s) for s in self.systems] or [e.ifeval_prompts]
            return None if None in limits else max(limits)  # type: ignore[type-var]
        for key in (system.name, system.label):
            if key in e.ifeval_prompts_by_system:
                return e.ifeval_prompts_by_system[key]
        return e.ifeval_prompts

    def _ifeval_config(self, system: System | None = None) -> dict[str, Any]:
        """What the IFEval prompt set depends on (the data file's sha256 enters the key through ``data_files``)."""
        e = self.config.run.eval
        return {"data": e.ifeval_data, "prompts": self._ifeval_limit(system), "subset_seed": IFEVAL_SUBSET_SEED}

    def _ifeval_files(self) -> list[str]:
        data = self.config.run.eval.ifeval_data
        return [] if data.startswith("hub:") else [data]

    def _ifeval_prompts(self, system: System | None = None) -> list[Any]:
        """The system's fixed IFEval subset (one stratified draw per size), read once per plan and size."""
        return self._ifeval_subset(self._ifeval_limit(system))

    @functools.lru_cache(maxsize=None)  # noqa: B019 (one plan per run: the cache lives as long as the plan)
    def _ifeval_subset(self, limit: int | None) -> list[Any]:
        from implicit_it.evaluation.ifeval import load_ifeval

        return load_ifeval(self.config.run.eval.ifeval_data, limit=limit, seed=IFEVAL_SUBSET_SEED)

    def _alpaca_references(self) -> list[System]:
        """The reference systems: one, or one per seed when ``run.eval.reference`` names a trained variant
        (the paper: each seed of the instruction-tuned model); empty when the reference is a file."""
        ref = self.config.run.eval.reference
        matches = [s for s in self.systems if ref in (s.name, s.label)]
        if not matches and not Path(ref).is_file():
            raise UserError(f"run.eval.reference: {ref!r} is neither a system ({sorted({s.label for s in self.systems})}) nor a file")
        return matches

    @staticmethod
    def _paired_references(system: System, references: list[System]) -> list[System | None]:
        """Whom ``system`` is judged against, as the paper pairs them: seed s of a variant against seed s of the
        reference; the seedless base and rule adapter against every seed of the reference (mean ± std over those)."""
        if not references:
            return [None]  # a reference file
        if any(r.name == system.name for r in references):
            return []  # not judged against itself
        if len(references) == 1 or system.seed is None:
            return list(references)
        same_seed = [r for r in references if r.seed == system.seed]
        if not same_seed:
            raise UserError(f"run.eval.reference: no seed {system.seed} of {references[0].label!r} to judge {system.name} against")
        return same_seed

    def _alpaca_step(self, system: System, generated: Step, ref: System | None, reference: Step | None, *, several: bool) -> Step:
        e = self.config.run.eval
        config = {
            "judge": e.judge,
            "judge_model": e.judge_model,
            "reference": e.reference,
            "lc_data": e.lc_data,
            "reference_system": ref.name if ref is not None else None,
        }
        inputs = [generated] + ([reference] if reference is not None else [])
        # a seedless system judged against several reference seeds gets one step per seed: alpaca/rules/vs-instruction.s1
        name = f"{ALPACA}/{system.name}" + (f"/vs-{ref.name}" if several and system.seed is None and ref is not None else "")
        meta = {
            **system.meta(),
            "set": ALPACA,
            "reference": ref.name if ref is not None else e.reference,
            "reference_seed": ref.seed if ref is not None else None,
        }
        return self._add(
            Step(
                "eval",
                name,
                config,
                lambda step: self._run_alpaca(step, system, generated, reference, ref),
                self._dir("eval", name),
                inputs=inputs,
                data_files=[] if reference is not None else [e.reference],
                meta=meta,
            )
        )

    # -- running ----------------------------------------------------------------------------
    def _load(self, system: System) -> Any:
        from implicit_it.engines import close_engine
        from implicit_it.models import load_model

        close_engine()  # a step on the fp32 model does not share the CPU and memory with an idle vLLM engine

        m = self.config.model
        kwargs = {"dtype": m.dtype, "device": m.device, "device_map": m.device_map, "attn_implementation": m.attn_implementation}
        if system.kind == "variant":
            return load_model(str(system.train.dir), use_process_cache=False, **kwargs)
        if system.kind == "proxy":
            from implicit_it.proxy import ProxyModels, ProxySpec

            base = load_model(m.spec, **kwargs)
            expert = load_model(str(system.train.dir), use_process_cache=False, **kwargs)
            return ProxyModels(ProxySpec(str(system.train.dir), m.spec, system.alpha), base, expert, base)
        return load_model(m.spec, **kwargs)  # the base stays in the process cache across steps

    def _manifest(self, step: Step, loaded: Any, results: dict[str, Any], timings: dict[str, float]) -> None:
        """``loaded``: the step's LoadedModel, its manifest entry as a dict (a vLLM step loads none), or None."""
        from implicit_it.manifest import build_manifest, write_manifest

        write_manifest(
            step.dir,
            build_manifest(
                command=self.command,
                config={"step": step.id, "key": step.key, **step.config},
                seed=step.config.get("seed"),
                model=loaded if isinstance(loaded, dict) or loaded is None else loaded.describe(),
                data_files=step.data_files,
                results=results,
                timings=timings,
            ),
        )

    def _run_train(self, step: Step, variant: Any, seed: int) -> dict[str, Any]:
        """Only reached for a fresh directory or an interrupted run of this very step (see Step.begin):
        a run killed after saving its model is reused, one killed mid-way resumes from its last checkpoint."""
        from implicit_it.training import train_stage

        launch = (lambda resume: self._launch_train(step, variant, seed, resume)) if self.config.run.accelerate_config else None
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its log lines; stdout stays for the report path
            stage = train_stage(
                self.config,
                variant,
                out_dir=step.dir,
                seed=seed,
                resume="auto",
                show_progress=self.show_progress,
                command=self.command,
                launch=launch,
            )
        return stage.summary()  # training.report_to: the run's record points to the log files

    def _launch_train(self, step: Step, variant: Any, seed: int, resume: bool) -> None:
        """``iit train`` under ``accelerate launch`` (DDP/FSDP/ZeRO-3 over several GPUs), from this step's own copy of the config."""
        import subprocess

        import yaml

        from implicit_it.io import atomic_write_text

        config_file = step.dir / "experiment.yaml"
        atomic_write_text(config_file, yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        spec = f"{variant.kind}:{variant.task}" if variant.task else variant.kind
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(self.config.run.accelerate_config),
            *self.config.run.accelerate_args,
            "-m",
            "implicit_it",
            "train",
            "--config",
            str(config_file),
            "--variant",
            spec,
            "--seed",
            str(seed),
            "--out",
            str(step.dir),
            *(["--resume"] if resume else []),
            *([] if self.show_progress else ["-q"]),
        ]
        proc = subprocess.run(cmd, stdout=sys.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with status {proc.returncode}")

    def _instructions(self, set_name: str, system: System | None = None) -> list[str]:
        from implicit_it.data import read_instructions
        from implicit_it.evaluation import load_suite

        g = self.config.run.generate
        if set_name == IFSUITE:
            return [p.instruction for p in load_suite(limit=g.ifsuite_prompts)]
        if set_name == IFEVAL:
            return [p.prompt for p in self._ifeval_prompts(system)]
        return [it.instruction for it in read_instructions(g.instructions, limit=self._instructions_limit(system))]

    def _run_generate(self, step: Step, system: System, set_name: str) -> dict[str, Any]:
        from implicit_it.engines import generate
        from implicit_it.generation import alpaca_eval_records
        from implicit_it.rules import RuleConfig

        g = self.config.run.generate
        instructions = self._instructions(set_name, system)
        spec = str(system.train.dir) if system.kind == "variant" else self.config.model.spec
        if system.kind == "proxy":  # what the manifest names; the models come from _load
            spec = f"proxy:expert={system.train.dir},anti={spec},alpha={system.alpha:g}"
        decoded = generate(
            spec,
            instructions,
            g if self._backend(system) == g.backend else g.model_copy(update={"backend": self._backend(system)}),
            fmt=self.config.format,
            rule_config=RuleConfig().with_rules(list(system.rules)) if system.rules else None,
            max_new_tokens=self._max_new_tokens(system),
            seed=self.config.seed,
            load=lambda: self._load(system),
            show_progress=self.show_progress,
        )
        atomic_write_json(step.dir / "outputs.json", alpaca_eval_records(decoded.results, system.name, set_name))
        summary = decoded.summary()
        self._manifest(step, decoded.model, summary, {"generate": round(decoded.stats.seconds, 2)})
        return summary

    def _run_rank(self, step: Step, system: System) -> dict[str, Any]:
        from implicit_it.generation import progress_bar
        from implicit_it.probes import rank, rank_inputs

        r = self.config.run.rank
        inputs = rank_inputs(r, seed=self.config.seed)
        loaded = self._load(system)
        with progress_bar(len(inputs[1]), self.show_progress, f"rank {system.name}") as advance:
            stage = rank(
                loaded, r, step.dir, fmt=self.config.format, label=system.name, seed=self.config.seed, inputs=inputs, progress=advance
            )
        self._manifest(step, loaded, stage.summary, {"score": round(stage.run.seconds, 2)})
        return stage.summary

    def _run_probe(self, step: Step, system: System) -> dict[str, Any]:
        from implicit_it.generation import progress_bar
        from implicit_it.probes import probe, probe_source

        p = self.config.run.probe
        source = probe_source(p)
        loaded = self._load(system)
        with progress_bar(len(source.instructions) // 2 * 2, self.show_progress, f"probe {system.name}") as advance:
            stage = probe(
                loaded,
                p,
                step.dir,
                fmt=self.config.format,
                label=system.name,
                seed=self.config.seed,
                source=source,
                keep_activations=False,
                progress=advance,
            )
        self._manifest(step, loaded, stage.summary, {"probe": round(stage.run.seconds, 2)})
        return stage.summary

    def _run_template(self, step: Step, system: System) -> dict[str, Any]:
        from implicit_it.generation import progress_bar
        from implicit_it.probes import template

        t = self.config.run.template
        loaded = self._load(system)
        with progress_bar(t.n, self.show_progress, f"template {system.name}") as advance:
            stage = template(loaded, t, step.dir, fmt=self.config.format, label=system.name, seed=self.config.seed, progress=advance)
        summary = stage.record()
        self._manifest(step, loaded, summary, {"template": stage.seconds})
        return summary

    def _run_diff(self, step: Step, system: System) -> dict[str, Any]:
        from implicit_it.analyses import diff, diff_runner, stage_texts
        from implicit_it.generation import progress_bar

        d = self.config.run.diff
        runner = diff_runner(d, fmt=self.config.format, seed=self.config.seed)
        data_texts = stage_texts(d)
        base = self._load(System("base", "base", "base"))
        variant = self._load(system)
        with contextlib.ExitStack() as stack:

            def bar(label: str, total: int):
                return stack.enter_context(progress_bar(total, self.show_progress, f"{label} ({system.name})"))

            stage = diff(
                base,
                variant,
                d,
                step.dir,
                fmt=self.config.format,
                base_spec=self.config.model.spec,
                variant_spec=str(system.train.dir),
                seed=self.config.seed,
                label=system.name,
                runner=runner,
                data_texts=data_texts,
                progress=bar,
            )
        summary = stage.summary()
        self._manifest(step, variant, summary, {k: round(v, 2) for k, v in stage.diff.timings.items()})
        return summary

    def _run_mech(self, step: Step, system: System) -> dict[str, Any]:
        from implicit_it.analyses import mech, stage_texts
        from implicit_it.app.mech import mech_behaviour
        from implicit_it.generation import progress_bar

        m = self.config.run.mech
        data_texts = stage_texts(m)
        behaviour = mech_behaviour(m, data_texts, seed=self.config.seed)
        base = self._load(System("base", "base", "base"))  # the cached base: the analyses restore its weights exactly
        with contextlib.ExitStack() as stack:

            def bar(label: str, total: int):
                return stack.enter_context(progress_bar(total, self.show_progress, f"{label} ({system.name})"))

            stage = mech(  # the variant is not loaded: it runs as the base with its tensors swapped in (one model held)
                base,
                None,
                m,
                step.dir,
                fmt=self.config.format,
                base_spec=self.config.model.spec,
                variant_spec=str(system.train.dir),
                label=system.name,
                seed=self.config.seed,
                data_texts=data_texts,
                behaviour=behaviour,
                progress=bar,
            )
        timings = {k: round(v, 2) for k, v in stage.summary.get("timings", {}).items()}
        self._manifest(step, base, {**stage.summary, "variant_checkpoint": str(system.train.dir)}, timings)
        return stage.summary

    def _run_ifsuite(self, step: Step, system: System, generated: Step) -> dict[str, Any]:
        from implicit_it.evaluation import ifsuite_stage, load_suite

        records = json.loads((generated.dir / "outputs.json").read_text(encoding="utf-8"))
        by_instruction = {r["instruction"]: r["output"] for r in records}
        prompts = [p for p in load_suite() if p.instruction in by_instruction]
        outputs = ([r["output"] for r in records], [r["ended_with_eos"] for r in records])
        stage = ifsuite_stage(prompts, by_instruction, step.dir, model=system.name, outputs=outputs)
        summary = stage.record()
        self._manifest(step, None, summary, {})
        return summary

    def _run_ifeval(self, step: Step, system: System, generated: Step) -> dict[str, Any]:
        from implicit_it.evaluation import ifeval_stage

        records = json.loads((generated.dir / "outputs.json").read_text(encoding="utf-8"))
        stage = ifeval_stage(self._ifeval_prompts(system), {r["instruction"]: r["output"] for r in records}, step.dir, model=system.name)
        self._manifest(step, None, stage.summary, {})
        return stage.summary

    def _run_reference(self, step: Step, set_name: str, kind: str) -> dict[str, Any]:
        from implicit_it.evaluation import ifeval_stage, ifsuite_stage, load_suite
        from implicit_it.evaluation.ifeval import reference_responses

        name = f"{REFERENCE}{kind}"
        if set_name == IFEVAL:
            prompts = self._ifeval_prompts()
            stage = ifeval_stage(prompts, reference_responses(kind, prompts), step.dir, model=name)
        else:
            suite = load_suite(limit=self.config.run.generate.ifsuite_prompts)
            # the same definition of each reference system as IFEval's (echo repeats the instruction)
            stage = ifsuite_stage(suite, reference_responses(kind, [p.instruction for p in suite]), step.dir, model=name)
        self._manifest(step, None, stage.summary, {})
        return stage.summary

    def _run_alpaca(self, step: Step, system: System, generated: Step, reference: Step | None, ref: System | None) -> dict[str, Any]:
        from implicit_it.data import read_instructions
        from implicit_it.evaluation import alpaca_stage, find_lc_data, parse_judge

        e, g = self.config.run.eval, self.config.run.generate
        judge = parse_judge(e.judge, e.judge_model)  # checked before the run started (run_study)
        stage = alpaca_stage(
            generated.dir / "outputs.json",
            reference.dir / "outputs.json" if reference is not None else e.reference,
            step.dir,
            judge=judge,
            generator=system.name,
            cache_path=self.run_dir / "eval" / "judge_cache.json",
            gold_answers_path=g.instructions,  # a metric judge scores against the instruction set's own answers
            lc=find_lc_data(e.lc_data),
            # LC places each instruction in the whole instruction file (AlpacaEval's 805 when it is that set), not the subset
            eval_set=[it.instruction for it in read_instructions(g.instructions)] if g.instructions else None,
            meta={"generator": system.name, "reference_generator": ref.name if ref is not None else e.reference},
        )
        self._manifest(step, None, stage.result.entries[0], {})
        return stage.summary

    def _run_report(self, step: Step) -> dict[str, Any]:
        from implicit_it.app.results import register_every_result
        from implicit_it.reports import report_stage

        register_every_result()
        cards = self._write_model_cards()
        return report_stage(self.run_dir, step.dir).summary() | {"model_cards": cards}

    def _write_model_cards(self) -> list[str]:
        """Each trained variant's card, rewritten with what this run measured on it (IFEval, IF suite, AlpacaEval)."""
        from implicit_it.training import card_stage, evaluation_rows

        written = []
        for system in self.systems:
            if system.kind != "variant" or system.train is None:
                continue
            rows: list[dict[str, Any]] = []
            for s in self.steps:
                record = s.finished() if s.stage == "eval" and s.meta.get("system") == system.name else None
                if record is not None:
                    rows += evaluation_rows(s.name.split("/")[0], record["summary"], s.meta)
            written.append(str(card_stage(system.train.dir, rows)))
        return written
