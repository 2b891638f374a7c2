"""One forward pass of base and variant over the same texts, shared by the logit analyses.

A *text* is an instruction with a response (a data file's response, or the variant's own greedy
generation), in the experiment's chat format. Both models read the same token ids with the
probes' prefix-reusing forward (:class:`implicit_it.probes.PairForward`); at every position that
predicts a response token (or EOS) each model's log-probs come from the logit lens after each
requested layer (layer L, the last, is exactly the output). Observers (the analyses) receive,
per chunk of positions, what is common to all layers (seen tokens, the rule adapter's scores,
response length so far) and then, layer by layer, the two models' full-vocabulary log-probs.

Texts are split by instruction into two halves with a seeded shuffle: the *fit* half runs first
and the *held-out* half second, so an analysis can fit on one and score on the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from implicit_it.analysis import Analysis
from implicit_it.formats import ChatFormat, get_format, instruction_offset
from implicit_it.probes.forward import PairForward, encode_groups
from implicit_it.probes.lens import LogitLens, parse_layers
from implicit_it.probes.pairs import Candidate, RankingGroup, RankingSource
from implicit_it.rules import RuleAdapter

from .rule_family import row_centred

FIT, HELDOUT = 0, 1


@dataclass(frozen=True)
class DiffText:
    instruction: str
    response: str
    origin: str  # "data" (the file's response) or "generation" (the variant's greedy output)
    instruction_index: int  # texts of one instruction stay in the same half


def texts_from_source(source: RankingSource, *, limit: int | None = None) -> list[DiffText]:
    """Each instruction of a data file with its own response."""
    n = len(source.instructions) if limit is None else min(limit, len(source.instructions))
    return [DiffText(source.instructions[i], source.pool[source.own_response[i]], "data", i) for i in range(n)]


def split_halves(texts: Sequence[DiffText], seed: int) -> list[int]:
    """Half (FIT or HELDOUT) of each text: instructions shuffled with ``seed``, first half fits."""
    instructions = sorted({t.instruction_index for t in texts})
    random.Random(seed).shuffle(instructions)
    fit = set(instructions[: (len(instructions) + 1) // 2])
    return [FIT if t.instruction_index in fit else HELDOUT for t in texts]


@dataclass
class ChunkContext:
    """Positions of one text, shared by every layer: position j predicts response token j."""

    text_index: int
    text: DiffText
    half: int
    n_generated: torch.Tensor  # (n,) response tokens before each position
    targets: torch.Tensor  # (n,) the token that follows in the text
    seen: torch.Tensor  # (n, V) 1.0 where the token already occurred (the diversity rule's scope), else 0.0
    rule_scores: torch.Tensor  # (n, V) the adapter's scores r(w, x), row-centred: its log-prob shift up to a per-position constant


class DeltaObserver:
    """What an analysis plugs into a pass: ``observe`` each (chunk, layer); ``end_half`` after each half."""

    def observe(self, ctx: ChunkContext, layer: int, base_lp: torch.Tensor, variant_lp: torch.Tensor) -> None:
        raise NotImplementedError

    def end_half(self, half: int) -> None:
        """Called after the fit half and after the held-out half; most observers need nothing here."""


@dataclass
class DeltaPassConfig:
    fmt: str | ChatFormat = "tulu"
    layers: str | Sequence[int] | None = "all"  # the output layer is always included
    max_length: int | None = 512
    max_batch_tokens: int = 2048
    chunk_positions: int = 64
    seed: int = 0


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
            raise ValueError(f"{self.variant.source.spec}: its tokenizer differs from the base's; logit deltas need the same vocabulary")
        self.fmt = get_format(self.config.fmt)
        self.fw_base = PairForward(self.base, max_batch_tokens=self.config.max_batch_tokens)
        self.fw_var = PairForward(self.variant, max_batch_tokens=self.config.max_batch_tokens)
        if self.fw_base.n_layers != self.fw_var.n_layers:
            raise ValueError("base and variant have different numbers of layers")
        self.n_layers = self.fw_base.n_layers
        self.layers = sorted(set(parse_layers(self.config.layers, self.n_layers)) | {self.n_layers})
        self.vocab_size = min(len(tb), self.base.model.get_output_embeddings().weight.shape[0])
        self.halves = split_halves(self.texts, self.config.seed)

    def run(self, observers: Sequence[DeltaObserver], *, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        """Feed every observer; returns counts (texts scored, skipped because the prompt is too long)."""
        tok = self.base.tokenizer
        source = RankingSource(tuple(t.instruction for t in self.texts), tuple(range(len(self.texts))),
                               tuple(t.response for t in self.texts))
        lens_b, lens_v = LogitLens(self.base.model), LogitLens(self.variant.model)
        counts = {"texts": 0, "skipped_texts": 0, "positions": 0}
        for half in (FIT, HELDOUT):
            groups = [RankingGroup(i, (Candidate(i, True),)) for i, h in enumerate(self.halves) if h == half]
            encoded = encode_groups(tok, self.fmt, source, groups, max_length=self.config.max_length)
            counts["texts"] += len(encoded)
            counts["skipped_texts"] += len(groups) - len(encoded)
            by_index = {e.group_index: e for e in encoded}
            batches = zip(self.fw_base.iter_batches(encoded, layers=self.layers), self.fw_var.iter_batches(encoded, layers=self.layers),
                          strict=True)
            for b_base, b_var in batches:
                for r, (gi, _) in enumerate(b_base.rows):
                    enc = by_index[gi]
                    text_index = groups[gi].instruction_index
                    counts["positions"] += self._text(text_index, enc, b_base, b_var, r, lens_b, lens_v, observers)
                if progress is not None:
                    progress(len(b_base.rows))
            for obs in observers:
                obs.end_half(half)
        return counts

    def _text(self, text_index: int, enc: Any, b_base: Any, b_var: Any, row: int, lens_b: LogitLens, lens_v: LogitLens,
              observers: Sequence[DeltaObserver]) -> int:
        text = self.texts[text_index]
        prompt, response = list(enc.prompt_ids), list(enc.responses[0])
        ids = torch.tensor([prompt + response])
        n = int(b_base.lengths[row])
        instruction_start = torch.tensor([instruction_offset(self.base.tokenizer, self.fmt, text.instruction, prompt)])
        response_start = torch.tensor([len(prompt)])
        v = self.vocab_size
        for j0 in range(0, n, self.config.chunk_positions):
            j1 = min(n, j0 + self.config.chunk_positions)
            positions = torch.arange(j0, j1) + len(prompt) - 1  # column of the token that predicts response token j
            seen = self.adapter.seen(ids, positions.unsqueeze(0), response_start, instruction_start)
            scores = self.adapter.scores(ids, positions, response_start, instruction_start=instruction_start, seen=seen)
            ctx = ChunkContext(text_index, text, self.halves[text_index], torch.arange(j0, j1), b_base.targets[row, j0:j1].cpu(),
                               seen[0, :, :v].float(), row_centred(scores[0, :, :v]))
            for layer in self.layers:
                base_lp = _within_vocab(lens_b.logprobs(b_base.residual[layer][row, j0:j1]).cpu(), v)
                var_lp = _within_vocab(lens_v.logprobs(b_var.residual[layer][row, j0:j1]).cpu(), v)
                for obs in observers:
                    obs.observe(ctx, layer, base_lp, var_lp)
        return n


def _within_vocab(logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Drop the padded embedding rows past the tokenizer's vocabulary and renormalise."""
    return logprobs if logprobs.shape[1] == vocab_size else logprobs[:, :vocab_size].log_softmax(-1)


class PassAnalysis(Analysis):
    """An analysis computed from a :class:`DeltaPass`; ``run`` gives it a pass of its own, and the
    CLI shares one pass between several (``observer`` per analysis, ``result`` at the end)."""

    def observer(self, delta_pass: DeltaPass) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must say how it observes a delta pass")

    def run(self, base: Any, variant: Any, texts: Sequence[DiffText], *, adapter: RuleAdapter | None = None,
            config: DeltaPassConfig | None = None, label: str | None = None) -> Any:
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
