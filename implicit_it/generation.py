"""Batched, KV-cached greedy generation with a hook point for logits processors.

Prompts are sorted by length and left-padded, so every row's response starts at the same
column; a logits processor (e.g. the rule adapter) therefore knows each row's response length
from ``input_ids.shape[1] - batch.prompt_width``. Processors are built per batch by a factory
so they can see the batch's prompts (the diversity rule needs the instruction tokens).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .errors import UserError
from .formats import ChatFormat, encode_prompt, get_format, instruction_offset, pad_batch


@dataclass(frozen=True)
class PromptBatch:
    """What a logits-processor factory sees: one left-padded batch of prompts."""

    input_ids: torch.Tensor  # (batch, prompt_width), left-padded
    attention_mask: torch.Tensor
    prompt_lengths: list[int]
    indices: list[int]  # positions of these rows in the caller's prompt list
    instruction_offsets: list[int] | None = None  # per row, prompt tokens before the instruction

    @property
    def pad_lengths(self) -> list[int]:
        return [self.prompt_width - n for n in self.prompt_lengths]

    def instruction_starts(self) -> list[int]:
        """Column where each row's instruction starts in the padded batch."""
        if self.instruction_offsets is None:
            raise ValueError("this batch carries no instruction offsets (pass instruction_offsets to generate_ids)")
        return [pad + off for pad, off in zip(self.pad_lengths, self.instruction_offsets, strict=True)]

    @property
    def prompt_width(self) -> int:
        return int(self.input_ids.shape[1])


LogitsProcessorFactory = Callable[[PromptBatch], Any]


@dataclass
class GenerationResult:
    instruction: str
    output: str
    token_ids: list[int]
    stopped: bool  # ended on a stop token (EOS) rather than the token budget


@dataclass
class GenerationStats:
    n_prompts: int = 0
    n_new_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.n_new_tokens / self.seconds if self.seconds else 0.0


def _batches(order: list[int], batch_size: int) -> Iterable[list[int]]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class PromptTooLong(UserError):
    """A prompt leaves no room in the model's context: refused before anything is allocated."""


def context_length(model: Any) -> int | None:
    """The model's context in tokens (``config.max_position_embeddings``), or None when it does not say."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_context(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> None:
    """Refuse prompts that leave no room for a new token in the model's context (the paper's code does not truncate
    instructions): the error names each such instruction (0-based, in the caller's order) and its length."""
    check_context_length(context_length(model), prompts, max_new_tokens)


def check_context_length(limit: int | None, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> None:
    """:func:`check_context` for a context of ``limit`` tokens (None: unknown, nothing refused). With ``max_new_tokens``,
    also refuse a budget that would decode past the context (positions the model was never trained on): every prompt
    plus the budget must fit."""
    if limit is None:
        return
    long = [(i, len(p)) for i, p in enumerate(prompts) if len(p) >= limit]
    if long:
        shown = ", ".join(f"#{i} ({n} tokens)" for i, n in long[:5]) + (f" and {len(long) - 5} more" if len(long) > 5 else "")
        raise PromptTooLong(
            f"{len(long)} prompt(s) do not fit the model's context of {limit} tokens (config.max_position_embeddings), "
            f"with room for at least one new token: instruction {shown}; shorten or leave out those instructions"
        )
    longest = max((len(p) for p in prompts), default=0)
    if max_new_tokens is not None and longest + max_new_tokens > limit:
        raise PromptTooLong(
            f"max_new_tokens {max_new_tokens} does not fit the model's context of {limit} tokens "
            f"(config.max_position_embeddings) after the longest prompt ({longest} tokens): the largest budget that "
            f"fits is {limit - longest}"
        )


@torch.no_grad()
def generate_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    stop_token_ids: Sequence[int],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    logits_processor_factory: LogitsProcessorFactory | None = None,
    progress: Callable[[int], None] | None = None,
    instruction_offsets: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[bool], GenerationStats]:
    """Greedy-decode each prompt (token ids). Returns new ids (stop token excluded), stop flags, stats.

    ``stop_token_ids=()`` decodes exactly ``max_new_tokens`` for every prompt (benchmarks).

    Batches are formed from length-sorted prompts to minimise padding; results come back
    in the caller's order."""
    from transformers import GenerationConfig, LogitsProcessorList

    check_context(model, prompts, max_new_tokens)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    outputs: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    stats = GenerationStats(n_prompts=len(prompts))
    stop_set = set(stop_token_ids)
    # An explicit config, so that sampling defaults or stop ids in a checkpoint's
    # generation_config cannot change greedy decoding. No stop ids: always decode max_new_tokens.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=list(stop_token_ids),
        pad_token_id=pad_token_id,  # [] (not None) disables stopping
    )
    t0 = time.perf_counter()
    for idx in _batches(order, batch_size):
        batch = pad_batch([prompts[i] for i in idx], pad_token_id, side="left")
        offsets = [instruction_offsets[i] for i in idx] if instruction_offsets is not None else None
        pb = PromptBatch(batch["input_ids"], batch["attention_mask"], [len(prompts[i]) for i in idx], idx, offsets)
        processors = LogitsProcessorList()
        if logits_processor_factory is not None:
            made = logits_processor_factory(pb)
            processors.extend(made if isinstance(made, (list, tuple)) else [made])
        gen = model.generate(
            input_ids=pb.input_ids.to(device),
            attention_mask=pb.attention_mask.to(device),
            generation_config=config,
            logits_processor=processors,
        )
        new = gen[:, pb.prompt_width :].tolist()
        for row, i in enumerate(idx):
            ids = new[row]
            cut = next((k for k, t in enumerate(ids) if t in stop_set), None)
            outputs[i] = ids if cut is None else ids[:cut]
            stopped[i] = cut is not None
            stats.n_new_tokens += len(outputs[i]) + (1 if cut is not None else 0)
        stats.batches += 1
        if progress is not None:
            progress(len(idx))
    stats.seconds = time.perf_counter() - t0
    return outputs, stopped, stats


def encode_instructions(tokenizer: Any, fmt: ChatFormat, instructions: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Each instruction's prompt ids in ``fmt`` and where its instruction starts (what every backend decodes from)."""
    prompts = [encode_prompt(tokenizer, fmt, ins) for ins in instructions]
    offsets = [instruction_offset(tokenizer, fmt, ins, ids) for ins, ids in zip(instructions, prompts, strict=True)]
    return prompts, offsets


def decode_results(
    tokenizer: Any, instructions: Sequence[str], ids: Sequence[list[int]], stopped: Sequence[bool]
) -> list[GenerationResult]:
    return [
        GenerationResult(ins, tokenizer.decode(out, skip_special_tokens=False), out, st)
        for ins, out, st in zip(instructions, ids, stopped, strict=True)
    ]


def generate_responses(
    loaded: Any,
    instructions: Sequence[str],
    *,
    fmt: str | ChatFormat = "tulu",
    max_new_tokens: int = 256,
    batch_size: int = 8,
    logits_processor_factory: LogitsProcessorFactory | None = None,
    show_progress: bool = True,
) -> tuple[list[GenerationResult], GenerationStats]:
    """Format each instruction, greedy-decode with transformers, and decode the response text."""
    fmt = get_format(fmt)
    tok = loaded.tokenizer
    prompts, offsets = encode_instructions(tok, fmt, instructions)
    with progress_bar(len(prompts), show_progress) as advance:
        ids, stopped, stats = generate_ids(
            loaded.model,
            prompts,
            pad_token_id=tok.pad_token_id,
            stop_token_ids=fmt.stop_token_ids(tok),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            logits_processor_factory=logits_processor_factory,
            progress=advance,
            instruction_offsets=offsets,
        )
    return decode_results(tok, instructions, ids, stopped), stats


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, label: str = "generating") -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar over ``total`` items; yields its ``advance`` callback (None when disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("gen", total=total)
        yield lambda n: bar.advance(task, n)


# ------------------------------------------------------------------ comparing two greedy runs


TOP_K = 8  # scores recorded per decoding step: enough to hold a tie of several tokens
StepScores = tuple[list[int], list[float]]  # one step's top token ids and their scores, best first


class TopRecorder:
    """A pass-through logits processor: per prompt and step, the top ``TOP_K`` tokens of the final scores and their scores."""

    def __init__(self, indices: Sequence[int], store: dict[int, list[StepScores]]):
        self.indices, self.store = list(indices), store

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top = scores.float().topk(TOP_K, dim=-1)
        vals, ids = top.values.cpu().tolist(), top.indices.cpu().tolist()
        for row, i in enumerate(self.indices):
            self.store.setdefault(i, []).append((ids[row], vals[row]))
        return scores


def near_top(record: StepScores, choices: set[int], tol: float) -> float | None:
    """How far below this step's best score the best of ``choices`` scored (None: not among the recorded top tokens)."""
    ids, vals = record
    gaps = [vals[0] - v for t, v in zip(ids, vals, strict=True) if t in choices]
    return min(gaps) if gaps else None


def compare_generations(
    single: Sequence[Any], batched: Sequence[Any], tops_single: dict, tops_batched: dict, tol: float, stop_ids: Sequence[int] = ()
) -> tuple[bool, str]:
    """Two greedy runs' tokens (batch-1 vs batched, hf vs vllm): equal, or parted only at a near-tie: where they part,
    each run's choice scored within ``tol`` of the best score in the other run (so rounding may flip it). A stop counts
    as any stop id. ``tops_*``: per prompt, each step's :data:`StepScores` (:class:`TopRecorder`, or the vllm engine's)."""
    identical = ties = 0
    problems, tie_gaps = [], []
    stops = set(stop_ids)
    for i, (a, b) in enumerate(zip(single, batched, strict=True)):
        sa, sb = list(a.token_ids) + ([-1] if a.stopped else []), list(b.token_ids) + ([-1] if b.stopped else [])
        if sa == sb:
            identical += 1
            continue
        p = next((k for k in range(min(len(sa), len(sb))) if sa[k] != sb[k]), min(len(sa), len(sb)))
        ta, tb = tops_single.get(i, []), tops_batched.get(i, [])
        if p >= len(sa) or p >= len(sb) or p >= len(ta) or p >= len(tb):
            problems.append(f"prompt {i}: {len(sa)} vs {len(sb)} tokens")
            continue
        choice_a = {sa[p]} if sa[p] >= 0 else stops
        choice_b = {sb[p]} if sb[p] >= 0 else stops
        gap_in_a = near_top(ta[p], choice_b, tol)  # the second run's choice, as the first run scored it
        gap_in_b = near_top(tb[p], choice_a, tol)
        if gap_in_a is not None and gap_in_b is not None and max(gap_in_a, gap_in_b) <= tol:
            ties += 1
            tie_gaps.append(max(gap_in_a, gap_in_b))
        else:
            fmt = lambda g: "not in the top " + str(TOP_K) if g is None else format(g, ".3g")  # noqa: E731
            problems.append(
                f"prompt {i} parts at token {p}: {sorted(choice_a)[:2]} vs {sorted(choice_b)[:2]} "
                f"(each below the other's best by {fmt(gap_in_a)}, {fmt(gap_in_b)})"
            )
    n = len(single)
    detail = f"{identical}/{n} prompts token-identical"
    if ties:
        detail += f", {ties} part at a near-tie (gap {max(tie_gaps):.3g} <= {tol:g})"
    if problems:
        detail += "; " + "; ".join(problems[:3])
    return not problems, detail


def gap_noise(
    first: Sequence[Any], second: Sequence[Any], tops_first: dict[int, list[StepScores]], tops_second: dict[int, list[StepScores]]
) -> list[float]:
    """How much two runs disagree on score gaps where they still agree on the text: at every step before a prompt's
    runs part, for each token in both runs' recorded top tokens, |(best − its score) in one run − the same in the
    other|. This is the runs' own numerical noise (e.g. bf16 against fp32), the scale a near-tie is measured on."""
    out: list[float] = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        ta, tb = tops_first.get(i, []), tops_second.get(i, [])
        same = next((k for k in range(min(len(a.token_ids), len(b.token_ids))) if a.token_ids[k] != b.token_ids[k]), None)
        steps = min(len(ta), len(tb), same if same is not None else min(len(a.token_ids), len(b.token_ids)))
        for k in range(steps):
            ids_a, vals_a = ta[k]
            score_b = dict(zip(*tb[k], strict=True))
            best_b = tb[k][1][0]
            out.extend(abs((vals_a[0] - v) - (best_b - score_b[t])) for t, v in zip(ids_a, vals_a, strict=True) if t in score_b)
    return out


def ranked_scores(pairs: Iterable[tuple[int, float]]) -> StepScores:
    """(token id, score) pairs as :data:`StepScores`, best first."""
    ordered = sorted(pairs, key=lambda p: -p[1])
    return [t for t, _ in ordered], [float(v) for _, v in ordered]


def alpaca_eval_records(
    results: Sequence[GenerationResult], generator: str, datasets: Sequence[str] | str | None = None
) -> list[dict[str, Any]]:
    """AlpacaEval model-output records ``{"instruction", "output", "generator", "dataset"}``, each with whether it
    ended with EOS and its new tokens (``ended_with_eos``, ``n_tokens``: AlpacaEval ignores them; the evaluation
    reads them). ``datasets``: one name for all, or one per result."""
    names = [datasets] * len(results) if isinstance(datasets, str) else datasets
    return [
        {
            "instruction": r.instruction,
            "output": r.output,
            "generator": generator,
            "dataset": (names[i] if names else "") or "implicit_it",
            "ended_with_eos": r.stopped,
            "n_tokens": len(r.token_ids),
        }
        for i, r in enumerate(results)
    ]


def write_outputs(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write AlpacaEval records atomically, first removing the old file's sidecar manifest (the caller writes the new
    one): killed in between, the outputs have no sidecar rather than a stale one."""
    from .manifest import discard_sidecar
    from .paths import write_or_rescue

    discard_sidecar(path)
    return write_or_rescue(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")
