"""The logit lens: read a residual stream through the model's own final norm and unembedding.

Layer numbering used everywhere in :mod:`implicit_it.probes`: layer 0 is the embedding output
(after any embedding scale, e.g. Gemma's sqrt(d)), layer ``l`` is the residual stream after
decoder block ``l`` (1-based), so layer ``L`` (the last) read through the lens gives exactly the
model's output distribution.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def decoder_of(model: Any) -> Any:
    """The decoder stack inside an HF causal LM (``model.model`` for llama/gemma3/olmo)."""
    decoder = model.get_decoder()
    if not hasattr(decoder, "layers") or not hasattr(decoder, "norm"):
        raise ValueError(f"{type(model).__name__}: the decoder has no .layers/.norm; the logit lens supports llama-style decoders")
    return decoder


def n_layers(model: Any) -> int:
    return len(decoder_of(model).layers)


def parse_layers(spec: str | Sequence[int] | None, total: int) -> list[int]:
    """``"all"`` -> 0..L; ``"every:N"`` -> 0, N, 2N, ... and L; ``"0,4,8"`` or ``"2-6"`` -> those
    layers; checked against 0..L (0 = embeddings, L = last block)."""
    if spec is None or spec == "all":
        return list(range(total + 1))
    if isinstance(spec, str) and spec.startswith("every:"):
        try:
            step = int(spec.split(":", 1)[1])
        except ValueError:
            step = 0
        if step < 1:
            raise ValueError(f"layers: 'every:N' needs a positive integer N, got {spec!r}")
        return sorted(set(range(0, total + 1, step)) | {total})
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise ValueError(f"layers: expected 'all', 'every:N' or comma-separated layers/ranges such as 0,4,8-12, got {spec!r}") from None
    else:
        out = list(spec)
    bad = [x for x in out if not 0 <= x <= total]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has layers 0 (embeddings) to {total}")
    return sorted(set(out))


class LogitLens:
    """``log_softmax(unembed(norm(h)))`` at chosen positions, computed in row chunks so a
    262k-token vocabulary (Gemma) never materialises a (batch, tokens, vocab) tensor."""

    def __init__(self, model: Any, *, chunk_rows: int = 256):
        self.norm = decoder_of(model).norm
        self.unembed = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.chunk_rows = chunk_rows

    def _logits(self, hidden: torch.Tensor, normed: bool) -> torch.Tensor:
        """Final norm (unless already applied), unembedding and any softcap, in float32."""
        logits = self.unembed(hidden if normed else self.norm(hidden)).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.no_grad()
    def logprobs(self, hidden: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """Full-vocabulary log-probs (n, V) at ``hidden`` (n, d); the caller keeps n small."""
        return torch.log_softmax(self._logits(hidden.to(self.unembed.weight.device), normed), dim=-1)

    @torch.no_grad()
    def token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """Log-prob of ``targets`` (N,) under the lens at ``hidden`` (N, d). ``normed``: the
        final norm was already applied (the decoder's own last output)."""
        device = self.unembed.weight.device  # with device_map the head may sit on another GPU than the input
        hidden, targets = hidden.to(device), targets.to(device)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=device)
        for start in range(0, hidden.shape[0], self.chunk_rows):
            logits = self._logits(hidden[start:start + self.chunk_rows], normed)
            t = targets[start:start + self.chunk_rows]
            out[start:start + self.chunk_rows] = logits.gather(-1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        return out
