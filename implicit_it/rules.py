"""The paper's rule-based adapter, as a product of experts with any base model.

Combined next-token log-probs (Hewitt et al. 2024, §6):

    log p(w | x) = log_softmax( log_softmax(base_logits) + log_softmax(r(w, x)) )

with r the sum of three rules (semantics of the paper's published code, ``combined_model.py``
at commit d63f9f8 of john-hewitt/implicit-ins):

* **eos**: EOS gets ``slope · n`` where n is the number of response tokens generated so far,
  for ``0 < n < max_length`` (paper: slope 15/250 = 0.06 — ``scale 5 · 3 / 250`` — and
  max_length 250; past it the ramp stops and the bonus is 0. The code's ``> 1024`` branch
  builds a vector it never adds, so it has no effect.) ``after_max: hold`` keeps the bonus at
  its cap instead.
* **uniform**: fixed scores for 15 tokens, written as the *strings* the paper's Llama-2 ids
  stand for and resolved for any tokenizer (see :func:`resolve_token_scores`).
* **diversity**: −1.5 once for each distinct token id already present. The paper's scope is
  everything after the user tag — the instruction, the assistant tag and the response so far
  (``scope: instruction``); ``scope: response`` counts response tokens only.
* **start** (optional, off in the paper's reported runs): on the first response token, every
  vocabulary item gets 5 × a string score (+10 for "Okay", −3 for "I", +1 for a token starting
  with a letter, −1 for punctuation) and the instruction's first token −6; the second token
  gets "!" +15; the third gets a newline −10.

The same :meth:`RuleAdapter.scores` computes r for generation (one position per step, in a
``LogitsProcessor``) and for analysis (:func:`rule_logit_delta`, many positions at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

RuleName = Literal["eos", "uniform", "diversity", "start"]
ALL_RULES: tuple[str, ...] = ("eos", "uniform", "diversity", "start")
PAPER_RULES: tuple[str, ...] = ("eos", "uniform", "diversity")


class TokenScore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str  # surface text as it appears mid-sequence (" I" = the word I after a space)
    score: float
    llama2_id: int | None = None  # the id in the paper's code, for reference
    note: str = ""


# The paper's 15 uniform-rule tokens. Llama-2's SentencePiece marks a leading space with "▁";
# here it is a real space. "What" is -5 in the code and -3 in the paper's table: we follow the code.
PAPER_UNIFORM: tuple[TokenScore, ...] = tuple(
    TokenScore(text=t, score=s, llama2_id=i, note=n)
    for t, s, i, n in [
        ("<", -4, 29966, "formatting tags like <|assistant|>"),
        (" <", -4, 529, ""),
        ("|", -4, 29989, ""),
        (" I", -5, 306, "continuing the request / claiming ignorance"),
        ("I", -5, 29902, "I after a newline"),
        (" We", -3, 1334, ""),
        ("What", -5, 5618, "paper table: -3; code: -5 (default)"),
        (" should", -6, 881, ""),
        (" -", 1, 334, "list formatting"),
        (" *", 1, 448, ""),
        ("  ", 1, 1678, "double space"),
        (" #", 1, 396, "headers"),
        (" ##", 1, 444, ""),
        ("\n", 1, 13, "newline"),
        ("!", 1, 29991, "agreement"),
    ]
)


class RuleConfig(BaseModel):
    """Rule constants (YAML-loadable). Defaults are the paper's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[RuleName] = Field(default_factory=lambda: list(PAPER_RULES))
    eos_slope: float = 15 / 250
    eos_max_length: int = Field(default=250, gt=0)
    eos_after_max: Literal["zero", "hold"] = "zero"
    uniform: list[TokenScore] = Field(default_factory=lambda: list(PAPER_UNIFORM))
    diversity_penalty: float = 1.5
    diversity_scope: Literal["instruction", "response"] = "instruction"
    start_weight: float = 5.0
    start_agreements: list[str] = Field(default_factory=lambda: ["Okay"])
    start_agreement_score: float = 10.0
    start_first_instruction_token: float = -6.0
    start_second_token: TokenScore = TokenScore(text="!", score=15, llama2_id=29991)
    start_third_token: TokenScore = TokenScore(text="\n", score=-10, llama2_id=13)

    def with_rules(self, rules: Sequence[str]) -> "RuleConfig":
        return self.model_copy(update={"rules": parse_rules(",".join(rules))})


def parse_rules(spec: str) -> list[str]:
    """``"eos,uniform"`` -> ``["eos", "uniform"]``; ``"all"`` = the paper's three; ``"none"`` = []."""
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(PAPER_RULES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in ALL_RULES]
    if bad:
        raise ValueError(f"unknown rule(s) {bad}; choose from {list(ALL_RULES)} (or 'all', 'none')")
    return list(dict.fromkeys(names))


def load_rule_config(path: str | Path) -> RuleConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return RuleConfig.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"{path}: rule config not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: YAML syntax error") from None
    except ValidationError as err:
        probs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: invalid rule config: {probs}") from None


# ------------------------------------------------------------------ resolving strings to ids


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The one id the tokenizer writes ``text`` as mid-sequence, or None if it takes several."""
    from .formats import _continuation_ids

    ids = _continuation_ids(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


@dataclass(frozen=True)
class ResolvedToken:
    text: str
    score: float
    token_id: int | None
    token: str | None
    llama2_id: int | None

    def describe(self) -> str:
        where = f"id {self.token_id} ({self.token!r})" if self.token_id is not None else "no single-token match (skipped)"
        return f"{self.text!r:>10} {self.score:+g} -> {where}"


def resolve_token_scores(tokenizer: Any, items: Sequence[TokenScore]) -> list[ResolvedToken]:
    out = []
    for it in items:
        tid = single_token_id(tokenizer, it.text)
        out.append(ResolvedToken(it.text, it.score, tid, tokenizer.convert_ids_to_tokens(tid) if tid is not None else None, it.llama2_id))
    return out


def _strip_space_marker(token: str) -> str:
    for marker in ("▁", "Ġ"):
        if token.startswith(marker):
            return token[len(marker):]
    return token


def _start_string_score(s: str, agreements: Sequence[str], agreement_score: float) -> float:
    """The paper's ``score_string`` for the first response token (space marker stripped)."""
    if not s:
        return 0.0
    if s == "I":
        return -3.0
    if s in agreements:
        return agreement_score
    c = s[0]
    if c.isupper() or c.islower() or "\u4e00" <= c <= "\u9fff":
        return 1.0
    if "\u0400" <= c <= "\u04ff" or "\u3040" <= c <= "\u30ff" or "\uac00" <= c <= "\ud7af":
        return 1.0
    if c in ".,:;!?<>[]{}()\"'`~@#$%^&*-=+\\|/":
        return -1.0
    return 0.0


# ------------------------------------------------------------------ the adapter


@dataclass
class RuleAdapter:
    """The rules bound to one tokenizer: dense score vectors, ready for any batch."""

    tokenizer: Any
    config: RuleConfig = field(default_factory=RuleConfig)
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.vocab_size = len(tok)
        if self.eos_token_id is None:
            self.eos_token_id = tok.eos_token_id
        self.resolved = resolve_token_scores(tok, self.config.uniform)
        self.uniform_vector = torch.zeros(self.vocab_size)
        for r in self.resolved:  # assignment, as in the paper: a later string on the same id wins
            if r.token_id is not None:
                self.uniform_vector[r.token_id] = r.score
        self._start_vector: torch.Tensor | None = None
        self._second = single_token_id(tok, self.config.start_second_token.text)
        self._third = single_token_id(tok, self.config.start_third_token.text)

    @property
    def rules(self) -> list[str]:
        return list(self.config.rules)

    def start_vector(self) -> torch.Tensor:
        """Per-vocabulary first-token scores of the start rule (computed once, lazily)."""
        if self._start_vector is None:
            c = self.config
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
            self._start_vector = torch.tensor(
                [_start_string_score(_strip_space_marker(t or ""), c.start_agreements, c.start_agreement_score) for t in tokens]
            )
        return self._start_vector

    def report(self) -> list[str]:
        """Which rule strings map to which ids (and which have no single-token match)."""
        lines = [r.describe() for r in self.resolved]
        lines.append(f"{'<EOS>':>10} ramp {self.config.eos_slope:g}/token up to {self.config.eos_max_length} -> id {self.eos_token_id}")
        return lines

    @torch.no_grad()
    def scores(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        response_start: torch.Tensor,
        scope_start: torch.Tensor | None = None,
        instruction_start: torch.Tensor | None = None,
        seen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw rule scores r(w, x) for predicting the token after each position.

        ``input_ids``: (B, L). ``positions``: (B, P) or (P,) column indices t; the score at t
        is for the token at t + 1 given ``input_ids[:, :t + 1]``. ``response_start``: (B,)
        column of each row's first response token. ``scope_start``: (B,) first column the
        diversity rule counts (default: ``instruction_start`` or ``response_start`` per the
        config's scope). ``instruction_start`` (B,) is needed by the start rule and the
        paper's diversity scope. ``seen``: the (B, P, V) :func:`seen_tokens` mask, when the caller
        has already computed it. Returns (B, P, V) float32 on ``input_ids.device``.
        """
        c, dev = self.config, input_ids.device
        bsz = input_ids.shape[0]
        pos = positions.to(dev).long()
        if pos.dim() == 1:
            pos = pos.unsqueeze(0).expand(bsz, -1)
        resp = response_start.to(dev).long().view(bsz, 1)
        n_generated = pos + 1 - resp  # response tokens already generated at each position
        out = torch.zeros(bsz, pos.shape[1], self.vocab_size, device=dev)
        rules = set(c.rules)
        if "uniform" in rules:
            out += self.uniform_vector.to(dev)
        if "eos" in rules:
            ramp = c.eos_slope * n_generated.float()
            bonus = torch.where((n_generated > 0) & (n_generated < c.eos_max_length), ramp, torch.zeros_like(ramp))
            if c.eos_after_max == "hold":
                bonus = torch.where(n_generated >= c.eos_max_length, torch.full_like(ramp, c.eos_slope * c.eos_max_length), bonus)
            out[:, :, self.eos_token_id] += bonus
        if "diversity" in rules:
            if seen is None:
                start = scope_start if scope_start is not None else self.diversity_scope_start(response_start, instruction_start)
                seen = seen_tokens(input_ids, pos, start, self.vocab_size)
            out -= c.diversity_penalty * seen.to(dev).float()
        if "start" in rules:
            if instruction_start is None:
                raise ValueError("the start rule needs instruction_start")
            first = n_generated == 0
            out += first.unsqueeze(2).float() * (c.start_weight * self.start_vector().to(dev))
            ins_first = input_ids.gather(1, instruction_start.to(dev).long().view(bsz, 1))  # (B, 1)
            b_idx, p_idx = first.nonzero(as_tuple=True)
            out[b_idx, p_idx, ins_first[b_idx, 0]] += c.start_first_instruction_token
            for k, tid, sc in ((1, self._second, c.start_second_token.score), (2, self._third, c.start_third_token.score)):
                if tid is not None:
                    out[:, :, tid] += (n_generated == k).float() * sc
        return out

    def diversity_scope_start(self, response_start: torch.Tensor, instruction_start: torch.Tensor | None) -> torch.Tensor:
        """First column the diversity rule counts: the instruction's start (the paper) or the response's."""
        if self.config.diversity_scope == "response":
            return response_start
        if instruction_start is None:
            raise ValueError("diversity scope 'instruction' needs instruction_start (or pass scope_start)")
        return instruction_start

    def logits_processor(self, batch: Any) -> "RuleLogitsProcessor":
        """A factory for :func:`implicit_it.generation.generate_responses` (one per batch)."""
        bsz = batch.input_ids.shape[0]
        needs_instruction = "start" in self.config.rules or (
            "diversity" in self.config.rules and self.config.diversity_scope == "instruction"
        )
        ins = torch.tensor(batch.instruction_starts()) if needs_instruction else None
        return RuleLogitsProcessor(self, torch.full((bsz,), batch.prompt_width), ins)


def seen_tokens(input_ids: torch.Tensor, positions: torch.Tensor, scope_start: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, P, V) bool: token w occurs in ``input_ids[b, scope_start[b] : t + 1]`` for each position t.

    ``positions`` (B, P) column indices; ``scope_start`` (B,) the first column that counts."""
    bsz, length = input_ids.shape
    dev = input_ids.device
    start = scope_start.to(dev).long().view(bsz, 1)
    cols = torch.arange(length, device=dev).view(1, length)
    # first column >= scope start at which each id occurs (length = never)
    col_or_never = torch.where(cols >= start, cols.expand(bsz, -1), torch.full_like(input_ids, length))
    first_seen = torch.full((bsz, vocab_size), length, device=dev, dtype=torch.long)
    first_seen.scatter_reduce_(1, input_ids.long(), col_or_never, reduce="amin")
    return first_seen.unsqueeze(1) <= positions.to(dev).long().unsqueeze(2)


class RuleLogitsProcessor:
    """HF ``LogitsProcessor``: base scores -> product-of-experts log-probs with the rules."""

    def __init__(self, adapter: RuleAdapter, response_start: torch.Tensor, instruction_start: torch.Tensor | None):
        self.adapter, self.response_start, self.instruction_start = adapter, response_start, instruction_start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        last = torch.tensor([input_ids.shape[1] - 1])
        rule = self.adapter.scores(input_ids, last, self.response_start, instruction_start=self.instruction_start)[:, 0]
        vocab = min(scores.shape[-1], rule.shape[-1])  # some checkpoints pad the embedding matrix
        combined = torch.log_softmax(scores[:, :vocab].float(), -1) + torch.log_softmax(rule[:, :vocab], -1)
        out = torch.full_like(scores, -float("inf"), dtype=combined.dtype)
        out[:, :vocab] = torch.log_softmax(combined, -1)
        return out


def rule_logit_delta(
    adapter: RuleAdapter,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    *,
    response_start: torch.Tensor,
    instruction_start: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position log-prob shift the adapter applies, shape (B, P, V).

    Without ``base_logits``: ``log_softmax(r)``, the rules' expert (the shift up to a
    per-position constant, which is what a comparison of logit deltas should centre away).
    With ``base_logits`` (B, P, V) for the same positions: the exact shift
    ``log p_combined − log p_base``.
    """
    rule_lp = torch.log_softmax(
        adapter.scores(input_ids, positions, response_start, instruction_start=instruction_start), -1
    )
    if base_logits is None:
        return rule_lp
    base_lp = torch.log_softmax(base_logits.float(), -1)
    return torch.log_softmax(base_lp + rule_lp, -1) - base_lp
