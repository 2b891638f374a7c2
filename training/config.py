"""What training reads: the data sources, the optimiser, LoRA; and the slice of an experiment the training room needs."""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, Self

from pydantic import Field, field_validator, model_validator

from implicit_it.config import ChatSource, ModelConfig, PathText, StrictConfig, VariantKind, check_hub_source, check_variant_name


def check_epoch_grid(v: list[float]) -> list[float]:
    """At least one epoch count; each finite and > 0; no repeats (each grid point is one training run)."""
    if not v:
        raise ValueError("give at least one epoch count")
    bad = [x for x in v if not (math.isfinite(x) and x > 0)]
    if bad:
        raise ValueError(f"epoch counts must be finite numbers > 0, got {bad}")
    if len(set(v)) != len(v):
        raise ValueError(f"epoch counts must be distinct, got {v}")
    return v


class DataConfig(StrictConfig):
    """Data sources: a chat-JSONL path, or ``hub:<source>`` (lima, gsm, mbpp, poetry, recipes, chess)."""

    train: ChatSource = "../shared/data/lima/train.jsonl"
    single_task: dict[str, str] = Field(default_factory=dict, description="e.g. {gsm: ../shared/data/gsm8k/train_1k.jsonl}")
    max_train_examples: int | None = Field(default=None, gt=0)
    heldout_examples: int = Field(
        default=0,
        ge=0,
        description=(
            "The last N examples of `train` are held out of every variant's training data and scored by held-out response "
            "NLL. The paper holds nothing out: it selects on `validation`."
        ),
    )
    validation: PathText | None = Field(
        default=None,
        description=(
            "Instructions with reference responses (AlpacaEval layout) never trained on: what `iit sweep` selects epochs on. "
            "The paper's: its 56 LIMA validation instructions with GPT-3.5 references."
        ),
    )
    strip_whitespace: bool = Field(
        default=True,
        description=(
            "The paper's encoder strips every turn and trains on all of LIMA, multi-turn examples included (loss on every "
            "assistant turn). `false` keeps text as written / drops multi-turn examples."
        ),
    )
    multi_turn: bool = True
    delusive_seed: int = Field(
        default=0, ge=0, description="The `delusive` variant's derangement of instructions (which response gets which instruction)."
    )
    content_free_instruction: str = Field(
        default="Write a response.",
        min_length=1,
        description="The one instruction the `content_free` variant puts in every user turn (the chat's shape, none of the task).",
    )

    @field_validator("single_task")
    @classmethod
    def _single_task_sources(cls, v: dict[str, str]) -> dict[str, str]:
        from implicit_it.sources import SOURCES

        tasks = sorted(set(SOURCES) - {"lima"})
        for task, source in v.items():
            if task not in tasks:
                raise ValueError(f"unknown single task {task!r}; choose from {tasks}")
            try:
                check_hub_source(source)
            except ValueError as exc:
                raise ValueError(f"{task}: {exc}") from None
        return v


class LoraConfig(StrictConfig):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class TrainingConfig(StrictConfig):
    """Hyperparameters for the training variants (the paper's values are in the 7B configs)."""

    variants: list[VariantKind] = Field(
        default=["instruction", "response"],
        description="instruction, response (the paper's), delusive and content_free (controls: wrong / content-free instructions), "
        "single_task (every source in single_task_sources)",
    )
    single_task_sources: list[Literal["gsm", "mbpp", "poetry", "recipes", "chess"]] = Field(default_factory=list)
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig, description='used when method == "lora"')
    learning_rate: float = Field(default=1e-5, gt=0)
    epochs: float = Field(default=7, gt=0, description="epochs of every variant not named in epochs_by_variant")
    epochs_by_variant: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Per-variant epoch counts (variant name -> epochs), e.g. the paper's chosen values {instruction: 15, response: 5,"
            " single_task-gsm: 7}; variants not named use `epochs`."
        ),
    )
    max_steps: int | None = Field(default=None, gt=0, description="stop after N optimizer steps (smoke runs, benchmarks); overrides epochs")
    epoch_grid: list[float] = Field(default=[5, 7, 10, 15, 20], description="the epoch counts `iit sweep` trains and selects among")
    effective_batch_size: int = Field(default=64, gt=0)
    per_device_batch_size: int = Field(default=1, gt=0)
    max_length: int = Field(default=2048, gt=8)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    bf16: bool = Field(default=False, description="bf16 autocast over fp32 master weights (the Trainer's bf16)")
    weights_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="dtype of the frozen base weights while training; bfloat16 only with method lora (the adapters stay fp32)",
    )
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = Field(default=False, description="tied models (Gemma): this also freezes the LM head")
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate",
        description=(
            'Examples longer than max_length: "truncate" cuts the response (the paper, at 2048 tokens); "drop" skips them, so'
            " that every kept example teaches where the response ends (EOS)."
        ),
    )
    group_by_length: bool = Field(default=False, description="batch similar lengths together: less padding, same examples")
    save_steps: int = Field(default=50, gt=0, description="checkpoint every N optimizer steps (for --resume)")
    keep_checkpoints: bool = Field(default=False, description="checkpoints hold optimizer state (3x the model); removed after success")
    merge_lora: bool = Field(default=True, description="method lora: also save the merged model, so analyses load one directory")
    eval_batch_size: int = Field(default=8, gt=0, description="held-out NLL scoring")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        default="none",
        description="training logs in OUT/logs/: tensorboard event files, or a wandb run in offline mode (wandb sync uploads it)",
    )
    sweep_metric: Literal["val_nll", "val_win_rate", "ifeval_loose", "ifsuite_loose", "heldout_nll"] | None = Field(
        default=None,
        description=(
            "What `iit sweep` selects the epoch count by. val_nll: NLL of the validation references (judge-free, one forward "
            "pass); val_win_rate: the paper's (a judge's win rate against the validation references; needs sweep_judge); "
            "ifsuite_loose: judge-free IF-suite loose accuracy of greedy generations; heldout_nll: NLL of "
            "data.heldout_examples. None: val_nll with data.validation, else heldout_nll. ifeval_loose: IFEval prompt-level "
            "loose accuracy of greedy generations on a stratified subset of run.eval.ifeval_data (sweep_prompts)."
        ),
    )
    sweep_judge: PathText | None = Field(
        default=None,
        description="sweep_metric val_win_rate: the judge (gpt4_turbo, an OpenAI-compatible server URL, local:SPEC), comparing "
        "against data.validation's reference outputs, as the paper did",
    )
    sweep_judge_model: PathText | None = Field(default=None, description="the model name on sweep_judge's server (default: its first)")
    sweep_prompts: int | None = Field(
        default=None,
        gt=0,
        description="sweep_metric ifeval_loose / ifsuite_loose: prompts generated for at each grid point (None: a stratified "
        "IFEval subset of 60; the whole IF suite, 136)",
    )
    loss_reduction: Literal["example", "token"] = Field(
        default="example",
        description=(
            "example: mean of each example's token losses, then mean over the optimizer step's examples (the paper: micro-"
            "batch 1, reduce_loss=mean). token: mean over all the step's tokens (HF Trainer's default; long responses weigh "
            "more)."
        ),
    )
    schedule_counting: Literal["open_instruct", "trainer"] = Field(
        default="open_instruct",
        description=(
            "How the LR schedule counts steps. open_instruct: as the paper's finetune.py under accelerate (planned over "
            "ceil(N / accumulation) steps, warmup int(ratio * steps), stepped once per process per optimizer step). trainer: "
            "HF Trainer's (warmup ceil(ratio * steps), decays over the real steps)."
        ),
    )

    def epochs_for(self, variant_name: str) -> float:
        """The epoch count of one variant (``epochs_by_variant`` overrides ``epochs``)."""
        return self.epochs_by_variant.get(variant_name, self.epochs)

    @field_validator("epoch_grid")
    @classmethod
    def _epoch_grid(cls, v: list[float]) -> list[float]:
        return check_epoch_grid(v)

    @field_validator("epochs_by_variant")
    @classmethod
    def _known_variant_names(cls, v: dict[str, float]) -> dict[str, float]:
        for name, epochs in v.items():
            check_variant_name(name)
            if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
                raise ValueError(f"{name}: epochs must be a finite number > 0, got {epochs!r}")
        return v

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingConfig":
        if self.weights_dtype != "float32" and self.method != "lora":
            raise ValueError(f"weights_dtype {self.weights_dtype!r} needs method 'lora' (full finetuning keeps fp32 master weights)")
        if self.effective_batch_size % self.per_device_batch_size:
            raise ValueError(
                f"effective_batch_size ({self.effective_batch_size}) must be a multiple of "
                f"per_device_batch_size ({self.per_device_batch_size})"
            )
        return self


class TrainingExperiment(Protocol):
    """The part of an experiment that training reads; the app's ``ExperimentConfig``, which assembles every room's
    config, is one. Typed here so that training never imports the app."""

    name: str
    seed: int
    format: str
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self: ...
