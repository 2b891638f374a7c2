"""The paper's rule adapter inside vLLM's sampler: a batch-level vLLM ``LogitsProcessor``.

vLLM builds this class once per engine, in its engine process, from its import path (it must not be pickled), and
calls ``update_state`` whenever requests join, leave or move within the persistent batch. A request asks for the
adapter through ``SamplingParams.extra_args[EXTRA_ARGS_KEY]`` (see :func:`request_args`): the rule constants, the chat
format whose tags the paper's code re-finds each step, and where the instruction starts in the prompt. Each such row
gets its own :class:`~implicit_it.rules.RuleLogitsProcessor` — the very object the HF path uses — fed the row's prompt
and output ids, so both paths compute the same r(w, x) from the same code; only the base logits differ (vLLM's dtype
and kernels). Importing this module imports vLLM: it is loaded only by the vLLM backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .rules import RuleAdapter, RuleConfig, RuleLogitsProcessor

EXTRA_ARGS_KEY = "implicit_it_rules"
PROCESSOR_PATH = "implicit_it.vllm_rules:RuleAdapterLogitsProcessor"  # the FQCN vLLM imports in its engine process


def request_args(rule_config: RuleConfig, fmt: str, instruction_start: int | None) -> dict[str, Any]:
    """The ``extra_args`` entry that switches the adapter on for one request (JSON-serialisable: it crosses processes)."""
    return {EXTRA_ARGS_KEY: {"config": rule_config.model_dump(mode="json"), "format": fmt, "instruction_start": instruction_start}}


@dataclass
class _Row:
    """One request's state: its prompt, a live reference to its output ids, and its stateful rule processor."""

    prompt: list[int]
    output: list[int]  # vLLM appends to this list in place
    processor: RuleLogitsProcessor


class RuleAdapterLogitsProcessor(LogitsProcessor):
    """Applies the product of experts log p_base + log_softmax(r) to the rows whose requests asked for it."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.tokenizer_path = vllm_config.model_config.tokenizer
        self.device = device
        self._tokenizer: Any = None
        self._adapters: dict[str, RuleAdapter] = {}  # by (config, format), built once per engine
        self.rows: dict[int, _Row] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        args = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if args is not None:
            RuleConfig.model_validate(args["config"])

    def is_argmax_invariant(self) -> bool:
        return False  # the rules change which token is best: vLLM must apply them before greedy argmax

    def _adapter(self, args: dict[str, Any]) -> RuleAdapter:
        key = json.dumps([args["config"], args["format"]], sort_keys=True)
        if key not in self._adapters:
            if self._tokenizer is None:
                from .models import load_tokenizer

                self._tokenizer = load_tokenizer(self.tokenizer_path)
            self._adapters[key] = RuleAdapter(self._tokenizer, RuleConfig.model_validate(args["config"]), fmt=args["format"])
        return self._adapters[key]

    def _new_row(self, params: Any, prompt: list[int] | None, output: list[int]) -> _Row | None:
        args = (params.extra_args or {}).get(EXTRA_ARGS_KEY) if params is not None else None
        if args is None:
            return None
        if prompt is None:
            raise ValueError("the rule adapter needs the prompt's token ids")
        adapter = self._adapter(args)
        ins = args.get("instruction_start")
        processor = RuleLogitsProcessor(adapter, torch.tensor([len(prompt)]), torch.tensor([ins]) if ins is not None else None)
        return _Row(list(prompt), output, processor)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            row = self._new_row(params, prompt, output)
            if row is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = row
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self.rows.items():
            ids = torch.tensor([row.prompt + row.output], dtype=torch.long)
            logits[index] = row.processor(ids, logits[index : index + 1].float().cpu())[0].to(logits.device, logits.dtype)
        return logits
