"""The paper's rule-based adapter, as a product of experts with any base model.

Combined next-token log-probs (Hewitt et al. 2024, §6):

    log p(w | x) = log_softmax( log_softmax(base_logits) + log_softmax(r(w, x)) )

with r the sum of three rules. Semantics are those of the paper's published code,
``open_instruct/combined_model.py`` of john-hewitt/implicit-ins at bc261e5 (unchanged through the
last commit fe1c2d8): that is the version whose ``magic_string`` selects rules one by one, as the
paper's ablations do. The start rule's "first instruction token −6" is older: it was added at
b23bf51 and removed at d46b1b3, so d63f9f8 is the last commit that has it.

The paper's code finds the *last* occurrence of the user and assistant tags in the sequence at
every step, so a chat turn the model writes itself (``<|user|>…<|assistant|>``) restarts the
response length (eos, start) and the diversity scope; ``scope_anchor: last_tag`` (the default)
does the same, tracking new tag occurrences incrementally during generation. ``scope_anchor:
prompt`` fixes both at the prompt's tags. Tags are matched as the paper does: the last (up to)
5 tokens of the tag line ``tag + "\n"`` as tokenized mid-sequence.

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

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, UserError
from .lists import parse_list

RuleName = Literal["eos", "uniform", "diversity", "start"]
ALL_RULES: tuple[str, ...] = ("eos", "uniform", "diversity", "start")
PAPER_RULES: tuple[RuleName, ...] = ("eos", "uniform", "diversity")


class TokenScore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    text: str  # surface text as it appears mid-sequence (" I" = the word I after a space)
    score: float
    llama2_id: int | None = None  # the id in the paper's code, for reference
    note: str = ""


# The paper's 15 uniform-rule tokens. Llama-2's SentencePiece marks a leading space with "▁";
# here it is a real space. Each text resolves to its ``llama2_id`` on Llama-2's vocabulary
# (tests/fidelity/test_rules_vocabulary.py), so every tokenizer gets the token the paper's code boosts.
# "What" is -5 in the code and -3 in the paper's table: we follow the code.
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
        (" -", 1, 448, "list formatting (the paper code's comments swap '-' and '*'; both +1)"),
        (" *", 1, 334, ""),
        ("   ", 1, 1678, "three spaces: Llama-2's '▁▁▁' (the paper code's comment says double space)"),
        (" #", 1, 396, "headers"),
        (" ##", 1, 444, ""),
        ("\n", 1, 13, "newline"),
        ("!", 1, 29991, "agreement"),
    ]
)


class RuleConfig(BaseModel):
    """Rule constants (YAML-loadable). Defaults are the paper's. Every constant is a finite number: a NaN or infinite
    score would turn the combined distribution into NaN (and greedy decoding into token 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rules: list[RuleName] = Field(default_factory=lambda: list(PAPER_RULES))
    eos_slope: float = 15 / 250
    eos_max_length: int = Field(default=250, gt=0)
    eos_after_max: Literal["zero", "hold"] = "zero"
    uniform: list[TokenScore] = Field(default_factory=lambda: list(PAPER_UNIFORM))
    diversity_penalty: float = 1.5
    diversity_scope: Literal["instruction", "response"] = "instruction"
    scope_anchor: Literal["last_tag", "prompt"] = "last_tag"  # re-find the last tag each step (paper) or fix at the prompt
    start_weight: float = 5.0
    start_agreements: list[str] = Field(default_factory=lambda: ["Okay"])
    start_agreement_score: float = 10.0
    start_first_instruction_token: float = -6.0
    start_second_token: TokenScore = TokenScore(text="!", score=15, llama2_id=29991)
    start_third_token: TokenScore = TokenScore(text="\n", score=-10, llama2_id=13)
    # The paper's score_string strips SentencePiece's "▁" only; GPT-2-style vocabularies mark a space with "Ġ".
    start_space_markers: list[str] = Field(default_factory=lambda: ["▁", "Ġ"])

    def with_rules(self, rules: Sequence[str]) -> "RuleConfig":
        return self.model_copy(update={"rules": parse_rules(",".join(rules))})


def parse_rules(spec: str) -> list[str]:
    """``"eos,uniform"`` -> ``["eos", "uniform"]``; ``"all"`` = the paper's three; ``"none"`` = []."""
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(PAPER_RULES)
    names: list[str] = parse_list(spec, what="rules")
    bad = [n for n in names if n not in ALL_RULES]
    if bad:
        raise UserError(f"unknown rule(s) {bad}; choose from {list(ALL_RULES)} (or 'all', 'none')")
    return list(dict.fromkeys(names))


def rule_config_from(rules: str | None, rules_config: str | Path | None) -> RuleConfig | None:
    """The adapter a command asks for: ``--rules-config`` constants (else the paper's) with ``--rules`` switched on;
    None when neither is given (no adapter)."""
    if rules is None and rules_config is None:
        return None
    cfg = load_rule_config(rules_config) if rules_config is not None else RuleConfig()
    return cfg.with_rules(parse_rules(rules)) if rules is not None else cfg


def load_rule_config(path: str | Path) -> RuleConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a rule config must be a YAML mapping, got {type(data).__name__}")
        return RuleConfig.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"{path}: rule config not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a rule config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: YAML syntax error") from None
    except ValidationError as err:
        probs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: invalid rule config: {probs}") from None


def rule_constants_key(rules_config: str | Path | None = None) -> str:
    """A short hash of the rule constants a stage uses (the file's, else the paper's) for its step key: a constant
    changed in the code or in the file re-runs the steps that used it, never reuses their old outputs."""
    cfg = load_rule_config(rules_config) if rules_config else RuleConfig()
    blob = json.dumps(cfg.model_dump(mode="json", exclude={"rules"}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ resolving strings to ids


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The one id the tokenizer writes ``text`` as mid-sequence, or None if it takes several."""
    from .formats import continuation_ids

    ids = continuation_ids(tokenizer, text)
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


def _strip_space_marker(token: str, markers: Sequence[str]) -> str:
    for marker in markers:
        if token.startswith(marker):
            return token[len(marker) :]
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
    fmt: Any = "tulu"  # the chat format whose tags ``scope_anchor: last_tag`` searches for

    def __post_init__(self) -> None:
        tok = self.tokenizer
        from .formats import get_format

        chat = get_format(self.fmt)
        # No tag strings (``native``): nothing to re-find, so anchors stay at the prompt.
        self.user_tag_ids = tag_ids(tok, chat.user_tag) if chat.user_tag else None
        self.assistant_tag_ids = tag_ids(tok, chat.assistant_tag) if chat.assistant_tag else None
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
                [
                    _start_string_score(_strip_space_marker(t or "", c.start_space_markers), c.start_agreements, c.start_agreement_score)
                    for t in tokens
                ]
            )
        return self._start_vector

    def report(self) -> list[str]:
        """Which rule strings map to which ids (and which have no single-token match)."""
        lines = [r.describe() for r in self.resolved]
        lines.append(f"{'<EOS>':>10} ramp {self.config.eos_slope:g}/token up to {self.config.eos_max_length} -> id {self.eos_token_id}")
        return lines

    @property
    def tracks_tags(self) -> bool:
        return self.config.scope_anchor == "last_tag" and self.assistant_tag_ids is not None

    def anchors(
        self, input_ids: torch.Tensor, positions: torch.Tensor, response_start: torch.Tensor, instruction_start: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, P) response and instruction starts in force at each position.

        ``scope_anchor: prompt``: the prompt's, at every position. ``last_tag`` (the paper): the
        column after the last assistant / user tag at or before the position, if one ends
        after the prompt's own."""
        bsz, dev = input_ids.shape[0], input_ids.device
        pos = _positions(positions, bsz, dev)
        resp = response_start.to(dev).long().view(bsz, 1).expand_as(pos)
        ins = instruction_start.to(dev).long().view(bsz, 1).expand_as(pos) if instruction_start is not None else None
        if self.tracks_tags and self.assistant_tag_ids is not None:  # (tracks_tags implies the ids)
            resp = last_tag_end(input_ids, self.assistant_tag_ids, pos, resp)
            if ins is not None and self.user_tag_ids is not None:
                ins = last_tag_end(input_ids, self.user_tag_ids, pos, ins)
        return resp, ins

    def seen(
        self, input_ids: torch.Tensor, positions: torch.Tensor, response_start: torch.Tensor, instruction_start: torch.Tensor | None
    ) -> torch.Tensor:
        """The (B, P, V) mask the diversity rule penalises, with the configured scope and anchor."""
        resp, ins = self.anchors(input_ids, positions, response_start, instruction_start)
        return seen_tokens(
            input_ids, _positions(positions, input_ids.shape[0], input_ids.device), self.diversity_scope_start(resp, ins), self.vocab_size
        )

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
        column of each row's first response token in the prompt. ``scope_start``: (B,) or
        (B, P) first column the diversity rule counts (default: from the anchors, per the
        config's scope). ``instruction_start`` (B,) is needed by the start rule and the
        paper's diversity scope. ``seen``: the (B, P, V) :meth:`seen` mask, when the caller
        has already computed it. Returns (B, P, V) float32 on ``input_ids.device``.
        """
        resp, ins = self.anchors(input_ids, positions, response_start, instruction_start)
        return self._scores_at(input_ids, positions, resp, ins, scope_start, seen)

    def _scores_at(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        resp: torch.Tensor,
        instruction_start: torch.Tensor | None,
        scope_start: torch.Tensor | None = None,
        seen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`scores` with the anchors already resolved: ``resp`` and ``instruction_start`` (B, P)."""
        c, dev = self.config, input_ids.device
        bsz = input_ids.shape[0]
        pos = _positions(positions, bsz, dev)
        n_generated = pos + 1 - resp  # response tokens already generated at each position
        out = torch.zeros(bsz, pos.shape[1], self.vocab_size, device=dev)
        rules = set(c.rules)
        if "uniform" in rules:
            out += self.uniform_vector.to(dev)
        if "eos" in rules:
            ramp = (c.eos_slope * n_generated.double()).float()  # in double, then rounded once, as the paper does
            bonus = torch.where((n_generated > 0) & (n_generated < c.eos_max_length), ramp, torch.zeros_like(ramp))
            if c.eos_after_max == "hold":
                bonus = torch.where(n_generated >= c.eos_max_length, torch.full_like(ramp, c.eos_slope * c.eos_max_length), bonus)
            out[:, :, self.eos_token_id] += bonus
        if "diversity" in rules:
            if seen is None:
                start = scope_start if scope_start is not None else self.diversity_scope_start(resp, instruction_start)
                seen = seen_tokens(input_ids, pos, start, self.vocab_size)
            out -= c.diversity_penalty * seen.to(dev).float()
        if "start" in rules:
            if instruction_start is None:
                raise ValueError("the start rule needs instruction_start")
            first = n_generated == 0
            out += first.unsqueeze(2).float() * (c.start_weight * self.start_vector().to(dev))
            # the instruction's first token (after the last user tag, when anchors follow tags)
            ins_col = instruction_start.to(dev).long().clamp(max=input_ids.shape[1] - 1)
            ins_first = input_ids.gather(1, ins_col)  # (B, P)
            b_idx, p_idx = first.nonzero(as_tuple=True)
            out[b_idx, p_idx, ins_first[b_idx, p_idx]] += c.start_first_instruction_token
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


def tag_ids(tokenizer: Any, tag: str) -> list[int]:
    """The ids the paper's code searches for: the last (up to) 5 tokens of ``tag + "\n"``.

    The paper takes ``tokenizer(f"\n{TAG}\n")["input_ids"][-5:]``, which for Llama-2's tags (7
    tokens each) is a suffix of the tag line. We tokenize the tag line mid-sequence without the
    leading newline, so that a shorter tag is found both after BOS (the prompt's user tag) and
    after text; a tokenizer that merges the tag with the newline before it (or with a dummy-prefix
    space) leaves the tag unfound, and the anchors then stay at the prompt's."""
    from .formats import continuation_ids

    return continuation_ids(tokenizer, tag + "\n")[-5:]


def _positions(positions: torch.Tensor, bsz: int, dev: torch.device) -> torch.Tensor:
    pos = positions.to(dev).long()
    return pos.unsqueeze(0).expand(bsz, -1) if pos.dim() == 1 else pos


def tag_ends(input_ids: torch.Tensor, tag: Sequence[int]) -> torch.Tensor:
    """(B, L) bool: a ``tag`` occurrence ends at this column."""
    bsz, length = input_ids.shape
    k = len(tag)
    out = torch.zeros(bsz, length, dtype=torch.bool, device=input_ids.device)
    if k == 0 or length < k:
        return out
    windows = input_ids.unfold(1, k, 1)  # (B, L - k + 1, k)
    out[:, k - 1 :] = (windows == torch.tensor(list(tag), device=input_ids.device)).all(-1)
    return out


def last_tag_end(input_ids: torch.Tensor, tag: Sequence[int], positions: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """(B, P): the column after the last ``tag`` ending at or before each position, or ``default`` (B, P)
    where that is later (the prompt's own tag, or no occurrence)."""
    bsz, length = input_ids.shape
    cols = torch.arange(length, device=input_ids.device).view(1, length)
    after = torch.where(tag_ends(input_ids, tag), cols + 1, torch.zeros_like(cols)).cummax(1).values  # (B, L)
    found = after.gather(1, positions.long().clamp(0, length - 1))
    return torch.maximum(found, default.long())


def seen_tokens(input_ids: torch.Tensor, positions: torch.Tensor, scope_start: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, P, V) bool: token w occurs in ``input_ids[b, scope_start : t + 1]`` for each position t.

    ``positions`` (B, P) column indices; ``scope_start`` the first column that counts, (B,) or
    (B, P) (a generated user tag moves it within a row)."""
    if scope_start.dim() == 2:
        start2 = scope_start.to(input_ids.device).long()
        if bool((start2 == start2[:, :1]).all()):
            scope_start = start2[:, 0]
        else:  # one pass per distinct start within each row (a few: the prompt's, then each generated tag)
            out = torch.zeros(*positions.shape, vocab_size, dtype=torch.bool, device=input_ids.device)
            for b in range(input_ids.shape[0]):
                for s in torch.unique(start2[b]).tolist():
                    hit = (start2[b] == s).view(1, -1, 1)
                    part = seen_tokens(input_ids[b : b + 1], positions[b : b + 1], torch.tensor([s]), vocab_size)
                    out[b : b + 1] |= part & hit
            return out
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
    """HF ``LogitsProcessor``: base scores -> product-of-experts log-probs with the rules.

    Stateful per batch, so that each step costs O(batch), not O(sequence): only the newest
    token can complete a tag occurrence or join the diversity set, so the anchors and the
    seen-token mask are updated from the columns added since the last call (and rebuilt from
    scratch if the sequence is not an extension of the last one)."""

    def __init__(self, adapter: RuleAdapter, response_start: torch.Tensor, instruction_start: torch.Tensor | None):
        self.adapter, self.response_start, self.instruction_start = adapter, response_start, instruction_start
        self._width = 0  # columns already folded into the state
        self._prefix: torch.Tensor | None = None  # the first column of each row, to detect a new sequence
        self._resp: torch.Tensor = torch.empty(0, dtype=torch.long)  # (B,) set by _rebuild before first use
        self._ins: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None

    def _rebuild(self, input_ids: torch.Tensor) -> None:
        ad, dev = self.adapter, input_ids.device
        last = torch.tensor([input_ids.shape[1] - 1], device=dev)
        ins = self.instruction_start.to(dev) if self.instruction_start is not None else None
        resp, ins = ad.anchors(input_ids, last, self.response_start.to(dev), ins)
        self._resp, self._ins = resp[:, 0].clone(), ins[:, 0].clone() if ins is not None else None
        self._seen = None
        if "diversity" in ad.config.rules:
            scope = ad.diversity_scope_start(self._resp, self._ins)
            self._seen = seen_tokens(input_ids, last.view(1, 1).expand(input_ids.shape[0], 1), scope, ad.vocab_size)[:, 0].clone()
        self._width, self._prefix = input_ids.shape[1], input_ids[:, : self.response_start.max().item()].clone()

    def _advance(self, input_ids: torch.Tensor) -> None:
        ad = self.adapter
        width = input_ids.shape[1]
        fresh = (
            self._prefix is None
            or width <= self._width
            or input_ids.shape[0] != self._prefix.shape[0]
            or not torch.equal(input_ids[:, : self._prefix.shape[1]], self._prefix.to(input_ids.device))
        )
        if fresh:
            self._rebuild(input_ids)
            return
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        by_response = ad.config.diversity_scope == "response"
        for t in range(self._width, width):
            window = input_ids[:, : t + 1]
            new_resp = new_ins = None
            if ad.tracks_tags and ad.assistant_tag_ids is not None:
                new_resp = _ends_at_last(window, ad.assistant_tag_ids)
                self._resp = torch.where(new_resp, torch.full_like(self._resp, t + 1), self._resp)
                if self._ins is not None and ad.user_tag_ids is not None:
                    new_ins = _ends_at_last(window, ad.user_tag_ids)
                    self._ins = torch.where(new_ins, torch.full_like(self._ins, t + 1), self._ins)
            if self._seen is not None:
                reset = new_resp if by_response else new_ins
                self._seen[rows, input_ids[:, t]] = True
                if reset is not None and bool(reset.any()):  # the scope restarts after the tag
                    self._seen[reset] = False
        self._width = width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._advance(input_ids)
        last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
        ins = self._ins.view(-1, 1) if self._ins is not None else None
        seen = self._seen.unsqueeze(1) if self._seen is not None else None
        rule = self.adapter._scores_at(input_ids, last, self._resp.view(-1, 1), ins, seen=seen)[:, 0]
        vocab = min(scores.shape[-1], rule.shape[-1])  # some checkpoints pad the embedding matrix
        combined = torch.log_softmax(scores[:, :vocab].float(), -1) + torch.log_softmax(rule[:, :vocab], -1)
        out = torch.full_like(scores, -float("inf"), dtype=combined.dtype)
        out[:, :vocab] = torch.log_softmax(combined, -1)
        return out


def _ends_at_last(input_ids: torch.Tensor, tag: Sequence[int]) -> torch.Tensor:
    """(B,) bool: ``tag`` ends at the last column."""
    k = len(tag)
    if k == 0 or input_ids.shape[1] < k:
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    return (input_ids[:, -k:] == torch.tensor(list(tag), device=input_ids.device)).all(1)


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
    rule_lp = torch.log_softmax(adapter.scores(input_ids, positions, response_start, instruction_start=instruction_start), -1)
    if base_logits is None:
        return rule_lp
    base_lp = torch.log_softmax(base_logits.float(), -1)
    return torch.log_softmax(base_lp + rule_lp, -1) - base_lp
