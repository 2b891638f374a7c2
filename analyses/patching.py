"""What every causal analysis shares: texts with their position classes, one (possibly patched) forward
to the log-probs at scored response positions, the variant as the reference, and weights swapped in place.

*Scored positions*: of each held-out text (an instruction with a response, in the chat format), the
first ``response_tokens`` positions that predict a response token, and the one that predicts EOS
(when the text was not truncated). Every forward is one nnsight trace of the model (edits, if any,
are written inside it); the log-probs come from the exact logit lens at the last layer, which is the
model's own output, applied only at the scored positions (a 262k vocabulary stays affordable).

*Recovered fraction* of a modified base (a hybrid): 1 − Σ KL(variant ‖ hybrid) / Σ KL(variant ‖ base),
summed over the scored positions: 1 is the variant, 0 the base (negative: further than the base).

*Weights in place*: a hybrid is the base model with some parameters overwritten by the variant's
tensors (or edits of them), streamed one tensor at a time from the variant's checkpoint; restoring
copies the base checkpoint's tensors back, so the base is bit-identical afterwards and no second
full copy of a model is held (:class:`WeightSwap`). Memory: the variant's reference log-probs,
positions × vocabulary × 4 bytes (8 texts × 33 positions × 262,144 ≈ 280 MB for Gemma-3).
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from implicit_it.analysis import Analysis, AnalysisResult
from implicit_it.errors import UserError
from implicit_it.formats import ChatFormat, continuation_ids, get_format, instruction_span, pad_batch
from implicit_it.lens import LogitLens, parse_layers
from implicit_it.rules import RuleAdapter
from implicit_it.stats import cluster_ratio_with_ci

from .delta_pass import FIT, HELDOUT, DiffText, EncodedText, encode_texts, length_batches, rule_scores_at, split_halves
from .rule_family import rowdot
from .weights import LoraAdapter, SafetensorsCheckpoint, checkpoint_dir, describe_tensor

POSITION_CLASSES = ("all", "instruction", "tags", "response")
Edit = Callable[[Any, "PatchBatch"], None]  # (the traced decoder, the batch) -> writes inside the trace


@dataclass(frozen=True)
class MechText(EncodedText):
    """An encoded text (see :class:`~.delta_pass.EncodedText`) with its instruction's end and scored columns."""

    instruction_end: int
    scored: tuple[int, ...]  # columns whose next token is scored
    eos_col: int | None  # the column that predicts EOS (None: truncated)
    half: int

    def columns(self, position_class: str) -> list[int]:
        """Columns of a position class: the instruction's tokens, the template's (BOS and tags), the response's, or all."""
        n = len(self.ids)
        instruction = range(self.instruction_start, self.instruction_end)
        if position_class == "all":
            return list(range(n))
        if position_class == "instruction":
            return list(instruction)
        if position_class == "tags":
            return [c for c in range(self.n_prompt) if c not in instruction]
        if position_class == "response":
            return list(range(self.n_prompt, n))
        raise ValueError(f"position class {position_class!r}: choose from {POSITION_CLASSES}")


def encode_mech_texts(
    tokenizer: Any, fmt: str | ChatFormat, texts: Sequence[DiffText], *, max_length: int | None, response_tokens: int, seed: int = 0
) -> list[MechText]:
    """Texts encoded as in training (:func:`~.delta_pass.encode_texts`), split into halves by instruction."""
    fmt = get_format(fmt)
    halves = split_halves(texts, seed)
    end_ids = fmt.train_end_token_ids(tokenizer)
    out = []
    for e in encode_texts(tokenizer, fmt, texts, range(len(texts)), max_length):
        n = len(e.ids)
        first = list(range(e.n_prompt - 1, min(n - 1, e.n_prompt - 1 + response_tokens)))
        complete = list(e.ids[n - len(end_ids) :]) == end_ids and n - 1 - len(end_ids) >= e.n_prompt - 1
        eos_col = n - 1 - len(end_ids) if complete else None
        scored = tuple(sorted(set(first) | ({eos_col} if eos_col is not None else set())))
        _, ins_end = instruction_span(tokenizer, fmt, texts[e.text_index].instruction, e.ids[: e.n_prompt])
        out.append(
            MechText(
                e.text_index,
                e.ids,
                e.n_prompt,
                e.instruction_start,
                max(ins_end, e.instruction_start),
                scored,
                eos_col,
                halves[e.text_index],
            )
        )
    return out


@dataclass
class PatchBatch:
    """Texts forwarded together (right-padded) and where their scored positions are."""

    texts: list[MechText]
    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor  # (n,) batch row of each scored position
    cols: torch.Tensor  # (n,) its column
    halves: torch.Tensor  # (n,) FIT or HELDOUT
    eos_rows: torch.Tensor  # indices (into the n positions) that predict EOS
    first_rows: torch.Tensor  # indices of each text's first response position

    def class_index(self, position_class: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of every position of a class in this batch (padding excluded)."""
        rows, cols = [], []
        for r, t in enumerate(self.texts):
            c = t.columns(position_class)
            rows += [r] * len(c)
            cols += c
        return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)

    @property
    def mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]


def make_batches(texts: Sequence[MechText], pad_token_id: int, max_batch_tokens: int, device: torch.device) -> list[PatchBatch]:
    batches = []
    for group in length_batches(texts, max_batch_tokens):
        padded = pad_batch([t.ids for t in group], pad_token_id, side="right")
        rows = torch.cat([torch.full((len(t.scored),), r) for r, t in enumerate(group)])
        cols = torch.cat([torch.tensor(t.scored) for t in group])
        halves = torch.cat([torch.full((len(t.scored),), t.half) for t in group])
        offsets = torch.cumsum(torch.tensor([0] + [len(t.scored) for t in group]), 0)
        eos = [int(offsets[r]) + t.scored.index(t.eos_col) for r, t in enumerate(group) if t.eos_col is not None]
        batches.append(
            PatchBatch(
                list(group),
                {k: padded[k].to(device) for k in ("input_ids", "attention_mask")},
                rows,
                cols,
                halves,
                torch.tensor(eos, dtype=torch.long),
                offsets[:-1].clone(),
            )
        )
    return batches


def block_node(decoder: Any, layer: int, site: str = "resid") -> Any:
    """The traced module whose output is ``site`` at ``layer``: the residual after block ``layer`` (0: the
    embeddings), or that block's attention / MLP output (what the block adds, before its post-norm where it has one)."""
    if site == "resid":
        return decoder.embed_tokens if layer == 0 else decoder.layers[layer - 1]
    if layer == 0:
        raise ValueError(f"layer 0 (the embeddings) has no {site} output")
    block = decoder.layers[layer - 1]
    return block.self_attn if site == "attn" else block.mlp


def site_output(node: Any, site: str) -> Any:
    """The tensor of a traced node's output (attention returns a tuple whose first element is it)."""
    return node.output[0] if site == "attn" else node.output


class TracedModel:
    """One loaded model traced with nnsight; :meth:`logprobs` runs a batch with optional edits."""

    def __init__(self, loaded: Any, vocab_size: int):
        from implicit_it.hooking import nnsight_model

        self.loaded = loaded
        self.lm = nnsight_model(loaded)
        self.decoder = getattr(self.lm, loaded.model.base_model_prefix)
        self.n_layers = len(loaded.model.get_decoder().layers)
        self.lens = LogitLens(loaded.model)
        self.vocab_size = vocab_size

    @torch.no_grad()
    def logprobs(self, batch: PatchBatch, edit: Edit | None = None) -> torch.Tensor:
        """(n, V) float32 log-probs at the batch's scored positions, with ``edit`` applied inside the trace."""
        with self.lm.trace(**batch.inputs, logits_to_keep=1):
            if edit is not None:
                edit(self.decoder, batch)
            last = self.decoder.layers[self.n_layers - 1].output.save()
        device = last.device
        hidden = last[batch.rows.to(device), batch.cols.to(device)]
        return self.lens.logprobs(hidden, vocab_size=self.vocab_size)

    @torch.no_grad()
    def residual_sums(self, batch: PatchBatch, layers: Sequence[int], rows: torch.Tensor) -> dict[int, torch.Tensor]:
        """Σ over the non-padding positions but the first (BOS, see :mod:`.steering`) of the batch rows ``rows``
        (bool, (B,)) of the residual after each of ``layers``: one trace, and only a (d,) vector per layer is kept."""
        mask = batch.mask.bool() & rows.to(batch.mask.device)[:, None]
        mask[:, 0] = False
        mask = mask.unsqueeze(-1)
        saved = {}
        with self.lm.trace(**batch.inputs, logits_to_keep=1):
            for layer in sorted(layers):
                out = block_node(self.decoder, layer).output
                saved[layer] = (out * mask.to(out.dtype)).sum(dim=(0, 1)).save()
        return {layer: v.detach().double() for layer, v in saved.items()}

    @torch.no_grad()
    def read(self, batch: PatchBatch, layer: int, sites: Sequence[str]) -> dict[str, torch.Tensor]:
        """The (B, T, d) output of each site at one layer (nothing else is kept)."""
        saved = {}
        with self.lm.trace(**batch.inputs, logits_to_keep=1):
            for site in ("attn", "mlp", "resid"):  # the order the block computes them in
                if site in sites:
                    saved[site] = site_output(block_node(self.decoder, layer, site), site).save()
        return {site: v.detach().clone() for site, v in saved.items()}


@dataclass
class Recovery:
    """Sums over scored positions for one hybrid: KL to the variant (all, first position) and behaviour proxies, and
    per text the KL of the hybrid and of the base over the positions scored, for an interval over texts."""

    kl: float = 0.0
    kl_first: float = 0.0
    eos_prob: float = 0.0
    template_prob: float = 0.0
    n_eos: int = 0
    n_first: int = 0
    text_kl: list[torch.Tensor] = field(default_factory=list)  # per batch: (texts,) the hybrid's summed KL
    text_kl_base: list[torch.Tensor] = field(default_factory=list)  # per batch: (texts,) the base's summed KL
    text_positions: list[torch.Tensor] = field(default_factory=list)  # per batch: (texts,) positions scored

    def recovered_ci(self, seed: int = 0) -> tuple[float, float] | None:
        """The 95% interval of the recovered fraction 1 − Σ KL / Σ KL_base over texts (cluster bootstrap: the texts are
        the sample, their positions are not independent); None without two scored texts or with no base KL."""
        if not self.text_kl:
            return None
        scored = torch.cat(self.text_positions) > 0
        kl, base = torch.cat(self.text_kl)[scored].numpy(), torch.cat(self.text_kl_base)[scored].numpy()
        if len(kl) < 2 or base.sum() <= 0:
            return None
        _, (lo, hi) = cluster_ratio_with_ci(kl, base, seed=seed)
        return (1.0 - hi, 1.0 - lo)

    def as_dict(self, reference: "Reference") -> dict[str, Any]:
        ci = self.recovered_ci()
        return {
            "recovered": reference.recovered(self.kl, reference.kl_base),
            "recovered_ci": list(ci) if ci is not None else None,
            "texts": int(sum(int((n > 0).sum()) for n in self.text_positions)),
            "first_token_recovered": reference.recovered(self.kl_first, reference.kl_base_first),
            "kl": self.kl / max(reference.n_positions, 1),
            "eos_prob": self.eos_prob / self.n_eos if self.n_eos else None,
            "template_prob": self.template_prob / self.n_first if self.n_first else None,
        }


@dataclass
class Reference:
    """The variant's log-probs at every scored position (per batch), and the base's KL from it."""

    variant: list[torch.Tensor]
    eos_id: int
    template_id: int | None
    kl_base: float = 0.0
    kl_base_first: float = 0.0
    n_positions: int = 0
    base_kl: list[torch.Tensor] = field(default_factory=list)  # per batch: (n,) KL(variant ‖ base) at each position
    base: dict[str, float | None] = field(default_factory=dict)
    variant_proxies: dict[str, float | None] = field(default_factory=dict)

    def recovered(self, kl: float, kl_base: float) -> float | None:
        return 1.0 - kl / kl_base if kl_base > 0 else None

    def kl_rows(self, index: int, logprobs: torch.Tensor) -> torch.Tensor:
        """(n,) KL(variant ‖ model) in float64 at batch ``index``'s positions."""
        v = self.variant[index]
        return rowdot(v.exp(), v - logprobs)

    def score(self, index: int, batch: PatchBatch, logprobs: torch.Tensor, into: Recovery, rows: torch.Tensor | None = None) -> Recovery:
        """Add batch ``index``'s positions (or only ``rows``, a bool mask) to ``into``."""
        kl = self.kl_rows(index, logprobs)
        keep = torch.ones_like(kl, dtype=torch.bool) if rows is None else rows.to(kl.device)
        first = torch.zeros_like(keep)
        first[batch.first_rows.to(keep.device)] = True
        eos = torch.zeros_like(keep)
        eos[batch.eos_rows.to(keep.device)] = True
        into.kl += float(kl[keep].sum())
        into.kl_first += float(kl[keep & first].sum())
        into.eos_prob += float(logprobs[keep & eos, self.eos_id].exp().sum())
        into.n_eos += int((keep & eos).sum())
        if self.template_id is not None:
            into.template_prob += float(logprobs[keep & first, self.template_id].exp().sum())
        into.n_first += int((keep & first).sum())
        rows_kept, texts = batch.rows.to(kl.device)[keep], len(batch.texts)
        into.text_kl.append(torch.zeros(texts, dtype=torch.float64).index_add_(0, rows_kept.cpu(), kl[keep].double().cpu()))
        base = self.base_kl[index][keep.to(self.base_kl[index].device)]
        into.text_kl_base.append(torch.zeros(texts, dtype=torch.float64).index_add_(0, rows_kept.cpu(), base.double().cpu()))
        into.text_positions.append(torch.zeros(texts, dtype=torch.long).index_add_(0, rows_kept.cpu(), torch.ones_like(rows_kept.cpu())))
        return into


class PatchSetup:
    """The base (traced, patched in place), the variant, the texts, the reference and the rule adapter.

    The variant is either loaded (``variant``, read only) or, to hold one model only, the base itself with every
    changed tensor swapped in for the variant's passes (``variant=None`` with ``swap``): :meth:`as_variant`."""

    def __init__(
        self,
        base: Any,
        variant: Any | None,
        texts: Sequence[DiffText],
        *,
        fmt: str | ChatFormat,
        max_length: int | None,
        response_tokens: int,
        max_batch_tokens: int,
        swap: "WeightSwap | None" = None,
        adapter: RuleAdapter | None = None,
        seed: int = 0,
    ):
        tb = base.tokenizer
        if variant is None and swap is None:
            raise ValueError("give the loaded variant, or a WeightSwap to run the variant in place of the base")
        if variant is not None and len(variant.tokenizer) != len(tb):
            raise UserError(f"{variant.source.spec}: its tokenizer differs from the base's; patching needs one vocabulary")
        self.fmt = get_format(fmt)
        self.swap = swap
        self.adapter = adapter if adapter is not None else RuleAdapter(tb)
        head = base.model.get_output_embeddings().weight
        self.vocab_size = min(len(tb), head.shape[0])
        self.base = TracedModel(base, self.vocab_size)
        self.variant = TracedModel(variant, self.vocab_size) if variant is not None else None
        if self.variant is not None and self.base.n_layers != self.variant.n_layers:
            raise UserError("base and variant have different numbers of layers")
        self.n_layers = self.base.n_layers
        self.texts = encode_mech_texts(tb, self.fmt, texts, max_length=max_length, response_tokens=response_tokens, seed=seed)
        if not self.texts:
            raise UserError("no text has a response position to score (prompts longer than max_length?)")
        self.batches = make_batches(self.texts, tb.pad_token_id, max_batch_tokens, head.device)
        eos_id = self.fmt.train_end_token_ids(tb)[-1]
        tag = continuation_ids(tb, self.fmt.user_tag) if self.fmt.user_tag else []
        with self.as_variant() as v:
            variant_lp = [v.logprobs(b) for b in self.batches]
        self.reference = ref = Reference(variant_lp, int(eos_id), tag[0] if tag else None)
        base_rec, var_rec = Recovery(), Recovery()
        for i, b in enumerate(self.batches):
            lp = self.base.logprobs(b)
            kl = ref.kl_rows(i, lp)
            ref.base_kl.append(kl)
            ref.kl_base += float(kl.sum())
            ref.kl_base_first += float(kl[b.first_rows.to(kl.device)].sum())
            ref.n_positions += len(kl)
            ref.score(i, b, lp, base_rec)
            ref.score(i, b, ref.variant[i], var_rec)
        ref.base = base_rec.as_dict(ref)
        ref.variant_proxies = var_rec.as_dict(ref)

    @contextlib.contextmanager
    def as_variant(self) -> Iterator[TracedModel]:
        """The variant to run: the loaded one, or the base with every changed tensor swapped in (restored on exit)."""
        if self.variant is not None:
            yield self.variant
            return
        assert self.swap is not None
        with self.swap.hybrid(self.swap.changed):
            yield self.base

    def evaluate(self, edit: Edit | None = None) -> dict[str, float | None]:
        """The base run over every batch (with ``edit`` in each trace), scored against the variant."""
        return self._scored(lambda i, b: self.base.logprobs(b, edit), [None])[0]

    def evaluate_halves(self, edit: Edit | None = None) -> list[dict[str, float | None]]:
        """Like :meth:`evaluate`, scored separately on the fit and the held-out half (one pass)."""
        return self._scored(lambda i, b: self.base.logprobs(b, edit), [FIT, HELDOUT])

    def rule_recovery(self) -> list[dict[str, float | None]]:
        """The rule adapter on the base (the paper's product of experts), scored on the fit and held-out halves."""

        def combined(i: int, b: PatchBatch) -> torch.Tensor:
            lp = self.base.logprobs(b)
            _, scores = rule_scores_at(self.adapter, b.texts, b.rows, b.cols, self.vocab_size)
            return torch.log_softmax(lp + scores.to(lp.device), dim=-1)

        return self._scored(combined, [FIT, HELDOUT])

    def _scored(self, logprobs: Callable[[int, PatchBatch], torch.Tensor], halves: Sequence[int | None]) -> list[dict[str, float | None]]:
        recs, kl_base = [Recovery() for _ in halves], [0.0 for _ in halves]
        for i, b in enumerate(self.batches):
            lp = logprobs(i, b)
            for j, half in enumerate(halves):
                keep = None if half is None else b.halves == half
                self.reference.score(i, b, lp, recs[j], keep)
                base_kl = self.reference.base_kl[i]
                kl_base[j] += float(base_kl.sum() if keep is None else base_kl[keep.to(base_kl.device)].sum())
        out = []
        for rec, kb in zip(recs, kl_base, strict=True):
            d = rec.as_dict(self.reference)
            d["recovered"] = self.reference.recovered(rec.kl, kb)
            out.append(d)
        return out


# ------------------------------------------------------------------ weights swapped in place


def tensor_group(name: str) -> str:
    """attention, mlp, norms, embeddings or other: the kinds weight patching swaps together."""
    _, module, kind = describe_tensor(name)
    if module.startswith("self_attn"):
        return "attention"
    if module.startswith("mlp"):
        return "mlp"
    if kind in ("embedding", "unembedding"):
        return "embeddings"
    if "norm" in kind:
        return "norms"
    return "other"


class VariantWeights:
    """The variant's tensors by parameter name: from its safetensors, or base + scale·BA for a LoRA adapter."""

    def __init__(self, variant_spec: str, base: SafetensorsCheckpoint):
        path = Path(variant_spec)
        self.lora = LoraAdapter.load(path) if (path / "adapter_config.json").is_file() else None
        self.ckpt = None if self.lora is not None else SafetensorsCheckpoint(checkpoint_dir(variant_spec))
        self.base = base

    def get(self, name: str) -> torch.Tensor:
        if self.lora is not None:
            delta = self.lora.delta(name)
            return self.base.get(name) if delta is None else self.base.get(name) + delta
        assert self.ckpt is not None
        if name not in self.ckpt.weight_map:
            raise KeyError(f"{self.ckpt.directory}: no tensor {name!r}")
        return self.ckpt.get(name)


class WeightSwap:
    """Overwrites the base model's parameters in place and restores them from the base checkpoint.

    ``changed``: the parameters whose variant tensor differs from the base's (the only ones worth
    swapping; frozen embeddings stay out). Use :meth:`hybrid` as a context manager: whatever
    happens inside, every touched parameter is copied back from the base checkpoint on exit."""

    def __init__(self, model: torch.nn.Module, base_spec: str, variant_spec: str):
        self.model = model
        self.base = SafetensorsCheckpoint(checkpoint_dir(base_spec))
        self.variant = VariantWeights(variant_spec, self.base)
        self.params = dict(model.named_parameters())
        missing = [n for n in self.params if n not in self.base.weight_map]
        if missing:
            raise UserError(f"{self.base.directory}: the base checkpoint lacks parameters of the loaded model, e.g. {missing[:3]}")
        self.changed = [n for n in self.params if not torch.equal(self.base.get(n), self.variant.get(n))]
        self.touched: set[str] = set()

    def put(self, name: str, tensor: torch.Tensor) -> None:
        param = self.params[name]
        with torch.no_grad():
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
        self.touched.add(name)

    def restore(self) -> None:
        for name in sorted(self.touched):
            with torch.no_grad():
                self.params[name].copy_(self.base.get(name).to(device=self.params[name].device, dtype=self.params[name].dtype))
        self.touched.clear()

    @contextlib.contextmanager
    def hybrid(self, names: Sequence[str], make: Callable[[str], torch.Tensor] | None = None) -> Iterator[None]:
        """The base with ``names`` set to the variant's tensors (or ``make(name)``), restored on exit."""
        try:
            for name in names:
                self.put(name, make(name) if make is not None else self.variant.get(name))
            yield
        finally:
            self.restore()

    def size(self, names: Sequence[str]) -> int:
        return sum(self.params[n].numel() for n in names)


# ------------------------------------------------------------------ the interface of the causal analyses


@dataclass
class Behaviour:
    """Prompts every system generates on (greedy) for the steering comparison, and an optional scorer of the
    outputs (e.g. IFEval loose accuracy, built by the application: this room does not import the evaluation)."""

    prompts: list[str]
    score: Callable[[list[str]], dict[str, float]] | None = None
    label: str = "prompts"


@dataclass
class MechContext:
    """What one variant's causal analyses share: the patch set-up (both models, texts, reference, rule adapter),
    the in-place weight swap of the base, the behaviour prompts and the variant's label."""

    setup: PatchSetup
    swap: WeightSwap
    label: str
    behaviour: Behaviour | None = None
    max_new_tokens: int = 96
    batch_size: int = 8
    progress: Callable[[int], None] | None = None

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(1)


class CausalAnalysis(Analysis):
    """A causal analysis: ``run(ctx)`` on a :class:`MechContext` gives a registered result; ``steps(ctx)`` says
    how many forward sweeps it will make (the progress bar's length)."""

    name: str

    def steps(self, ctx: MechContext) -> int:
        return 1

    @abstractmethod
    def run(self, ctx: MechContext) -> AnalysisResult:  # type: ignore[override]
        ...


def block_layers(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """Blocks 1..n named by a layer spec (the embeddings, 0, are not a block)."""
    return [b for b in parse_layers(spec, n_layers) if b >= 1]


def heatmap(ax: Any, grid: Any, rows: Sequence[str], cols: Sequence[str], *, vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """A recovered-fraction heatmap with the value written in each cell."""
    import numpy as np

    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=45 if max((len(c) for c in cols), default=0) > 3 else 0)
    if grid.size <= 120:
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < (vmin + vmax) / 2 else "k")
    return image
