"""Experiment configs: YAML files validated by pydantic.

Unknown keys and wrong types are errors (``extra="forbid"``): a misspelt hyperparameter that
silently falls back to a default would produce a different experiment than the one written
down. Errors name the file and the dotted field path. Relative data paths are resolved against
the current working directory (run ``iit`` from the repository root for the shipped configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .formats import FORMATS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    spec: str = "gemma-3-270m"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: fp32 on CPU, bf16 on GPU
    device: str | None = None
    device_map: str | None = None
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = "eager"


class DataConfig(_Strict):
    """Data sources: a chat-JSONL path, or ``hub:<source>`` (lima, gsm, mbpp, poetry, recipes, chess)."""

    train: str = "../shared/data/lima/train.jsonl"
    instructions: str = "../shared/data/lima/val_instructions.jsonl"
    single_task: dict[str, str] = Field(default_factory=dict)  # e.g. {gsm: ../shared/data/gsm8k/train_1k.jsonl}
    max_train_examples: int | None = Field(default=None, gt=0)
    max_eval_instructions: int | None = Field(default=None, gt=0)
    # The last N examples of ``train`` are held out of every variant's training data and scored by
    # held-out response NLL. The paper holds nothing out: it selects on ``validation``.
    heldout_examples: int = Field(default=0, ge=0)
    # Instructions with reference responses (AlpacaEval layout) never trained on: what ``iit sweep``
    # selects epochs on. The paper's: its 56 LIMA validation instructions with GPT-3.5 references.
    validation: str | None = None
    # The paper's encoder strips every turn and trains on all of LIMA, multi-turn examples included
    # (loss on every assistant turn). ``false`` keeps text as written / drops multi-turn examples.
    strip_whitespace: bool = True
    multi_turn: bool = True


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(default=256, gt=0)
    batch_size: int = Field(default=8, gt=0)


class LoraConfig(_Strict):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class TrainingConfig(_Strict):
    """Hyperparameters for the training variants (the paper's values are in the 7B configs)."""

    variants: list[Literal["instruction", "response", "single_task"]] = Field(default_factory=lambda: ["instruction", "response"])
    single_task_sources: list[Literal["gsm", "mbpp", "poetry", "recipes", "chess"]] = Field(default_factory=list)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)  # used when method == "lora"
    learning_rate: float = Field(default=1e-5, gt=0)
    epochs: float = Field(default=7, gt=0)
    # Per-variant epoch counts (variant name -> epochs), e.g. the paper's chosen values
    # {instruction: 15, response: 5, single_task-gsm: 7}; variants not named use ``epochs``.
    epochs_by_variant: dict[str, float] = Field(default_factory=dict)
    max_steps: int | None = Field(default=None, gt=0)  # stop after N optimizer steps (smoke runs, benchmarks); overrides epochs
    epoch_grid: list[float] = Field(default_factory=lambda: [5, 7, 10, 15, 20])
    effective_batch_size: int = Field(default=64, gt=0)
    per_device_batch_size: int = Field(default=1, gt=0)
    max_length: int = Field(default=2048, gt=8)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = False  # tied models (Gemma): this also freezes the LM head
    # Examples longer than max_length: "truncate" cuts the response (the paper, at 2048 tokens);
    # "drop" skips them, so that every kept example teaches where the response ends (EOS).
    overlong: Literal["truncate", "drop"] = "truncate"
    group_by_length: bool = False  # batch similar lengths together: less padding, same examples
    save_steps: int = Field(default=50, gt=0)  # checkpoint every N optimizer steps (for --resume)
    keep_checkpoints: bool = False  # checkpoints hold optimizer state (3x the model); removed after success
    merge_lora: bool = True  # method lora: also save the merged model, so analyses load one directory
    eval_batch_size: int = Field(default=8, gt=0)  # held-out NLL scoring
    # What ``iit sweep`` selects the epoch count by. val_nll: NLL of the validation references
    # (judge-free, one forward pass); val_win_rate: the paper's (a judge's win rate against the
    # validation references; needs --judge); ifsuite_loose: judge-free IF-suite loose accuracy of
    # greedy generations; heldout_nll: NLL of data.heldout_examples. None: val_nll with data.validation, else heldout_nll.
    # ifeval_loose: IFEval prompt-level loose accuracy of greedy generations on a stratified subset (iit sweep --prompts N).
    sweep_metric: Literal["val_nll", "val_win_rate", "ifeval_loose", "ifsuite_loose", "heldout_nll"] | None = None
    # example: mean of each example's token losses, then mean over the optimizer step's examples
    # (the paper: micro-batch 1, reduce_loss=mean). token: mean over all the step's tokens
    # (HF Trainer's default; long responses weigh more).
    loss_reduction: Literal["example", "token"] = "example"
    # How the LR schedule counts steps. open_instruct: as the paper's finetune.py under accelerate
    # (planned over ceil(N / accumulation) steps, warmup int(ratio * steps), stepped once per process
    # per optimizer step). trainer: HF Trainer's (warmup ceil(ratio * steps), decays over the real steps).
    schedule_counting: Literal["open_instruct", "trainer"] = "open_instruct"

    def epochs_for(self, variant_name: str) -> float:
        """The epoch count of one variant (``epochs_by_variant`` overrides ``epochs``)."""
        return self.epochs_by_variant.get(variant_name, self.epochs)

    @field_validator("epochs_by_variant")
    @classmethod
    def _known_variant_names(cls, v: dict[str, float]) -> dict[str, float]:
        import math

        for name, epochs in v.items():
            kind, _, task = name.partition("-")
            if kind not in ("instruction", "response", "single_task") or (kind == "single_task") != bool(task):
                raise ValueError(f"unknown variant {name!r}: use instruction, response or single_task-SOURCE")
            if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
                raise ValueError(f"{name}: epochs must be a finite number > 0, got {epochs!r}")
        return v

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingConfig":
        if self.effective_batch_size % self.per_device_batch_size:
            raise ValueError(
                f"effective_batch_size ({self.effective_batch_size}) must be a multiple of "
                f"per_device_batch_size ({self.per_device_batch_size})"
            )
        return self


RULE_SET_NAMES = ("all", "no_eos", "no_uniform", "no_diversity")


class RunGenerateConfig(_Strict):
    """Greedy generations of every system (base, variants, rule adapter and its ablations)."""

    ifsuite_prompts: int | None = Field(default=None, gt=0)  # judge-free suite prompts, round-robin over categories; None = all 136
    instructions: str | None = None  # a second instruction set (e.g. AlpacaEval's 805) for the judge
    instructions_limit: int | None = Field(default=None, gt=0)
    max_new_tokens: int = Field(default=512, gt=0)  # the cap of every system without its own entry below
    # per-system caps keyed by system label (base, instruction, response, single_task-gsm, rules, rules-no_eos, ...;
    # checked against the run's systems when the study is planned). The paper generates up to 8192 new tokens and
    # caps only its no-EOS ablation, at 512 (configs/llama2-7b.yaml: {rules-no_eos: 512}).
    max_new_tokens_by_system: dict[str, PositiveInt] = Field(default_factory=dict)
    batch_size: int = Field(default=8, gt=0)
    # rule-adapter systems: "all" (eos,uniform,diversity) and the paper's ablations (one rule removed)
    rule_sets: list[Literal["all", "no_eos", "no_uniform", "no_diversity"]] = Field(default_factory=lambda: list(RULE_SET_NAMES))
    samples: int = Field(default=4, ge=0)  # generations shown side by side in the report


class RunRankConfig(_Strict):
    """The paper's response ranking (Table 2), at the output and through the logit lens."""

    enabled: bool = True
    data: str = "../shared/data/lima/val_reference_gpt35.json"  # instructions with responses, never trained on
    systems: list[str] | None = None  # base and variant names (e.g. [base, instruction, response]); None = all
    instructions: int = Field(default=56, gt=1)
    negatives: int = Field(default=5, gt=0)
    # a draw of the instruction's own response: redraw it, drop it (the paper's plot_ratios.py), or score it as a tie
    self_draws: Literal["redraw", "drop", "tie"] = "redraw"
    max_length: int = Field(default=1024, gt=8)  # the paper: --max_seq_length 1024
    layers: str | None = "every:2"  # None: output only


class RunProbeConfig(_Strict):
    """Linear probes (matched vs mismatched instruction/response) per layer."""

    enabled: bool = True
    data: str = "../shared/data/lima/val_reference_gpt35.json"
    systems: list[str] | None = None
    instructions: int = Field(default=56, ge=4)
    layers: str = "every:2"
    pools: list[Literal["mean", "last"]] = Field(default_factory=lambda: ["mean"])
    folds: int = Field(default=5, ge=2)
    max_length: int = Field(default=512, gt=8)


class RunDiffConfig(_Strict):
    """Layer diffs of each variant against the base (weights, logit lens, rule family, token shift)."""

    enabled: bool = True
    data: str = "../shared/data/lima/val_reference_gpt35.json"
    limit: int | None = Field(default=12, ge=2)
    layers: str = "every:3"
    # the rule family fits a bias per scored token: over all 262k tokens its R² mostly measures static biases
    vocab: str = "frequent:2048"
    max_length: int = Field(default=512, gt=8)
    max_new_tokens: int = Field(default=128, gt=0)


class RunEvalConfig(_Strict):
    """Evaluation: IFEval (unless switched off) and the judge-free suite always; AlpacaEval when a judge is named."""

    # IFEval (Zhou et al. 2023), the standard judge-free benchmark and the report's headline: every system generates on its
    # prompts (greedy, with run.generate's caps and batch size) and is scored strict and loose with 95% CIs, beside the
    # reference systems constant / echo / empty (what the metric gives for free). false: no IFEval steps at all.
    ifeval: bool = True
    ifeval_data: str = "../shared/data/ifeval/input_data.jsonl"  # IFEval's input_data.jsonl, or hub:ifeval (google/IFEval)
    # a subset stratified by each prompt's first instruction type, one fixed draw (the same in every run); None = all 541
    ifeval_prompts: int | None = Field(default=None, gt=0)
    judge: str | None = None  # gpt4_turbo | http(s)://server/v1 | local:SPEC (needs generate.instructions)
    judge_model: str | None = None
    reference: str = "instruction"  # the system every other is compared against (the paper: instruction-tuned), or a file
    lc_data: str | None = None  # folder with alpaca_eval's df_gamed.csv, for length control

    @field_validator("ifeval_data")
    @classmethod
    def _ifeval_source(cls, v: str) -> str:
        if v.startswith("hub:") and v != "hub:ifeval":
            raise ValueError(f"unknown hub source {v!r}: IFEval comes from a local input_data.jsonl or hub:ifeval")
        return v


class RunConfig(_Strict):
    """What ``iit run`` does after training: one block per stage."""

    seeds: list[int] | None = None  # training seeds (None: [seed]); ``iit run --seeds 1..5`` overrides
    # Multi-GPU training (7B): each training step runs as `accelerate launch --config_file FILE [ARGS] -m implicit_it train ...`
    # in a subprocess; the other stages run in this process (set model.device_map: auto for models beyond one GPU).
    accelerate_config: str | None = None
    accelerate_args: list[str] = Field(default_factory=list)  # e.g. [--num_processes, "8"]
    generate: RunGenerateConfig = Field(default_factory=RunGenerateConfig)
    rank: RunRankConfig = Field(default_factory=RunRankConfig)
    probe: RunProbeConfig = Field(default_factory=RunProbeConfig)
    diff: RunDiffConfig = Field(default_factory=RunDiffConfig)
    eval: RunEvalConfig = Field(default_factory=RunEvalConfig)

    @model_validator(mode="after")
    def _judge_needs_instructions(self) -> "RunConfig":
        if self.eval.judge is not None and self.generate.instructions is None:
            raise ValueError("eval.judge is set but generate.instructions is not: name the instruction set the judge compares on")
        return self


class ExperimentConfig(_Strict):
    """One experiment: a base model, its data, and how each stage runs."""

    name: str
    seed: int = 0
    format: str = "tulu"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    notes: str = ""

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown chat format {v!r}; choose one of {sorted(FORMATS)}")
        return v


def _format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not a config field)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config; errors name the file, line (YAML syntax) or field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path))
