"""Every implicit-it system as an lm-evaluation-harness model, registered as ``iit``.

A *system* is a model (the base, a trained variant's directory, any spec :func:`~implicit_it.models.load_model` reads)
alone or combined with the paper's rule adapter (``system=rules`` or an ablation ``system=rules:eos,uniform``). Each
request's context is the **instruction**: it is wrapped in the system's chat format (``format=tulu`` by default, as
``iit generate`` and ``iit eval ifeval`` do) and the continuation is the response. ``format=raw`` scores and decodes
the context as plain text, for lm-eval's untemplated tasks.

What the rule adapter means for each request type:

* ``generate_until``: greedy decoding from the product of experts, exactly ``iit generate --rules`` (same engine call);
* ``loglikelihood``: the log-probability of the continuation under the product of experts,
  ``log softmax(log p_base + log softmax(r))`` token by token, with the rules' state (response length, tokens
  already used) taken from the context and the continuation so far — the distribution the adapter decodes from; its
  ``is_greedy`` says whether greedy decoding from that distribution would produce the continuation. A request longer
  than ``max_length`` keeps its last ``max_length`` tokens, as lm-eval's own models do (refused with rules);
* ``loglikelihood_rolling``: a text is scored as a response to an empty instruction (raw: after BOS), in windows of
  ``max_length`` tokens; the rules need the whole response in view, so with rules a text must fit in one window.

Sampling is refused (implicit-it decodes greedily); lm-eval's ``until`` strings cut the decoded text after decoding.

lm-eval releases that read the ``lm_eval.models`` entry point find ``iit`` by themselves (pyproject.toml declares it);
lm-eval 0.4.13, the version installed here, does not, so ``iit lm-eval ...`` registers it and runs lm-eval's own CLI.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry

from implicit_it.config import IFEVAL_DATA, RANKING_DATA, GenerateConfig, VllmConfig
from implicit_it.errors import ConfigError
from implicit_it.formats import ChatFormat, continuation_ids, encode_prompt, get_format, instruction_offset, pad_batch
from implicit_it.rules import RuleAdapter, RuleConfig, rule_config_from, rule_logit_delta

MODEL_NAME = "iit"
TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"  # the repository's offline task configs (--include_path)
TASK_DATA = {  # what each offline task reads, relative to the working directory (the repository root)
    "iit_ifeval": IFEVAL_DATA,
    "iit_lima_ranking": RANKING_DATA,
}


def rule_config_of(system: str, rules_config: str | None = None) -> RuleConfig | None:
    """``base`` → no adapter; ``rules`` → the paper's three rules; ``rules:<list>`` → that ablation
    (:func:`~implicit_it.rules.rule_config_from`, as ``--rules``/``--rules-config`` of the other commands)."""
    name, _, listed = system.partition(":")
    if name == "base" and not listed:
        if rules_config:
            raise ConfigError("system=base takes no rules_config (use system=rules)")
        return None
    if name != "rules":
        raise ConfigError(f"system={system!r}: choose base, rules, or rules:<subset of eos,uniform,diversity,start>")
    return rule_config_from(listed or "all", rules_config)


@dataclass(frozen=True)
class ScoredContinuation:
    logprob: float  # summed over the continuation's tokens
    is_greedy: bool  # every token is the argmax of the system's distribution
    n_tokens: int


@dataclass(frozen=True)
class ScoringItem:
    """One sequence to score: ``ids[target_start:]`` are the targets; ``response_start`` and ``instruction_start`` are
    the columns the rule adapter anchors on."""

    ids: list[int]
    target_start: int
    response_start: int
    instruction_start: int


class SystemScorer:
    """Teacher-forced log-probs of continuations under a model, or under the model × rule-adapter product of experts.

    Sequences are length-sorted and right-padded into batches of at most ``max_batch_tokens`` tokens (the full-vocabulary
    logits of a batch are its memory: 262k × 4 bytes per token for Gemma)."""

    def __init__(self, model: Any, adapter: RuleAdapter | None, *, max_batch_tokens: int = 2048, pad_token_id: int = 0):
        self.model, self.adapter, self.max_batch_tokens, self.pad_token_id = model, adapter, max_batch_tokens, pad_token_id

    def _batches(self, order: list[int], items: Sequence[ScoringItem]) -> Iterator[list[int]]:
        """``order`` is longest first, so a batch is as wide as its first item."""
        batch: list[int] = []
        for i in order:
            if batch and len(items[batch[0]].ids) * (len(batch) + 1) > self.max_batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.no_grad()
    def score(self, items: Sequence[ScoringItem]) -> list[ScoredContinuation]:
        out: list[ScoredContinuation | None] = [None] * len(items)
        device = next(self.model.parameters()).device
        order = sorted(range(len(items)), key=lambda i: (-len(items[i].ids), i))
        for idx in self._batches(order, items):
            batch = pad_batch([items[i].ids for i in idx], self.pad_token_id, side="right")
            logits = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
            ).logits
            for row, i in enumerate(idx):
                out[i] = self._score_row(items[i], logits[row, : len(items[i].ids)])
        return [o for o in out if o is not None]

    def _score_row(self, item: ScoringItem, logits: torch.Tensor) -> ScoredContinuation:
        seq = torch.tensor(item.ids, device=logits.device)
        positions = torch.arange(item.target_start - 1, len(item.ids) - 1, device=logits.device)
        targets = seq[positions + 1]
        step_logits = logits[positions].float()
        logprobs = torch.log_softmax(step_logits, -1)
        if self.adapter is not None:
            logprobs = (
                logprobs
                + rule_logit_delta(
                    self.adapter,
                    seq.unsqueeze(0),
                    positions.unsqueeze(0),
                    response_start=torch.tensor([item.response_start], device=logits.device),
                    instruction_start=torch.tensor([item.instruction_start], device=logits.device),
                    base_logits=step_logits.unsqueeze(0),
                )[0]
            )
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        greedy = bool((logprobs.argmax(-1) == targets).all())
        return ScoredContinuation(float(picked.double().sum()), greedy, len(targets))


def rolling_items(prefix: Sequence[int], tokens: Sequence[int], max_length: int, *, instruction_start: int) -> list[ScoringItem]:
    """Disjoint windows of at most ``max_length`` tokens that score each of ``tokens`` once (lm-eval's rolling windows).

    The first window starts with ``prefix`` (BOS, or the chat prompt of an empty instruction); each later window
    starts one token before its first target, so every target conditions on the window before it."""
    seq = list(prefix) + list(tokens)
    if len(prefix) >= max_length:
        raise ConfigError(f"max_length={max_length} leaves no room after a {len(prefix)}-token prompt")
    end = min(len(seq), max_length)
    items = [ScoringItem(seq[:end], len(prefix), len(prefix), instruction_start)]
    while end < len(seq):
        first, end = end, min(len(seq), end + max_length - 1)
        items.append(ScoringItem(seq[first - 1 : end], 1, 0, 0))
    return items


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lm-eval's ``until``)."""
    cuts = [text.index(s) for s in until if s and s in text]
    return text[: min(cuts)] if cuts else text


class ImplicitItLM(LM):
    """``lm_eval --model iit --model_args model=gemma-3-270m,system=rules``: see the module docstring."""

    def __init__(
        self,
        model: str = "gemma-3-270m",
        system: str = "base",
        rules_config: str | None = None,
        format: str = "tulu",
        backend: str = "hf",
        vllm_dtype: str = "bfloat16",
        batch_size: int | str = 8,
        max_batch_tokens: int = 2048,
        max_length: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,  # lm-eval's option for batch_size=auto; batches here are sized by tokens
        show_progress: bool = False,
        **unused: Any,
    ) -> None:
        super().__init__()
        from implicit_it.models import load_model

        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's CLI asks for cuda by default; as its hf model does, run where we can
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            batch_size = 8
        if unused:
            raise ConfigError(f"--model_args: unknown argument(s) {sorted(unused)} for --model {MODEL_NAME}")
        self.spec, self.system = str(model), system
        self.rule_config = rule_config_of(system, rules_config)
        self.chat: ChatFormat = get_format(format)
        self.generate_config = GenerateConfig(backend=backend, batch_size=int(batch_size), vllm=VllmConfig(dtype=vllm_dtype))
        self.show_progress = bool(show_progress)
        self.loaded = load_model(self.spec, dtype=dtype, device=device)
        self.loaded.model.eval()
        tok = self.loaded.tokenizer
        self.adapter = RuleAdapter(tok, self.rule_config, fmt=self.chat) if self.rule_config is not None else None
        self.max_length = int(max_length) if max_length is not None else self._context_length()
        self._warned_truncation = False
        self.scorer = SystemScorer(
            self.loaded.model, self.adapter, max_batch_tokens=int(max_batch_tokens), pad_token_id=tok.pad_token_id or 0
        )

    def _context_length(self) -> int:
        from implicit_it.generation import context_length

        return context_length(self.loaded.model) or 2048

    # ------------------------------------------------------------------ encoding

    def _prompt(self, context: str) -> tuple[list[int], int]:
        """Prompt ids for ``context`` and where the instruction starts in them (a tokenizer without BOS scores an empty
        raw context after EOS, as lm-eval's models do)."""
        tok = self.loaded.tokenizer
        ids = encode_prompt(tok, self.chat, context)
        if not ids:
            return [tok.eos_token_id], 1
        return ids, instruction_offset(tok, self.chat, context, ids)

    def _continuation(self, context: str, prompt_ids: list[int], continuation: str) -> list[int]:
        """The continuation's ids right after the prompt (as :func:`~implicit_it.formats.encode_example` splits them)."""
        tok = self.loaded.tokenizer
        full = list(tok(self.chat.prompt_text(context, tok) + continuation, add_special_tokens=True)["input_ids"])
        if full[: len(prompt_ids)] == prompt_ids:
            return full[len(prompt_ids) :]
        return continuation_ids(tok, continuation)

    def encode_pair(self, context: str, continuation: str) -> ScoringItem:
        prompt, ins = self._prompt(context)
        cont = self._continuation(context, prompt, continuation)
        if not cont:
            raise ConfigError(f"an empty continuation has no log-likelihood (context {context[:60]!r})")
        seq = prompt + cont
        if len(seq) <= self.max_length:
            return ScoringItem(seq, len(prompt), len(prompt), ins)
        # Too long: keep the last max_length tokens, as lm-eval's own models do (the context goes first, then the
        # continuation's head, whose tokens are then not scored).
        if self.adapter is not None:
            raise ConfigError(f"with rules, context and continuation must fit max_length={self.max_length} ({len(seq)} tokens)")
        if not self._warned_truncation:
            warnings.warn(f"a request of {len(seq)} tokens is cut to its last max_length={self.max_length}", stacklevel=2)
            self._warned_truncation = True
        cut = len(seq) - self.max_length
        first = max(1, len(prompt) - cut)
        return ScoringItem(seq[cut:], first, max(0, len(prompt) - cut), max(0, ins - cut))

    # ------------------------------------------------------------------ lm-eval's interface

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = [self.encode_pair(*req.args) for req in requests]
        scored = self.scorer.score(items)
        for req, s in zip(requests, scored, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, (s.logprob, s.is_greedy))
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        prefix, ins = self._prompt("")
        totals = []
        for req in requests:
            (text,) = req.args[:1]
            tokens = self._continuation("", prefix, text)
            items = rolling_items(prefix, tokens, self.max_length, instruction_start=ins)
            if self.adapter is not None and len(items) > 1:
                raise ConfigError(f"with rules, a rolling text must fit max_length={self.max_length} ({len(prefix) + len(tokens)} tokens)")
            total = sum(s.logprob for s in self.scorer.score(items))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from implicit_it.engines import generate

        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, req in enumerate(requests):
            _context, kwargs = req.args[0], dict(req.args[1] or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ConfigError("implicit-it decodes greedily: set do_sample=false, temperature=0 (--gen_kwargs)")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", 256))
            groups.setdefault((budget, tuple(until)), []).append(i)
        texts: list[str] = [""] * len(requests)
        for (budget, until), idx in groups.items():
            contexts = [requests[i].args[0] for i in idx]
            decoded = generate(
                self.spec,
                contexts,
                self.generate_config,
                fmt=self.chat,
                rule_config=self.rule_config,
                max_new_tokens=budget,
                load=lambda: self.loaded,
                show_progress=self.show_progress,
            )
            for i, result in zip(idx, decoded.results, strict=True):
                texts[i] = cut_at(result.output, until)
                self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
        return texts

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template`` would render the template before the system wraps the context in its own
        format (twice templated); the system's format is chosen with ``--model_args format=...`` instead."""
        raise ConfigError(
            f"--apply_chat_template: --model {MODEL_NAME} wraps each context in its chat format itself "
            f"(format={self.chat.name}); choose it with --model_args format=tulu|native|raw|..."
        )

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.loaded.tokenizer, "name_or_path", self.spec)).replace("/", "__")


def register() -> type[ImplicitItLM]:
    """Make ``--model iit`` known to this process's lm-eval (idempotent)."""
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME)(ImplicitItLM)
    return ImplicitItLM


@contextlib.contextmanager
def _argv(args: Sequence[str]) -> Iterator[None]:
    import sys

    saved = sys.argv
    sys.argv = ["lm_eval", *args]
    try:
        yield
    finally:
        sys.argv = saved


def run_lm_eval(args: Sequence[str]) -> None:
    """lm-eval's own CLI with ``iit`` registered and the repository's offline tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(args)
    for task, data in TASK_DATA.items():
        if any(task in a for a in args) and not Path(data).is_file():
            raise FileNotFoundError(f"task {task} reads {data} from the working directory ({Path.cwd()}): run from the repository root")
    if "--include_path" not in args:
        args += ["--include_path", str(TASKS_DIR)]
    with _argv(args):
        cli_evaluate()
