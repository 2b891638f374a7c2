"""One forward pass over many (instruction, response) pairs, reusing each instruction's prefix.

A ranking group is one instruction with k+1 responses. The prompt minus its last token runs
once per instruction (left-padded with the other instructions of the batch, into a KV cache);
the cache is then repeated for each of the instruction's responses, and the responses run as
one right-padded batch that starts with the prompt's last token. Every prediction of a response
token (including the first one, made at the prompt's last token) therefore comes from the second
pass, where hooks read the residual stream at exactly the positions that matter.

Position ids are passed explicitly (left padding would otherwise shift them), so the numbers
equal a batch-1 forward of the whole sequence; tests check this to 1e-4 on tiny models of each
architecture (including Gemma-3's sliding-window layers) and on the real Gemma-3-270M.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from implicit_it.data import RankingSource
from implicit_it.formats import ChatFormat, encode_example, encode_prompt, get_format, pad_batch
from implicit_it.lens import decoder_of

from .pairs import RankingGroup


@dataclass(frozen=True)
class EncodedGroup:
    """Token ids for one instruction and its candidates (in the group's candidate order)."""

    group_index: int
    prompt_ids: tuple[int, ...]
    responses: tuple[tuple[int, ...], ...]  # labelled ids: response (+ EOS unless truncated)
    truncated: tuple[bool, ...]

    @property
    def width(self) -> int:
        return 1 + max(len(r) for r in self.responses)


def encode_groups(
    tokenizer: Any,
    fmt: str | ChatFormat,
    source: RankingSource,
    groups: Sequence[RankingGroup],
    *,
    max_length: int | None = 1024,
) -> list[EncodedGroup]:
    """Tokenize every pair with the training encoder (loss tokens = response + EOS).

    Sequences longer than ``max_length`` are cut from the right, as the paper's script does
    (so a cut response loses its EOS). An instruction whose prompt alone does not fit leaves
    nothing to score and is skipped: compare ``len(result)`` with ``len(groups)``."""
    fmt = get_format(fmt)
    out = []
    for gi, g in enumerate(groups):
        instruction = source.instructions[g.instruction_index]
        prompt = encode_prompt(tokenizer, fmt, instruction)
        if max_length is not None and len(prompt) >= max_length:
            continue
        responses, truncated = [], []
        for c in g.candidates:
            ex = encode_example(tokenizer, fmt, instruction, source.pool[c.response_index], max_length=max_length)
            prompt = tuple(ex.input_ids[: ex.n_prompt_tokens])
            responses.append(tuple(ex.input_ids[ex.n_prompt_tokens :]))
            truncated.append(ex.truncated)
        out.append(EncodedGroup(gi, prompt, tuple(responses), tuple(truncated)))
    return out


@dataclass
class PairBatch:
    """Activations for one batch of pairs, at the response-chunk positions.

    Chunk position ``j`` holds token ``chunk[j]`` (position 0: the prompt's last token) and
    predicts ``targets[:, j]`` (the response's ``j``-th token; -100 beyond the response)."""

    rows: list[tuple[int, int]]  # (group index, candidate index)
    lengths: torch.Tensor  # (rows,) response tokens (+EOS)
    targets: torch.Tensor  # (rows, C)
    residual: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (rows, C, d), before the final norm
    final_normed: torch.Tensor | None = None  # (rows, C, d): the decoder's output, final norm applied


def _batches(groups: Sequence[EncodedGroup], max_batch_tokens: int) -> Iterator[list[EncodedGroup]]:
    """Longest groups first, as many per batch as fit ``rows * width <= max_batch_tokens``."""
    order = sorted(groups, key=lambda g: (-g.width, g.group_index))
    batch: list[EncodedGroup] = []
    rows = 0
    for g in order:
        width = batch[0].width if batch else g.width
        if batch and (rows + len(g.responses)) * width > max_batch_tokens:
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(g.responses)
    if batch:
        yield batch


class PairForward:
    """Runs encoded groups through a model with prefix reuse; see the module docstring.

    ``layers=None`` returns only the decoder's final (normed) output, with no hooks; a list of
    layers (0 = embeddings, l = after block l) reads them with nnsight in the same pass."""

    def __init__(self, loaded: Any, *, max_batch_tokens: int = 4096):
        self.loaded = loaded
        self.model = loaded.model
        self.decoder = decoder_of(self.model)
        self.pad_id = loaded.tokenizer.pad_token_id
        self.max_batch_tokens = max_batch_tokens
        self._nnsight = None

    @property
    def n_layers(self) -> int:
        return len(self.decoder.layers)

    def run(
        self,
        groups: Sequence[EncodedGroup],
        consume: Callable[[PairBatch], None],
        *,
        layers: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        for batch in self.iter_batches(groups, layers=layers, progress=progress):
            consume(batch)

    def iter_batches(
        self,
        groups: Sequence[EncodedGroup],
        *,
        layers: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[PairBatch]:
        """The batches of :meth:`run` as a generator, so two models can be stepped side by side
        (the batching depends only on the token ids, so equal ids give equal batches)."""
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            for batch in _batches(groups, self.max_batch_tokens):
                owner = [bi for bi, g in enumerate(batch) for _ in g.responses]
                rows = [(g.group_index, ci) for g in batch for ci in range(len(g.responses))]
                prompt_len = torch.tensor([len(g.prompt_ids) for g in batch])
                # 1. every prompt but its last token, once per instruction, into a KV cache
                pre = pad_batch([g.prompt_ids[:-1] or (self.pad_id,) for g in batch], self.pad_id, side="left")
                for bi, g in enumerate(batch):
                    if len(g.prompt_ids) == 1:  # nothing before the last token: a fully masked row
                        pre["attention_mask"][bi] = 0
                cache = DynamicCache(config=self.model.config)
                pre_pos = (pre["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    self.decoder(
                        input_ids=pre["input_ids"].to(device),
                        attention_mask=pre["attention_mask"].to(device),
                        position_ids=pre_pos.to(device),
                        past_key_values=cache,
                        use_cache=True,
                    )
                cache.reorder_cache(torch.tensor(owner, device=device))
                # 2. each response after its prompt's last token, with the cache repeated per response
                chunks = [(g.prompt_ids[-1],) + r for g in batch for r in g.responses]
                ch = pad_batch(chunks, self.pad_id, side="right")
                width = ch["input_ids"].shape[1]
                mask = torch.cat([pre["attention_mask"][owner], ch["attention_mask"]], dim=1)
                pos = (prompt_len[owner] - 1)[:, None] + torch.arange(width)[None, :]
                kwargs = dict(
                    input_ids=ch["input_ids"].to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos.to(device),
                    past_key_values=cache,
                    use_cache=True,
                )
                lengths = torch.tensor([len(c) - 1 for c in chunks])
                targets = torch.full((len(chunks), width), -100, dtype=torch.long)
                for r, c in enumerate(chunks):
                    targets[r, : len(c) - 1] = torch.tensor(c[1:])
                out = PairBatch(rows, lengths, targets.to(device))
                with torch.no_grad():
                    if layers is None:
                        out.final_normed = self.decoder(**kwargs).last_hidden_state
                    else:
                        out.residual = self._traced_residuals(kwargs, layers)
                yield out
                if progress is not None:
                    progress(len(batch))
        finally:
            self.model.train(was_training)

    def _traced_residuals(self, kwargs: dict[str, Any], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """The residual stream after each requested layer, read with nnsight in one pass."""
        from implicit_it.hooking import nnsight_model, traced_residuals

        if self._nnsight is None:
            self._nnsight = nnsight_model(self.loaded)
        return traced_residuals(self._nnsight, kwargs, layers)
