"""Log-likelihood of each candidate response given its instruction, at the output and per layer.

Two implementations of the same number:

* :func:`score_groups`: the fast path (prefix reuse, padding-aware batches, unembedding only at
  response positions, logit lens per layer in the same pass);
* :func:`paper_scores`: the paper's loop, one pair at a time, ``model(input_ids, labels).loss``
  over the whole sequence. It is the reference the fast path is tested and benchmarked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from implicit_it.lens import LogitLens

from .forward import EncodedGroup, PairBatch, PairForward

OUTPUT = "output"  # key of the model's own output distribution (no lens)


@dataclass
class GroupScores:
    """Summed log-probs per (group, candidate), per layer key; candidate 0 is the real response."""

    totals: dict[Any, np.ndarray]  # key (OUTPUT or layer int) -> (groups, candidates) float64
    n_tokens: np.ndarray  # (groups, candidates)
    truncated: np.ndarray  # (groups, candidates) bool

    def mean(self, key: Any = OUTPUT) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):  # absent candidates (0 tokens) stay NaN
            return self.totals[key] / self.n_tokens


def score_groups(
    forward: PairForward,
    groups: Sequence[EncodedGroup],
    *,
    layers: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GroupScores:
    """Sum of response(+EOS) token log-probs for every candidate, at the output (``layers=None``)
    or through the logit lens after each of ``layers`` (0 = embeddings, L = last block)."""
    lens = LogitLens(forward.model)
    n_cand = max(len(g.responses) for g in groups)
    keys: list[Any] = [OUTPUT] if layers is None else list(layers)
    totals = {k: np.full((len(groups), n_cand), np.nan) for k in keys}
    n_tokens = np.zeros((len(groups), n_cand), dtype=np.int64)
    truncated = np.zeros((len(groups), n_cand), dtype=bool)
    for gi, g in enumerate(groups):
        n_tokens[gi, : len(g.responses)] = [len(r) for r in g.responses]
        truncated[gi, : len(g.truncated)] = g.truncated
    index = {g.group_index: gi for gi, g in enumerate(groups)}

    def consume(batch: PairBatch) -> None:
        valid = batch.targets != -100
        row_of = valid.nonzero()[:, 0].cpu().numpy()
        targets = batch.targets[valid]
        sources = {OUTPUT: batch.final_normed} if layers is None else batch.residual
        for key, hidden in sources.items():
            lp = lens.token_logprobs(hidden[valid], targets, normed=key == OUTPUT).double().cpu().numpy()
            sums = np.bincount(row_of, weights=lp, minlength=len(batch.rows))
            for r, (g, c) in enumerate(batch.rows):
                totals[key][index[g], c] = sums[r]

    forward.run(groups, consume, layers=layers, progress=progress)
    return GroupScores(totals, n_tokens, truncated)


@torch.no_grad()
def paper_scores(model: Any, groups: Sequence[EncodedGroup]) -> GroupScores:
    """The paper's loop: batch 1, no cache, ``exp(-loss)`` of the whole sequence (we keep
    ``-loss``, the mean log-prob, and ``-loss * n`` as the total)."""
    device = next(model.parameters()).device
    n_cand = max(len(g.responses) for g in groups)
    totals = np.full((len(groups), n_cand), np.nan)
    n_tokens = np.zeros((len(groups), n_cand), dtype=np.int64)
    truncated = np.zeros((len(groups), n_cand), dtype=bool)
    was_training = model.training
    model.eval()
    for gi, g in enumerate(groups):
        for ci, resp in enumerate(g.responses):
            ids = torch.tensor([list(g.prompt_ids) + list(resp)], device=device)
            labels = ids.clone()
            labels[:, : len(g.prompt_ids)] = -100
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            totals[gi, ci] = -loss.double().item() * len(resp)
            n_tokens[gi, ci] = len(resp)
            truncated[gi, ci] = g.truncated[ci]
    model.train(was_training)
    return GroupScores({OUTPUT: totals}, n_tokens, truncated)
