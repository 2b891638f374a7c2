"""Where in the network a variant's weights moved: per-tensor deltas against the base.

For every tensor (per layer and module: q, k, v, o, gate, up, down, norms, embedding,
unembedding, final norm) the table holds ‖ΔW‖_F/‖W‖_F, cosine(W_base, W_variant), and for
matrices the spectrum of ΔW summarised as an effective rank (exp of the entropy of the
normalised singular values, Roy & Vetterli 2007) and the energy in the top-k singular values.

Checkpoints are streamed tensor by tensor from safetensors (large tensors in row blocks), so two
7B checkpoints never sit in memory together. A LoRA adapter directory is read directly: its
ΔW = scale · B A, with the spectrum taken from the small r×r core.

Gemma-style RMSNorms scale by ``1 + w``, not ``w`` (``Gemma3RMSNorm``), so for them the norm
rows use the effective scale: ‖ΔW‖ / ‖1 + W‖ and the cosine of 1 + W with 1 + W' (row field
``norm_offset`` = 1). Dividing by ‖W‖, with W near 0, would overstate the change (q/k-norm up to ~2×).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from implicit_it.analysis import Analysis, AnalysisResult, new_figure, register_result
from implicit_it.errors import ModelSpecError

# Above this many elements a tensor is read in row blocks of about this size.
BLOCK_ELEMENTS = 1 << 24

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
_KINDS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "embed_tokens": "embedding",
    "lm_head": "unembedding",
}


def describe_tensor(name: str) -> tuple[int | None, str, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> (3, "self_attn.q_proj", "q").

    Layers are numbered from 1 like the probes' residual layers (block l writes layer l);
    tensors outside the blocks get None."""
    stem = name.removesuffix(".weight").removesuffix(".bias")
    m = _LAYER.search(stem)
    module = m.group(2) if m else stem.removeprefix("model.")
    last = module.rsplit(".", 1)[-1]
    if last in _KINDS:
        kind = _KINDS[last]
    elif "norm" in last:
        kind = "norm" if m else "final_norm"
    else:
        kind = "other"
    if name.endswith(".bias"):
        kind += "_bias"
    return (int(m.group(1)) + 1 if m else None), module, kind


# ------------------------------------------------------------------ reading checkpoints


def checkpoint_dir(spec: str) -> Path:
    """The directory of safetensors behind a model spec (GGUF specs: the dequantized cache,
    created on first use; hub ids: the local snapshot, downloaded unless offline)."""
    from implicit_it.models import dequantize_gguf_to_cache, hub_offline, resolve_model_spec

    p = Path(spec).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return p
    source = resolve_model_spec(spec)
    if source.gguf_file:
        return dequantize_gguf_to_cache(source)[0]
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source.path, allow_patterns=["*.safetensors", "*.json"], local_files_only=hub_offline()))
    return Path(source.path)


class SafetensorsCheckpoint:
    """Lazy access to every tensor of an HF directory (single file or sharded with an index)."""

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f.name for f in self.directory.glob("*.safetensors") if not f.name.startswith("adapter_"))
            if not files:
                raise ModelSpecError(
                    f"{self.directory}: no *.safetensors weights "
                    "(pytorch .bin checkpoints are not streamed; re-save with safe_serialization)"
                )
            weight_map = {}
        self._handles = {f: safe_open(str(self.directory / f), framework="pt") for f in files}
        if not weight_map:
            weight_map = {k: f for f, h in self._handles.items() for k in h.keys()}
        self.weight_map: dict[str, str] = weight_map
        self.norm_offset = norm_offset(self.directory)

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.weight_map[name]].get_slice(name).get_shape())

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._handles[self.weight_map[name]].get_slice(name)[start:stop].float()

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.weight_map[name]].get_tensor(name).float()


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read directly: ``delta(name)`` is ``scale · B A`` for adapted tensors."""

    directory: Path
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # base tensor name -> (A, B, scale)
    base_model: str | None

    @classmethod
    def load(cls, directory: str | Path) -> "LoraAdapter":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = json.loads((directory / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ModelSpecError(f"{directory}/adapter_config.json: peft_type {cfg.get('peft_type')!r} is not LORA")
        if cfg.get("use_dora"):
            raise ModelSpecError(
                f"{directory}/adapter_config.json: DoRA adapters are not supported (merge the adapter and pass the merged directory)"
            )
        weights_file = directory / "adapter_model.safetensors"
        if not weights_file.is_file():
            raise ModelSpecError(f"{directory}: no adapter_model.safetensors")
        tensors = load_file(str(weights_file))
        alpha, alpha_pattern = float(cfg.get("lora_alpha", 8)), cfg.get("alpha_pattern") or {}
        factors = {}
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            r = a.shape[0]
            mod_alpha = next((float(v) for pat, v in alpha_pattern.items() if re.search(pat, module)), alpha)
            scale = mod_alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
            factors[module + ".weight"] = (a.float(), b.float(), scale)
        return cls(directory, factors, cfg.get("base_model_name_or_path"))

    def delta(self, name: str) -> torch.Tensor | None:
        if name not in self.factors:
            return None
        a, b, scale = self.factors[name]
        return scale * (b @ a)

    def singular_values(self, name: str) -> torch.Tensor:
        """σ(scale · B A) from the r×r core R_B R_Aᵀ (QR of both factors): no m×n SVD."""
        a, b, scale = self.factors[name]
        rb = torch.linalg.qr(b.double())[1]
        ra = torch.linalg.qr(a.double().T)[1]
        return torch.linalg.svdvals(scale * rb @ ra.T)


# ------------------------------------------------------------------ per-tensor statistics


def spectrum_stats(singular_values: torch.Tensor, top_k: int) -> dict[str, float]:
    """Effective rank exp(H(σ/Σσ)) and the share of ‖ΔW‖²_F in the top-k singular values."""
    s = singular_values.double().clamp(min=0)
    total = float(s.sum())
    if total <= 0:
        return {"effective_rank": 0.0, "topk_energy": float("nan")}
    p = s / total
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    energy = s.square()
    return {"effective_rank": math.exp(entropy), "topk_energy": float(energy.sort(descending=True).values[:top_k].sum() / energy.sum())}


class _Accumulator:
    """Sums over row blocks: ‖W‖², ‖W'‖², ⟨W, W'⟩, ‖ΔW‖², ‖ΔW_rows∈R‖², and the Gram matrix of ΔW
    on its smaller side (ΔWᵀΔW over row blocks; ΔWΔWᵀ for a wide matrix, read in one block)."""

    def __init__(self, gram: bool, wide: bool = False):
        self.wide = wide  # Gram on the row side (decided by the whole tensor's shape, not a block's)
        self.base_sq = self.var_sq = self.dot = self.delta_sq = self.rule_rows_sq = 0.0
        self.gram: torch.Tensor | None = None
        self.want_gram = gram

    def add(self, w: torch.Tensor, delta: torch.Tensor, rule_rows: torch.Tensor | None) -> None:
        # three dot products give all the norms: ‖W'‖² = ‖W‖² + 2⟨W, ΔW⟩ + ‖ΔW‖², ⟨W, W'⟩ = ‖W‖² + ⟨W, ΔW⟩.
        # float32 BLAS dots suffice: the cosine depends on ⟨W, ΔW⟩/‖W‖² and ‖ΔW‖²/‖W‖² only, so the
        # rounding of ‖W‖² (~1e-6 relative) cancels, and ‖ΔW‖² is summed from ΔW itself
        wf, df = w.reshape(-1), delta.reshape(-1)
        w_sq, w_d, d_sq = float(wf @ wf), float(wf @ df), float(df @ df)
        self.base_sq += w_sq
        self.var_sq += w_sq + 2 * w_d + d_sq
        self.dot += w_sq + w_d
        self.delta_sq += d_sq
        if rule_rows is not None and len(rule_rows):
            self.rule_rows_sq += float(delta[rule_rows].double().square().sum())
        if self.want_gram and delta.dim() == 2 and d_sq > 0:
            # float64: a float32 Gram's rounding (~1e-7 of σ_max²) turns zero singular values into ~3e-4 σ_max,
            # which inflates the effective rank of a low-rank ΔW
            dm = delta.double()
            g = dm @ dm.T if self.wide else dm.T @ dm
            self.gram = g if self.gram is None else self.gram + g


def tensor_row(
    name: str, acc: _Accumulator, singular_values: torch.Tensor | None, *, shape: Sequence[int], top_k: int, status: str
) -> dict[str, Any]:
    layer, module, kind = describe_tensor(name)
    base_norm, var_norm = math.sqrt(acc.base_sq), math.sqrt(acc.var_sq)
    row = {
        "tensor": name,
        "layer": layer,
        "module": module,
        "kind": kind,
        "shape": list(shape),
        "status": status,
        "base_norm": base_norm,
        "delta_norm": math.sqrt(acc.delta_sq),
        "relative_delta": math.sqrt(acc.delta_sq) / base_norm if base_norm > 0 else (0.0 if acc.delta_sq == 0 else math.inf),
        "cosine": acc.dot / (base_norm * var_norm) if base_norm > 0 and var_norm > 0 else float("nan"),
        "effective_rank": float("nan"),
        "topk_energy": float("nan"),
    }
    if acc.delta_sq == 0 and len(shape) == 2:
        row["effective_rank"] = 0.0
    elif singular_values is not None:
        row.update(spectrum_stats(singular_values, top_k))
    return row


# ------------------------------------------------------------------ the analysis


PLOT_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "norm")


@register_result
class WeightDeltaResult(AnalysisResult):
    """``weights.json``: per variant, the rows of ``weights.parquet`` and the unembedding's rule-row share."""

    name = "weights"

    def to_frame(self) -> Any:
        import pandas as pd

        rows = [
            {"variant": e["variant"], **{k: v for k, v in t.items() if k != "shape"}, "shape": "x".join(map(str, t["shape"]))}
            for e in self.entries
            for t in e["tensors"]
        ]
        frame = pd.DataFrame(rows)
        if len(frame):
            frame["layer"] = frame["layer"].astype("Int64")
        return frame

    def layer_means(self) -> Any:
        """Mean relative delta per (variant, layer, kind): the layer × module picture."""
        frame = self.to_frame()
        return frame.groupby(["variant", "layer", "kind"], dropna=False)["relative_delta"].mean().reset_index()

    def plot(self) -> Any:
        """‖ΔW‖/‖W‖ per block (rows, numbered from 1 as in ``weights.parquet``) and projection (columns),
        one panel per variant on one colour scale; tensors of the same kind in a block are averaged."""
        frame = self.to_frame()
        kinds = [k for k in PLOT_KINDS if len(frame) and k in set(frame["kind"])]
        grids = []
        for entry in self.entries:
            sub = frame[(frame["variant"] == entry["variant"]) & frame["layer"].notna()] if len(frame) else frame
            n_layers = int(sub["layer"].max()) if len(sub) else 0
            grid = np.full((n_layers, len(kinds)), np.nan)
            for (layer, kind), value in sub.groupby(["layer", "kind"])["relative_delta"].mean().items() if len(sub) else []:
                if kind in kinds:
                    grid[int(layer) - 1, kinds.index(kind)] = value
            grids.append(grid)
        finite = [v for g in grids for v in g[np.isfinite(g)].tolist()]
        vmax = max(finite, default=1.0) or 1.0
        n = len(self.entries)
        fig, axes = new_figure(1, n, figsize=(2.4 + 2.6 * n, 4.2), squeeze=False, layout="constrained")
        image = None
        for i, (ax, entry, grid) in enumerate(zip(axes[0], self.entries, grids, strict=True)):
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(entry["variant"], fontsize=9)
            ax.set_xticks(range(len(kinds)), kinds, fontsize=7)
            ticks = list(range(0, grid.shape[0], max(1, grid.shape[0] // 9)))
            ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
            if i == 0:
                ax.set_ylabel("block")
        if image is not None:
            fig.colorbar(image, ax=list(axes[0]), label="‖ΔW‖ / ‖W‖", shrink=0.85)
        fig.suptitle("weight deltas against the base, per block and projection", fontsize=10)
        return fig


class WeightDelta(Analysis):
    """Per-tensor deltas of one variant (a model spec or a LoRA adapter directory) against a base.

    ``rule_token_ids``: rows of the unembedding to report the share of ‖ΔW_U‖² on (the rule
    adapter's tokens and EOS). ``spectrum=False`` skips the singular values (the costly part)."""

    name = "weights"

    def __init__(self, *, rule_token_ids: Sequence[int] = (), top_k: int = 8, spectrum: bool = True, block_elements: int = BLOCK_ELEMENTS):
        self.rule_token_ids = sorted(set(rule_token_ids))
        self.top_k, self.spectrum, self.block_elements = top_k, spectrum, block_elements

    @classmethod
    def for_diff(cls, diff: Any, rule_token_ids: Sequence[int] = ()) -> "WeightDelta":
        """As :class:`~.layer_diff.LayerDiff` configures it (a checkpoint analysis: ``run(base_dir, variant_dir, label=)``)."""
        return cls(rule_token_ids=rule_token_ids, spectrum=diff.spectrum)

    def run(self, base: str | Path, variant: str | Path, *, label: str | None = None) -> WeightDeltaResult:
        import time

        t0 = time.perf_counter()
        base_ckpt = SafetensorsCheckpoint(base)
        variant_dir = Path(variant)
        adapter = LoraAdapter.load(variant_dir) if (variant_dir / "adapter_config.json").is_file() else None
        var_ckpt = None if adapter else SafetensorsCheckpoint(variant_dir)
        unembed = _unembedding_name(base_ckpt.names())
        tensors = list(self._rows(base_ckpt, var_ckpt, adapter, unembed))
        entry = {
            "variant": label or str(variant),
            "base": str(base),
            "lora": adapter is not None,
            "top_k": self.top_k,
            "tensors": tensors,
            "n_tensors_changed": sum(t["delta_norm"] > 0 for t in tensors),
            "unembedding_rule_rows": self._rule_rows(tensors, unembed, base_ckpt),
            "seconds": time.perf_counter() - t0,
        }
        return WeightDeltaResult([entry])

    def _rows(
        self, base: SafetensorsCheckpoint, variant: SafetensorsCheckpoint | None, adapter: LoraAdapter | None, unembed: str | None
    ) -> Iterator[dict[str, Any]]:
        names = base.names()
        if variant is not None:
            names += [n for n in variant.names() if n not in base.weight_map]
        if adapter is not None:
            unknown = sorted(set(adapter.factors) - set(base.weight_map))
            if unknown:
                raise ModelSpecError(f"{adapter.directory}: adapter targets tensors the base does not have, e.g. {unknown[0]}")
        for name in names:
            in_base = name in base.weight_map
            in_var = variant is None or name in variant.weight_map
            shape = base.shape(name) if in_base else variant.shape(name)  # type: ignore[union-attr]
            if in_base and in_var and variant is not None and variant.shape(name) != shape:
                raise ModelSpecError(
                    f"tensor {name}: shape {list(shape)} in the base but {list(variant.shape(name))} in the variant "
                    "(not the same architecture)"
                )
            status = "both" if in_base and in_var else ("added" if in_var else "removed")
            rule_rows = torch.tensor(self.rule_token_ids, dtype=torch.long) if name == unembed and self.rule_token_ids else None
            yield self._one(name, shape, status, base if in_base else None, variant if in_var else None, adapter, rule_rows)

    def _one(
        self,
        name: str,
        shape: tuple[int, ...],
        status: str,
        base: SafetensorsCheckpoint | None,
        variant: SafetensorsCheckpoint | None,
        adapter: LoraAdapter | None,
        rule_rows: torch.Tensor | None,
    ) -> dict[str, Any]:
        matrix = len(shape) == 2
        lora_svd = adapter is not None and name in adapter.factors
        n_rows = shape[0] if shape else 1
        wide = matrix and shape[1] > shape[0]  # its Gram (ΔWΔWᵀ) needs whole rows; such tensors are never the huge ones
        acc = _Accumulator(gram=self.spectrum and matrix and not lora_svd, wide=wide)
        per_row = max(1, math.prod(shape[1:]))
        step = n_rows if wide or math.prod(shape) <= self.block_elements else max(1, self.block_elements // per_row)
        lora_delta = adapter.delta(name) if lora_svd else None  # type: ignore[union-attr]
        ckpt = base if base is not None else variant
        kind = describe_tensor(name)[2]
        offset = ckpt.norm_offset if ckpt is not None and kind in ("norm", "final_norm") else 0.0
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            w = _read(base, name, start, stop, shape)
            if variant is not None:
                delta = _read(variant, name, start, stop, shape) - w
            else:
                delta = lora_delta[start:stop] if lora_delta is not None else torch.zeros_like(w)
            local = rule_rows[(rule_rows >= start) & (rule_rows < stop)] - start if rule_rows is not None else None
            acc.add(w + offset if offset else w, delta, local)  # the effective scale of a (1 + w) norm
        sv = None
        if lora_svd and self.spectrum:
            sv = adapter.singular_values(name)  # type: ignore[union-attr]
        elif acc.gram is not None:
            sv = torch.linalg.eigvalsh(acc.gram).clamp(min=0).sqrt()
        row = tensor_row(name, acc, sv, shape=shape, top_k=self.top_k, status=status)
        row["rule_rows_delta_sq"] = acc.rule_rows_sq
        row["norm_offset"] = offset
        return row

    def _rule_rows(self, tensors: list[dict[str, Any]], unembed: str | None, base: SafetensorsCheckpoint) -> dict[str, Any] | None:
        """Share of ‖ΔW_U‖²_F on the rule tokens' rows, against their share of rows (enrichment)."""
        row = next((t for t in tensors if t["tensor"] == unembed), None)
        if row is None or not self.rule_token_ids:
            return None
        total = row["delta_norm"] ** 2
        n_vocab = base.shape(unembed)[0]
        share = row["rule_rows_delta_sq"] / total if total > 0 else float("nan")
        expected = len(self.rule_token_ids) / n_vocab
        return {
            "tensor": unembed,
            "tied_to_embedding": unembed.endswith("embed_tokens.weight"),
            "n_rule_tokens": len(self.rule_token_ids),
            "share_of_delta": share,
            "share_of_rows": expected,
            "enrichment": share / expected if total > 0 else float("nan"),
        }


GEMMA_NORM_MODEL_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text")


def norm_offset(directory: str | Path) -> float:
    """1.0 when the checkpoint's RMSNorms scale by ``1 + w`` (Gemma, Gemma 2, Gemma 3), else 0.0.

    Read from ``config.json``: the model type (or its ``text_config``'s) or a Gemma architecture."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return 0.0
    cfg = json.loads(path.read_text())
    configs = [cfg] + ([cfg["text_config"]] if isinstance(cfg.get("text_config"), dict) else [])
    for c in configs:
        if str(c.get("model_type", "")) in GEMMA_NORM_MODEL_TYPES:
            return 1.0
        if any(str(a).startswith("Gemma") for a in c.get("architectures") or []):
            return 1.0
    return 0.0


def _read(ckpt: SafetensorsCheckpoint | None, name: str, start: int, stop: int, shape: Sequence[int]) -> torch.Tensor:
    if ckpt is None:  # the tensor exists only on the other side: zeros
        return torch.zeros((stop - start, *shape[1:]))
    if len(shape) == 0:
        return ckpt.get(name).reshape(1)
    return ckpt.rows(name, start, stop)


def _unembedding_name(names: Sequence[str]) -> str | None:
    """``lm_head.weight``, or the embedding when the checkpoint ties them (no lm_head saved)."""
    if "lm_head.weight" in names:
        return "lm_head.weight"
    return next((n for n in names if n.endswith("embed_tokens.weight")), None)
