"""The paper's response-ranking pairs: each instruction with its own response and k others.

Protocol (``open_instruct/ratio_eval.py`` and ``plot_ratios.py`` in the paper's code):

* the first N examples of the file; the response *pool* is every assistant turn of those N
  examples, in file order (so a multi-turn example contributes more than one response);
* ``random.seed(0)``, then for each instruction in order, k draws of
  ``random.randint(0, len(pool) - 1)``;
* a pair's score is the mean log-prob of response + EOS given the formatted instruction
  (the paper keeps ``exp(-loss)``, a monotone function of it), truncated at 1,024 tokens
  (``--max_seq_length 1024`` in ``scripts/do_preference_scripts.sh``, which runs ratio_eval);
* accuracy is the fraction of (real, other) pairs with real > other, so ties count as losses.

The paper's draws can pick the instruction's own response (``j = i``). ``plot_ratios.py`` then
takes that draw for the real pair and leaves it out of the negatives, so such an instruction has
fewer than k (``self_draws="drop"``, the paper configs' setting). The library default redraws
until ``j`` is not the instruction's own response (``"redraw"``: always k negatives, but the
stream of draws departs from the paper's after the first self-draw); ``"tie"`` keeps the paper's
draws and scores a self-draw as a tie, i.e. a loss. (The paper compares ``j`` with the
instruction's index, which is its own response's pool index for single-turn data, the data it
used; we compare with the own response's pool index.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from implicit_it.data import RankingSource
from implicit_it.errors import UserError


@dataclass(frozen=True)
class Candidate:
    response_index: int  # index into the pool
    is_real: bool


@dataclass(frozen=True)
class RankingGroup:
    """One instruction, its real response first, then its negatives."""

    instruction_index: int
    candidates: tuple[Candidate, ...]

    @property
    def negatives(self) -> tuple[Candidate, ...]:
        return self.candidates[1:]


SelfDraws = Literal["redraw", "drop", "tie"]
SELF_DRAWS: tuple[str, ...] = ("redraw", "drop", "tie")


def build_ranking_groups(
    source: RankingSource, *, negatives: int = 5, seed: int = 0, exclude_self: bool = True, self_draws: SelfDraws | None = None
) -> list[RankingGroup]:
    """Each instruction with its real response and ``negatives`` random pool responses.

    ``self_draws`` says what a draw of the instruction's own response does: ``"redraw"``,
    ``"drop"`` (the paper) or ``"tie"``; when None, ``exclude_self`` picks ``"redraw"`` (True) or
    ``"tie"`` (False)."""
    if negatives < 1:
        raise UserError(f"negatives must be >= 1, got {negatives}")
    mode = self_draws if self_draws is not None else ("redraw" if exclude_self else "tie")
    if mode not in SELF_DRAWS:
        raise UserError(f"self_draws must be one of {list(SELF_DRAWS)}, got {mode!r}")
    n_pool = len(source.pool)
    if mode == "redraw" and n_pool < 2:
        raise UserError("need at least two responses in the pool to draw a negative other than the real one")
    rng = random.Random(seed)  # same stream as the paper's random.seed(0); random.randint(...)
    groups = []
    for i, own in enumerate(source.own_response):
        cands = [Candidate(own, True)]
        for _ in range(negatives):
            j = rng.randint(0, n_pool - 1)
            while mode == "redraw" and j == own:
                j = rng.randint(0, n_pool - 1)
            if mode == "drop" and j == own:
                continue
            cands.append(Candidate(j, False))
        groups.append(RankingGroup(i, tuple(cands)))
    return groups
