"""GPU readiness without weights: every CUDA path of the study, at real shapes, in one prepared run.

``python scripts/gpu_check.py`` (or ``iit doctor --gpu``) builds models from their configs with
random weights directly on the accelerator (:mod:`implicit_it.shapes`: Gemma-3-270M, and a
Llama-2-7B shape in bf16), with the project's tokenizers, and runs the study's own code on them,
timing each step:

* one training step per method (LoRA, frozen embeddings, full) through the project's ``Trainer``
  set-up (:mod:`implicit_it.training`): bf16 autocast over fp32 master weights, the paper's effective
  batch of 64 by gradient accumulation, the response-only loss mask and the per-example loss reduction;
* batched greedy generation (:mod:`implicit_it.generation`), with and without the rule adapter;
* saving both checkpoints and loading one back with ``load_model(..., device_map="auto")``;
* the ranking scorer (:class:`implicit_it.probes.RankingProbe`, logit lens on a few layers) and the
  paper's reference loop;
* the delta pass (:class:`~implicit_it.analyses.LogitDelta`, :class:`~implicit_it.analyses.RuleComparison`);
* the streamed weight diff (:class:`~implicit_it.analyses.WeightDelta`) between the two checkpoints.

It prints the budget arithmetic first (parameters, bytes, FLOPs, memory, estimated seconds), then a
table of every step (tokens/s, MFU against the device's bf16 peak, peak GPU memory), then the checks,
and exits 1 if any check fails. ``--tiny`` runs the same code at 2-layer shapes in seconds, on CPU in
CI; without CUDA its "device" runs are bf16 on the CPU, compared against fp32 on the CPU, and it says so.

The package: :mod:`.plan` (the budget arithmetic; nothing is built), :mod:`.steps` (each step on the device),
:mod:`.report` (rows, checks, tables) and :mod:`.run` (the run over shapes and steps, ``iit doctor``'s lines, the CLI).
"""

from .plan import BUDGET_SECONDS, assumed_device, device_info, make_plans, train_flops
from .report import Check, CheckReport, Row, print_report
from .run import environment_lines, main, run_gpu_check

__all__ = [
    "BUDGET_SECONDS",
    "Check",
    "CheckReport",
    "Row",
    "assumed_device",
    "device_info",
    "environment_lines",
    "main",
    "make_plans",
    "print_report",
    "run_gpu_check",
    "train_flops",
]
