"""The logit lens: read a residual stream through the model's own final norm and unembedding.

It lives in the core because both rooms that read layers use it (the probes' layerwise ranking,
the analyses' layer diffs). Layer numbering used everywhere: layer 0 is the embedding output
(after any embedding scale, e.g. Gemma's sqrt(d)), layer ``l`` is the residual stream after
decoder block ``l`` (1-based), so layer ``L`` (the last) read through the lens gives exactly the
model's output distribution.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import UserError


def decoder_of(model: Any) -> Any:
    """The decoder stack inside an HF causal LM (``model.model`` for llama/gemma3/olmo)."""
    decoder = model.get_decoder()
    if not hasattr(decoder, "layers") or not hasattr(decoder, "norm"):
        raise UserError(f"{type(model).__name__}: the decoder has no .layers/.norm; the logit lens supports llama-style decoders")
    return decoder


def n_layers(model: Any) -> int:
    return len(decoder_of(model).layers)


LAYERS_SYNTAX = "'all', 'every:N' or comma-separated layers/ranges such as 0,4,8-12"


def _layer_ranges(spec: str) -> list[tuple[int, int]]:
    """The ``(first, last)`` ranges of a comma-separated layer list (``"0,4,8-12"``); a reversed range is an error."""
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
            else:
                lo = hi = int(part)
        except ValueError:
            raise UserError(f"layers: expected {LAYERS_SYNTAX}, got {spec!r}") from None
        if lo < 0:
            raise UserError(f"layers: {part!r} is negative: layers start at 0 (the embeddings)")
        if hi < lo:
            raise UserError(f"layers: {part!r} is a reversed range (write {hi}-{lo})")
        out.append((lo, hi))
    return out


def _every(spec: str) -> int:
    try:
        step = int(spec.split(":", 1)[1])
    except ValueError:
        step = 0
    if step < 1:
        raise UserError(f"layers: 'every:N' needs a positive integer N, got {spec!r}")
    return step


def check_layer_spec(spec: str | None) -> str | None:
    """The syntax of a layer spec (:func:`parse_layers`), without a model: the layers' range is checked once the
    model's depth is known. Returns ``spec``; raises ValueError naming what is wrong."""
    if spec is None or spec == "all":
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"layers: expected {LAYERS_SYNTAX}, got {spec!r}")
    if spec.startswith("every:"):
        _every(spec)
    else:
        _layer_ranges(spec)
    return spec


def parse_layers(spec: str | Sequence[int] | None, total: int) -> list[int]:
    """``"all"`` -> 0..L; ``"every:N"`` -> 0, N, 2N, ... and L; ``"0,4,8"`` or ``"2-6"`` -> those
    layers; checked against 0..L (0 = embeddings, L = last block). A reversed range (``"6-2"``) is an error."""
    if spec is None or spec == "all":
        return list(range(total + 1))
    if isinstance(spec, str) and spec.startswith("every:"):
        return sorted(set(range(0, total + 1, _every(spec))) | {total})
    if isinstance(spec, str):
        ranges = _layer_ranges(spec)
        bad = [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges if hi > total]
        if bad:
            raise UserError(f"layers {bad} are out of range: this model has layers 0 (embeddings) to {total}")
        out = [x for lo, hi in ranges for x in range(lo, hi + 1)]
    else:
        out = list(spec)
    bad_layers = [x for x in out if not 0 <= x <= total]
    if bad_layers:
        raise UserError(f"layers {bad_layers} are out of range: this model has layers 0 (embeddings) to {total}")
    return sorted(set(out))


class LogitLens:
    """``log_softmax(unembed(norm(h)))`` at chosen positions, computed in row chunks so a
    262k-token vocabulary (Gemma) never materialises a (batch, tokens, vocab) tensor."""

    def __init__(self, model: Any, *, chunk_rows: int = 256):
        self.norm = decoder_of(model).norm
        self.unembed = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.chunk_rows = chunk_rows

    def _logits(self, hidden: torch.Tensor, normed: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm (unless already applied), unembedding and any softcap, in float32; with
        ``out`` (float32, (n, V_head)) the unembedding writes into it."""
        x = hidden if normed else self.norm(hidden)
        head = self.unembed
        if out is not None and self._plain_float32_head():
            x = x.to(torch.float32)
            if head.bias is None:
                logits = torch.mm(x, head.weight.T, out=out)
            else:
                logits = torch.addmm(head.bias, x, head.weight.T, out=out)
        else:
            logits = head(x).float()
            if out is not None:
                logits = out.copy_(logits)
        if self.softcap is not None:
            logits = logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    @torch.no_grad()
    def logprobs(
        self,
        hidden: torch.Tensor,
        *,
        normed: bool = False,
        vocab_size: int | None = None,
        out: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        work: torch.Tensor | None = None,
        scratch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full-vocabulary log-probs (n, V) at ``hidden`` (n, d); the caller keeps n small.

        ``vocab_size``: keep only the first V columns and renormalise over them (embedding rows
        past the tokenizer's vocabulary are padding). Optional float32 buffers, so that a lens
        over many chunks reuses memory instead of faulting in ~1 MB of fresh pages per row:
        ``out`` (n, V) receives the log-probs, ``probs`` (n, V) the probabilities (computed on
        the way), ``work`` (n, V) is work space when the probabilities are not wanted, and
        ``scratch`` (n, V_head) holds the logits when V < V_head."""
        hidden = hidden.to(self.unembed.weight.device)
        n_head = self.unembed.weight.shape[0]
        v = n_head if vocab_size is None else min(vocab_size, n_head)
        space = probs if probs is not None else work
        if v == n_head and out is not None and space is not None and self.softcap is None and self._plain_float32_head():
            logits = self._logits_transposed(hidden if normed else self.norm(hidden), out, space)
        elif v == n_head:
            logits = self._logits(hidden, normed, out=out)
        else:
            logits = self._logits(hidden, normed, out=scratch)[:, :v] if scratch is not None else self._logits(hidden, normed)[:, :v]
        return log_softmax(logits, out=out, probs=probs, work=work)

    def _plain_float32_head(self) -> bool:
        return isinstance(self.unembed, torch.nn.Linear) and self.unembed.weight.dtype == torch.float32

    def _logits_transposed(self, normed: torch.Tensor, out: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
        """The unembedding as ``W @ h.T`` into ``space`` ((n, V) float32), transposed into ``out``:
        on CPU that matmul is 15–30% faster than ``h @ W.T`` (the vocabulary becomes the long
        side) and the logits are bit-identical."""
        head, rows = self.unembed, normed.shape[0]
        transposed = torch.mm(head.weight, normed.to(torch.float32).T, out=space.view(-1)[: rows * head.weight.shape[0]].view(-1, rows))
        if head.bias is not None:
            transposed.add_(head.bias[:, None])
        return out.copy_(transposed.T)

    @torch.no_grad()
    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """Log-prob of ``targets`` (N,) under the lens at ``hidden`` (N, d). ``normed``: the
        final norm was already applied (the decoder's own last output)."""
        device = self.unembed.weight.device  # with device_map the head may sit on another GPU than the input
        hidden, targets = hidden.to(device), targets.to(device)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=device)
        for start in range(0, hidden.shape[0], self.chunk_rows):
            logits = self._logits(hidden[start : start + self.chunk_rows], normed)
            t = targets[start : start + self.chunk_rows]
            out[start : start + self.chunk_rows] = (logits.gather(-1, t[:, None]) - logsumexp(logits))[:, 0]
        return out


def _normaliser(logits: torch.Tensor, work: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log Σ exp(logits) per row as (n, 1) float64, the row sums of exp(logits − max), that work tensor)."""
    peak = logits.amax(-1, keepdim=True)
    shifted = torch.sub(logits, peak, out=work).exp_()
    total = shifted.sum(-1, keepdim=True)
    return peak.double() + total.double().log(), total, shifted


def logsumexp(logits: torch.Tensor, *, work: torch.Tensor | None = None) -> torch.Tensor:
    """``log Σ_w exp(logits[:, w])`` per row, (n, 1) float64, summed with torch's cascade sum.

    ``torch.log_softmax`` and ``torch.logsumexp`` accumulate a float32 row in a few running
    sums: over a 262k-token vocabulary their normaliser is off by up to ~3e-5 and ~1e-6 nats,
    a shift of every log-prob of the row that a KL between two models does not cancel. The
    cascade sum keeps it to ~1e-7 for the same work. ``work`` ((n, V) float32) is scratch."""
    return _normaliser(logits, work)[0]


def log_softmax(
    logits: torch.Tensor, *, out: torch.Tensor | None = None, probs: torch.Tensor | None = None, work: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probs from float32 ``logits`` (n, V) with the precise normaliser of :func:`logsumexp`.

    The normaliser is subtracted as a float32 pair (value + remainder), so rounding it to
    float32 (up to ~1e-6 at ~20 nats) does not shift the row either. ``out`` may be ``logits``
    itself (in place); ``probs`` receives the probabilities (computed on the way); without it,
    ``work`` is scratch of the same shape."""
    norm, total, shifted = _normaliser(logits, probs if probs is not None else work)
    high = norm.float()
    result = torch.sub(logits, high, out=out).sub_((norm - high.double()).float())
    if probs is not None:
        shifted.div_(total)
    return result
