"""The GPU check's run: every step of every planned shape, the environment lines of ``iit doctor``, and the CLI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from implicit_it.errors import UserError
from implicit_it.shapes import random_model

from .plan import (
    FULL_SHAPES,
    METHODS,
    NOISE,
    STEPS,
    TINY_SHAPES,
    ShapePlan,
    assumed_device,
    device_info,
    device_line,
    make_plans,
    plan_lines,
)
from .report import Check, CheckReport, Row, print_report
from .steps import (
    delta_pass,
    free_device,
    generation_equality,
    generation_timing,
    perturbed,
    ranking,
    rule_scores_agree,
    save_and_load,
    timed,
    train_step,
    weight_diff,
)

# --------------------------------------------------------------------------- the run


def _attempt(report: CheckReport, model: str, step: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)``; an exception (e.g. out of memory) becomes a failed check and the run goes on."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the other steps
        report.checks.append(
            Check(model, f"{step}: ran", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        )
        traceback.print_exc(file=sys.stderr)
    free_device(report.device.device)  # after the except block: the traceback (and the step's tensors) are gone
    return None


def check_shape(
    report: CheckReport, plan: ShapePlan, steps: Sequence[str], workdir: Path, inject: str | None, say: Callable[[str], None]
) -> None:
    shape, s = plan.shape, plan.settings
    dev = report.device.device
    name = shape.name
    say(f"== {name}: building from its config with random weights on {dev} ...")
    with timed(dev) as t:
        loaded = random_model(shape, dtype=torch.float32, device=dev, seed=0, attn_implementation=s.train_attn)
    report.rows.append(
        Row(
            name,
            "build (random init on the device)",
            "fp32",
            None,
            t["seconds"],
            None,
            t["peak"],
            note=f"{plan.counts['total'] / 1e6:,.1f}M parameters",
        )
    )
    if "train" in steps:
        for method in METHODS:
            if method in plan.skip_methods:
                report.rows.append(Row(name, f"train {method}", "bf16 autocast", note="skipped: " + plan.skip_methods[method]))
                continue
            say(f"   train {method} ...")
            model = _attempt(report, name, f"train {method}", train_step, report, loaded, shape, s, plan, method, workdir)
            if model is not None:
                loaded.model = model
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    loaded.model.eval()
    loaded.model.config.use_cache = True
    if "generate" in steps:
        say("   generate fp32: batch-1 vs batched ...")
        _attempt(report, name, "generate fp32", generation_equality, report, loaded, shape, s, inject)
        _attempt(report, name, "rule scores", rule_scores_agree, report, loaded, shape)
    if not set(steps) & {"generate", "rank", "delta", "weights"}:
        return
    say("   bf16 weights, the noisy variant, checkpoints ...")
    loaded.model.to(torch.bfloat16)
    if loaded.model.config.dtype != torch.bfloat16:
        loaded.model.config.dtype = torch.bfloat16
    free_device(dev)
    variant = perturbed(loaded, NOISE, seed=1)
    out = _attempt(report, name, "save + load", save_and_load, report, loaded, variant, plan, workdir)
    if out is None:
        return
    base, base_dir, variant_dir = out
    del loaded
    free_device(dev)
    if "generate" in steps:
        say("   generate bf16 ...")
        _attempt(report, name, "generate bf16", generation_timing, report, base, plan)
        _attempt(report, name, "generate bf16 equality", generation_equality, report, base, shape, s, None)
    if "rank" in steps:
        say("   rank ...")
        _attempt(report, name, "rank", ranking, report, base, plan)
    if "delta" in steps:
        say("   delta pass ...")
        _attempt(report, name, "delta pass", delta_pass, report, base, variant, plan)
    if "weights" in steps:
        say("   weight diff ...")
        _attempt(report, name, "weight diff", weight_diff, report, base_dir, variant_dir, plan, base.tokenizer)
    del base, variant
    free_device(dev)


def run_gpu_check(
    *,
    tiny: bool = False,
    shapes: Sequence[str] | None = None,
    device: str | None = None,
    seq_len: int | None = None,
    steps: Sequence[str] = STEPS,
    workdir: str | Path | None = None,
    inject: str | None = None,
    say: Callable[[str], None] = print,
) -> CheckReport:
    """Run the readiness check; ``say`` gets the plan and progress lines. See the module docstring.

    Full mode needs CUDA unless ``device="cpu"`` is asked for explicitly (a slow dry run of the real shapes)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t_start = time.perf_counter()
    info = device_info(device)
    if not tiny and not info.is_cuda and device is None:
        raise RuntimeError("the full check builds a 7B model: it needs a CUDA device (use --tiny on CPU)")
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise UserError(f"unknown steps {sorted(unknown)}; choose from {list(STEPS)}")
    report = CheckReport(info, tiny)
    say(device_line(info))
    say(
        f"torch {torch.__version__}, transformers {transformers.__version__}; mode: {'tiny' if tiny else 'full'}; steps: {', '.join(steps)}"
    )
    plans = make_plans(info, tiny=tiny, shapes=shapes, seq_len=seq_len)
    report.estimate_seconds = sum(p.estimate_seconds for p in plans)
    report.plan = plan_lines(plans, info)
    say("\n".join(["plan:"] + report.plan))
    # 2-layer shapes gain nothing from intra-op threads, and on a busy CPU OpenMP's spinning threads made the tiny run 5x slower
    threads = torch.get_num_threads()
    if tiny and not info.is_cuda:
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="iit-gpu-check-", dir=workdir) as tmp:
            for plan in plans:
                check_shape(report, plan, steps, Path(tmp), inject, say)
    finally:
        torch.set_num_threads(threads)
    report.seconds = time.perf_counter() - t_start
    return report


def environment_lines() -> list[str]:
    """``iit doctor``: versions, CUDA, the device and its bf16 peak."""
    import platform

    import transformers

    info = device_info()
    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"CUDA available: {torch.cuda.is_available()}"
        + (f" (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))" if torch.cuda.is_available() else ""),
    ]
    if info.is_cuda:
        lines.append(
            f"device: {info.name}, {info.memory_bytes / 2**30:.1f} GiB, bf16 peak {info.peak_flops / 1e12:.0f} TFLOP/s "
            f"({info.peak_source}); bf16 supported: {torch.cuda.is_bf16_supported()}"
        )
    else:
        lines.append(f"device: {info.name}")
    lines.append(f"HF_HUB_OFFLINE: {os.environ.get('HF_HUB_OFFLINE', 'unset')}")
    lines.append("GPU readiness check: iit doctor --gpu (on a GPU machine, <= 10 min); --gpu --tiny: seconds, any device")
    return lines


DESCRIPTION = "GPU readiness without weights: every CUDA path of the study, at real shapes, in one prepared run."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=DESCRIPTION)
    parser.add_argument("--tiny", action="store_true", help="2-layer shapes (seconds, any device; what CI runs on CPU)")
    parser.add_argument(
        "--shapes", default=None, help=f"comma-separated shapes (default: {','.join(FULL_SHAPES)}; --tiny: {','.join(TINY_SHAPES)})"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--seq-len", type=int, default=None, help="training sequence length, >= 32 (default 1024; --tiny 32)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (a temporary folder under it, removed after)")
    parser.add_argument("--json", default=None, help="also write the plan, rows and checks as JSON here")
    parser.add_argument("--plan", action="store_true", help="print the budget arithmetic and exit (nothing is built)")
    parser.add_argument("--assume", default=None, metavar="GPU:GB", help='with --plan: size for this GPU, e.g. "H200:141", "H100:80"')
    parser.add_argument("--inject", default=None, choices=["generation"], help=argparse.SUPPRESS)  # tests: a deliberate mismatch
    args = parser.parse_args(argv)
    if args.seq_len is not None and args.seq_len < 32:
        parser.error("--seq-len must be at least 32 (the prompt of a training example takes ~20 tokens)")
    if args.plan:
        info = assumed_device(args.assume) if args.assume else device_info(args.device)
        plans = make_plans(info, tiny=args.tiny, shapes=args.shapes.split(",") if args.shapes else None, seq_len=args.seq_len)
        print("\n".join([device_line(info), "plan:"] + plan_lines(plans, info)))
        return 0
    report = run_gpu_check(
        tiny=args.tiny,
        shapes=args.shapes.split(",") if args.shapes else None,
        device=args.device,
        seq_len=args.seq_len,
        steps=[x for x in args.steps.split(",") if x],
        workdir=args.workdir,
        inject=args.inject,
        say=lambda line: print(line, flush=True),
    )
    print_report(report, lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
