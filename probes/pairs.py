"""The paper's response-ranking pairs: each instruction with its own response and k others.

Protocol (``open_instruct/ratio_eval.py`` and ``plot_ratios.py`` in the paper's code):

* the first N examples of the file; the response *pool* is every assistant turn of those N
  examples, in file order (so a multi-turn example contributes more than one response);
* ``random.seed(0)``, then for each instruction in order, k draws of
  ``random.randint(0, len(pool) - 1)``;
* a pair's score is the mean log-prob of response + EOS given the formatted instruction
  (the paper keeps ``exp(-loss)``, a monotone function of it), truncated at 512 tokens;
* accuracy is the fraction of (real, other) pairs with real > other, so ties count as losses.

The paper's draws can pick the instruction's own response (``j = i``). Its analysis script then
mistakes that draw for the real pair and drops it, so such an instruction has fewer than k
negatives. We default to redrawing until ``j`` is not the instruction's own response
(``exclude_self=True``); with ``exclude_self=False`` the draws are the paper's exactly and a
self-draw is scored as a tie, i.e. a loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from implicit_it.data import read_chat_jsonl, read_instructions
from implicit_it.errors import DataFormatError


@dataclass(frozen=True)
class RankingSource:
    """Instructions with the pool index of their own response, and the response pool."""

    instructions: tuple[str, ...]
    own_response: tuple[int, ...]  # pool index of instruction i's real response
    pool: tuple[str, ...]
    path: str = ""


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


def read_ranking_source(path: str | Path, *, limit: int | None = None) -> RankingSource:
    """Read (instruction, response) pairs from a chat JSONL or an AlpacaEval-style file.

    Chat JSONL: every assistant turn joins the pool (the paper's pool). AlpacaEval-style
    (``{"instruction", "output"}`` records): each record's ``output`` is its response.
    Text is stripped, as the paper's formatting does."""
    path = Path(path)
    head = path.read_bytes()[:65536] if path.is_file() else b""
    if b'"messages"' in head:
        examples = read_chat_jsonl(path, limit=limit)
        instructions, own, pool = [], [], []
        for ex in examples:
            instructions.append(ex.instruction.strip())
            own.append(len(pool))
            pool.extend(m.content.strip() for m in ex.messages if m.role == "assistant")
        return RankingSource(tuple(instructions), tuple(own), tuple(pool), str(path))
    items = read_instructions(path, limit=limit)
    for i, it in enumerate(items):
        if not isinstance(it.reference_output, str) or not it.reference_output.strip():
            raise DataFormatError(path, None, f"record {i}: a ranking pair needs a non-empty 'output' (the instruction's response)")
    return RankingSource(
        tuple(it.instruction.strip() for it in items), tuple(range(len(items))),
        tuple(it.reference_output.strip() for it in items), str(path),
    )


def build_ranking_groups(source: RankingSource, *, negatives: int = 5, seed: int = 0, exclude_self: bool = True) -> list[RankingGroup]:
    """Each instruction with its real response and ``negatives`` random pool responses."""
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    n_pool = len(source.pool)
    if exclude_self and n_pool < 2:
        raise ValueError("need at least two responses in the pool to draw a negative other than the real one")
    rng = random.Random(seed)  # same stream as the paper's random.seed(0); random.randint(...)
    groups = []
    for i, own in enumerate(source.own_response):
        cands = [Candidate(own, True)]
        for _ in range(negatives):
            j = rng.randint(0, n_pool - 1)
            while exclude_self and j == own:
                j = rng.randint(0, n_pool - 1)
            cands.append(Candidate(j, False))
        groups.append(RankingGroup(i, tuple(cands)))
    return groups


def pair_wins(real: float, others: Sequence[float]) -> list[bool]:
    """Real beats other: strictly greater (ties, e.g. a self-draw, are losses)."""
    return [real > o for o in others]
