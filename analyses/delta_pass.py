"""One forward pass of base and variant over the same texts, shared by the logit analyses.

A *text* is an instruction with a response (a data file's response, or the variant's own greedy
generation), in the experiment's chat format. Texts are batched by length and each model reads
each batch in **one traced forward** (nnsight, right-padded, ``logits_to_keep=1``), saving the
residual stream after each requested layer. At every position that predicts a response token (or
EOS) each model's log-probs come from the logit lens (:class:`implicit_it.lens.LogitLens`; layer
L, the last, is exactly the output), computed for many positions at once in preallocated buffers
whose size a memory budget sets (``lens_memory_mb``). Observers (the analyses) receive, per chunk
of positions, what is common to all layers (:class:`ChunkContext`: targets, response length so
far, and on demand the rule adapter's scores) and then, layer by layer, both models' full-vocabulary
log-probs (:class:`LensChunk`, whose derived tensors are computed once and shared by observers).

Texts are split by instruction into two halves with a seeded shuffle: the *fit* half runs first
and the *held-out* half second, so an analysis can fit on one and score on the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from pydantic import BaseModel

from implicit_it.analysis import Analysis, AnalysisResult
from implicit_it.errors import UserError
from implicit_it.formats import ChatFormat, encode_example, encode_prompt, get_format, instruction_offset, pad_batch
from implicit_it.lens import LogitLens, parse_layers
from implicit_it.rules import RuleAdapter

from .rule_family import row_centred, rowdot

FIT, HELDOUT = 0, 1


@dataclass(frozen=True)
class DiffText:
    instruction: str
    response: str
    origin: str  # "data" (the file's response) or "generation" (the variant's greedy output)
    instruction_index: int  # texts of one instruction stay in the same half


def texts_from_source(source: Any, *, limit: int | None = None) -> list[DiffText]:
    """Each instruction of a data file (a :class:`~implicit_it.probes.RankingSource`) with its own response."""
    n = len(source.instructions) if limit is None else min(limit, len(source.instructions))
    return [DiffText(source.instructions[i], source.pool[source.own_response[i]], "data", i) for i in range(n)]


def split_halves(texts: Sequence[DiffText], seed: int) -> list[int]:
    """Half (FIT or HELDOUT) of each text: instructions shuffled with ``seed``, first half fits."""
    instructions = sorted({t.instruction_index for t in texts})
    random.Random(seed).shuffle(instructions)
    fit = set(instructions[: (len(instructions) + 1) // 2])
    return [FIT if t.instruction_index in fit else HELDOUT for t in texts]


@dataclass(frozen=True)
class EncodedText:
    """A text's token ids in the chat format: ``n_prompt`` prompt tokens, then the response (+EOS)."""

    text_index: int
    ids: tuple[int, ...]
    n_prompt: int
    instruction_start: int  # prompt tokens before the instruction (the diversity rule's anchor)

    @property
    def n_scored(self) -> int:
        """Positions that predict a response token: the prompt's last token up to the one before the end."""
        return len(self.ids) - self.n_prompt


def encode_texts(
    tokenizer: Any, fmt: ChatFormat, texts: Sequence[DiffText], indices: Sequence[int], max_length: int | None
) -> list[EncodedText]:
    """Tokenize with the training encoder, cut from the right at ``max_length`` as the paper does;
    a text whose prompt alone does not fit has nothing to score and is left out."""
    out = []
    for i in indices:
        text = texts[i]
        if max_length is not None and len(encode_prompt(tokenizer, fmt, text.instruction)) >= max_length:
            continue
        ex = encode_example(tokenizer, fmt, text.instruction, text.response, max_length=max_length)
        prompt = ex.input_ids[: ex.n_prompt_tokens]
        if len(ex.input_ids) > ex.n_prompt_tokens:
            out.append(
                EncodedText(i, tuple(ex.input_ids), ex.n_prompt_tokens, instruction_offset(tokenizer, fmt, text.instruction, prompt))
            )
    return out


def length_batches(encoded: Sequence[EncodedText], max_batch_tokens: int) -> Iterator[list[EncodedText]]:
    """Longest texts first, as many per batch as fit ``rows * longest <= max_batch_tokens``."""
    batch: list[EncodedText] = []
    for e in sorted(encoded, key=lambda e: (-len(e.ids), e.text_index)):
        if batch and (len(batch) + 1) * len(batch[0].ids) > max_batch_tokens:
            yield batch
            batch = []
        batch.append(e)
    if batch:
        yield batch


@dataclass
class ChunkContext:
    """Positions of one chunk, shared by every layer: row i is the position of text
    ``text_indices[i]`` that predicts its response token ``n_generated[i]`` (a chunk may span texts
    of the same half). ``seen`` and ``rule_scores`` are computed on first use: a pass whose
    observers never read them does no rule-adapter work."""

    half: int
    text_indices: torch.Tensor  # (n,)
    origins: tuple[str, ...]  # (n,) each row's DiffText.origin
    n_generated: torch.Tensor  # (n,) response tokens before each position
    targets: torch.Tensor  # (n,) the token that follows in the text
    rules: Callable[[], tuple[torch.Tensor, torch.Tensor]] = field(repr=False, default=lambda: (torch.empty(0), torch.empty(0)))

    def rows_of(self, origin: str) -> torch.Tensor:
        """(n,) bool: the rows whose text has ``origin``."""
        return torch.tensor([o == origin for o in self.origins], device=self.targets.device)

    @cached_property
    def _rule_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rules()

    @property
    def seen(self) -> torch.Tensor:
        """(n, V) 1.0 where the token already occurred (the diversity rule's scope), else 0.0."""
        return self._rule_tensors[0]

    @property
    def rule_scores(self) -> torch.Tensor:
        """(n, V) the adapter's scores r(w, x), row-centred: its log-prob shift up to a per-position constant."""
        return self._rule_tensors[1]


class LensChunk:
    """Both models' log-probs (n, V) at one layer for one chunk, and what observers derive from
    them, each computed once into the pass's buffers. Valid only during ``observe``: the next
    chunk overwrites the buffers (copy what you keep)."""

    def __init__(
        self,
        base: torch.Tensor,
        variant: torch.Tensor,
        *,
        variant_probs: torch.Tensor | None = None,
        delta_buffer: torch.Tensor | None = None,
    ):
        self.base, self.variant = base, variant
        self._probs = variant_probs
        self._delta_buffer = delta_buffer
        self._delta: torch.Tensor | None = None

    @property
    def variant_probs(self) -> torch.Tensor:
        """p_variant(w)."""
        if self._probs is None:
            self._probs = self.variant.exp()
        return self._probs

    @property
    def delta(self) -> torch.Tensor:
        """log p_variant(w) − log p_base(w), elementwise in float32 (exact to one rounding of each)."""
        if self._delta is None:
            self._delta = torch.sub(self.variant, self.base, out=self._delta_buffer)
        return self._delta

    def kl(self) -> torch.Tensor:
        """(n,) KL(variant ‖ base) per row, float64: Σ_w p_v · (log p_v − log p_b), the difference
        taken before the sum so no two ~10-nat sums cancel (see :func:`rowdot`)."""
        return rowdot(self.variant_probs, self.delta)


class DeltaObserver:
    """What an analysis plugs into a pass: ``observe`` each (chunk, layer); ``end_half`` after each half."""

    def observe(self, ctx: ChunkContext, layer: int, lens: LensChunk) -> None:
        raise NotImplementedError

    def end_half(self, half: int) -> None:
        """Called after the fit half and after the held-out half; most observers need nothing here."""


@dataclass
class DeltaPassConfig:
    fmt: str | ChatFormat = "tulu"
    layers: str | Sequence[int] | None = "all"  # the output layer is always included
    max_length: int | None = 512
    max_batch_tokens: int = 2048  # tokens per traced forward (rows × longest text)
    lens_memory_mb: int = 1024  # the lens buffers: (positions, vocab) float32 tensors, several per model
    seed: int = 0


LENS_BUFFERS = 4  # (rows, vocab) float32 each: base and variant log-probs, the variant's probs, the delta (also the base's work space)


@dataclass
class DeltaPass:
    """Drives base and variant over ``texts`` and feeds each observer; see the module docstring."""

    base: Any  # LoadedModel
    variant: Any
    texts: Sequence[DiffText]
    adapter: RuleAdapter
    config: DeltaPassConfig = field(default_factory=DeltaPassConfig)

    def __post_init__(self) -> None:
        tb, tv = self.base.tokenizer, self.variant.tokenizer
        probe = "<|user|>\nHello there!\n<|assistant|>\nHi."
        if len(tb) != len(tv) or tb(probe)["input_ids"] != tv(probe)["input_ids"]:
            raise UserError(f"{self.variant.source.spec}: its tokenizer differs from the base's; logit deltas need the same vocabulary")
        self.fmt = get_format(self.config.fmt)
        self.n_layers = len(self.base.model.get_decoder().layers)
        if len(self.variant.model.get_decoder().layers) != self.n_layers:
            raise UserError("base and variant have different numbers of layers")
        self.layers = sorted(set(parse_layers(self.config.layers, self.n_layers)) | {self.n_layers})
        self.head_size = self.base.model.get_output_embeddings().weight.shape[0]
        self.vocab_size = min(len(tb), self.head_size)
        self.halves = split_halves(self.texts, self.config.seed)
        row_bytes = 4 * (LENS_BUFFERS * self.vocab_size + (self.head_size if self.head_size > self.vocab_size else 0))
        self.chunk_rows = max(1, self.config.lens_memory_mb * 2**20 // row_bytes)

    def run(self, observers: Sequence[DeltaObserver], *, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        """Feed every observer; returns counts (texts scored, skipped because the prompt is too long, positions)."""
        from implicit_it.hooking import nnsight_model

        counts = {"texts": 0, "skipped_texts": 0, "positions": 0}
        models = (self.base, self.variant)
        traced = [nnsight_model(m) for m in models]
        lenses = [LogitLens(m.model) for m in models]
        device = self.base.model.get_output_embeddings().weight.device
        buffers: list[torch.Tensor] = []
        was_training = [m.model.training for m in models]
        for m in models:
            m.model.eval()
        try:
            for half in (FIT, HELDOUT):
                indices = [i for i, h in enumerate(self.halves) if h == half]
                encoded = encode_texts(self.base.tokenizer, self.fmt, self.texts, indices, self.config.max_length)
                counts["texts"] += len(encoded)
                counts["skipped_texts"] += len(indices) - len(encoded)
                for batch in length_batches(encoded, self.config.max_batch_tokens):
                    counts["positions"] += self._batch(half, batch, traced, lenses, device, buffers, observers)
                    if progress is not None:
                        progress(len(batch))
                for obs in observers:
                    obs.end_half(half)
        finally:
            for m, mode in zip(models, was_training, strict=True):
                m.model.train(mode)
        return counts

    def _batch(
        self,
        half: int,
        batch: list[EncodedText],
        traced: list[Any],
        lenses: list[LogitLens],
        device: torch.device,
        buffers: list[torch.Tensor],
        observers: Sequence[DeltaObserver],
    ) -> int:
        """One traced forward per model over ``batch``, then the lens chunk by chunk, layer by layer."""
        from implicit_it.hooking import traced_residuals

        padded = pad_batch([e.ids for e in batch], self.base.tokenizer.pad_token_id, side="right")
        inputs = {k: padded[k].to(device) for k in ("input_ids", "attention_mask")}
        # (row, column) of every position that predicts a response token, text after text
        row_of = torch.cat([torch.full((e.n_scored,), r) for r, e in enumerate(batch)])
        col_of = torch.cat([torch.arange(e.n_prompt - 1, len(e.ids) - 1) for e in batch])
        with torch.no_grad():
            residuals = [traced_residuals(lm, inputs, self.layers) for lm in traced]
        hidden = [{layer: res[layer][row_of.to(device), col_of.to(device)] for layer in self.layers} for res in residuals]
        del residuals
        targets = padded["input_ids"][row_of, col_of + 1]
        n_generated = col_of - torch.tensor([batch[r].n_prompt - 1 for r in row_of.tolist()])
        text_of = torch.tensor([e.text_index for e in batch])[row_of]
        n = len(row_of)
        rows = min(n, self.chunk_rows)
        if not buffers or buffers[0].shape[0] < rows:
            buffers[:] = [torch.empty(rows, self.vocab_size, device=device) for _ in range(LENS_BUFFERS)]
            if self.head_size > self.vocab_size:
                buffers.append(torch.empty(rows, self.head_size, device=device))
        scratch = buffers[4] if len(buffers) > LENS_BUFFERS else None
        for p0 in range(0, n, self.chunk_rows):
            p1 = min(n, p0 + self.chunk_rows)
            texts = text_of[p0:p1]
            ctx = ChunkContext(
                half,
                texts,
                tuple(self.texts[i].origin for i in texts.tolist()),
                n_generated[p0:p1].to(device),
                targets[p0:p1].to(device),
                rules=lambda b=batch, s=slice(p0, p1): self._rules(b, row_of[s], col_of[s], device),
            )
            lp_base, lp_var, p_var, delta = (b[: p1 - p0] for b in buffers[:LENS_BUFFERS])
            for layer in self.layers:
                # the delta buffer is the base's work space until LensChunk.delta fills it
                base_lp = lenses[0].logprobs(hidden[0][layer][p0:p1], vocab_size=self.vocab_size, out=lp_base, work=delta, scratch=scratch)
                var_lp = lenses[1].logprobs(hidden[1][layer][p0:p1], vocab_size=self.vocab_size, out=lp_var, probs=p_var, scratch=scratch)
                chunk = LensChunk(base_lp, var_lp, variant_probs=p_var, delta_buffer=delta)
                for obs in observers:
                    obs.observe(ctx, layer, chunk)
        return n

    def _rules(
        self, batch: list[EncodedText], rows: torch.Tensor, cols: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seen, scores = rule_scores_at(self.adapter, batch, rows, cols, self.vocab_size)
        return seen.to(device), scores.to(device)


def rule_scores_at(
    adapter: RuleAdapter, batch: Sequence[EncodedText], rows: torch.Tensor, cols: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seen mask and the adapter's row-centred scores (n, V) at the positions (``rows`` index ``batch``,
    ``cols`` the column predicting the next token), text by text, on CPU where the adapter keeps its tables."""
    seen_parts, score_parts = [], []
    for r in torch.unique_consecutive(rows).tolist():
        e = batch[r]
        ids, positions = torch.tensor([e.ids]), cols[rows == r]
        response_start, instruction_start = torch.tensor([e.n_prompt]), torch.tensor([e.instruction_start])
        seen = adapter.seen(ids, positions.unsqueeze(0), response_start, instruction_start)
        scores = adapter.scores(ids, positions, response_start, instruction_start=instruction_start, seen=seen)
        seen_parts.append(seen[0, :, :vocab_size].float())
        score_parts.append(row_centred(scores[0, :, :vocab_size]))
    return torch.cat(seen_parts), torch.cat(score_parts)


class PassAnalysis(Analysis):
    """An analysis computed from a :class:`DeltaPass`; ``run`` gives it a pass of its own, and the
    CLI shares one pass between several (``observer`` per analysis, ``result`` at the end)."""

    def observer(self, delta_pass: DeltaPass) -> Any:
        """A :class:`DeltaObserver` whose ``result(label, counts)`` gives this analysis's :class:`AnalysisResult`."""
        raise NotImplementedError(f"{type(self).__name__} must say how it observes a delta pass")

    # The analysis's own options, declared where it is: a pydantic model whose fields ``for_diff`` passes to the
    # constructor. Set per study in ``run.diff.analysis_options.<name>`` (or ``iit diff --set``); None: no options.
    Options: ClassVar[type[BaseModel] | None] = None

    @classmethod
    def for_diff(cls, diff: Any) -> "PassAnalysis":
        """This analysis as :class:`~.layer_diff.LayerDiff` runs it: its declared ``Options`` (validated from
        ``diff.analysis_options``) as constructor arguments; with none, ``cls()``. Built-ins read shared settings
        (``top_n``, ``vocab``, ...) of ``diff`` instead."""
        options = diff.options_for(cls)
        return cls() if options is None else cls(**dict(options))

    def run(
        self,
        base: Any,
        variant: Any,
        texts: Sequence[DiffText],
        *,
        adapter: RuleAdapter | None = None,
        config: DeltaPassConfig | None = None,
        label: str | None = None,
    ) -> AnalysisResult:
        delta_pass = DeltaPass(base, variant, texts, adapter or RuleAdapter(base.tokenizer), config or DeltaPassConfig())
        observer = self.observer(delta_pass)
        counts = delta_pass.run([observer])
        return observer.result(label or variant.source.spec, counts)


def token_label(tokenizer: Any, token_id: int) -> str:
    """A readable form of one token (decoded text, repr-quoted so spaces and newlines show)."""
    return repr(tokenizer.decode([token_id]))


def rule_token_ids(adapter: RuleAdapter) -> dict[int, float]:
    """The uniform rule's token ids with their scores, and EOS (score NaN: a length-dependent ramp)."""
    ids = {r.token_id: r.score for r in adapter.resolved if r.token_id is not None}
    ids[int(adapter.eos_token_id)] = float("nan")
    return ids
