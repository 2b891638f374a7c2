"""Training throughput of the demo config: full finetuning (baseline) vs frozen embeddings vs LoRA, in fp32 and bf16.

Each method runs the real engine (``train_variant``: Trainer, masked data, same batches) for a
few optimizer steps; tokens/s counts non-padding input tokens. Ratios are against the first method
measured in the same run. Each method's loss per optimizer step is printed beside fp32's on the same batches
(``--curves``), so a faster dtype is adopted only where its curve agrees. On a GPU it also prints MFU:
6 x parameters x tokens/s over the GPU's dense bf16 peak (the usual convention; frozen weights are not discounted).

Methods: ``full``, ``frozen_embeddings`` (the studies' setting), ``lora`` in fp32; ``frozen_embeddings_bf16`` (bf16
autocast over fp32 master weights, ``training.bf16``) and ``lora_bf16_weights`` (bf16 base weights under fp32 LoRA
adapters, ``training.weights_dtype: bfloat16``).

    python3 benchmarks/train_throughput.py [--config configs/demo.yaml] [--steps 4] [--methods frozen_embeddings,frozen_embeddings_bf16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# dense bf16 peak FLOP/s by device-name substring
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}

METHODS = {
    "full": {"method": "full", "freeze_embeddings": False},
    "frozen_embeddings": {"method": "full", "freeze_embeddings": True},
    "lora": {"method": "lora", "freeze_embeddings": False},
    "frozen_embeddings_bf16": {"method": "full", "freeze_embeddings": True, "bf16": True},
    "lora_bf16_weights": {"method": "lora", "freeze_embeddings": False, "weights_dtype": "bfloat16"},
}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--variant", default="response")
    ap.add_argument("--steps", type=int, default=4, help="Optimizer steps per method.")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()

    from implicit_it.app.config import load_config
    from implicit_it.training import parse_variant, train_variant

    base = load_config(args.config)
    variant = parse_variant(args.variant, base)[0]
    peak = peak_flops()
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="iit-train-bench-"))
    try:
        for name in args.methods.split(","):
            training = base.training.model_copy(update={**METHODS[name], "max_steps": args.steps, "save_steps": 10**9})
            cfg = base.model_copy(update={"training": training, "data": base.data.model_copy(update={"heldout_examples": 0})})
            res = train_variant(cfg, variant, out_dir=scratch / name, show_progress=False, command="benchmarks/train_throughput.py")
            r = res.results
            row = {
                "method": name,
                "tokens_per_second": r["tokens_per_second"],
                "trainable": r["trainable_parameters"],
                "parameters": res.manifest["model"]["n_parameters"],
                "steps": r["optimizer_steps"],
                "tokens": r["tokens_seen"],
                "losses": [p["loss"] for p in res.manifest["results"]["loss_curve"]],
            }
            if peak:
                row["mfu"] = 6 * row["parameters"] * row["tokens_per_second"] / peak
            rows.append(row)
            shutil.rmtree(scratch / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{base.model.spec} / {variant.name}: {args.steps} optimizer steps per method, effective batch "
        f"{base.training.effective_batch_size}, max length {base.training.max_length}, bf16={base.training.bf16}, on {device}"
    )
    baseline = rows[0]["tokens_per_second"]
    for row in rows:
        mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
        print(
            f"  {row['method']:<24} {row['tokens_per_second']:8.1f} tok/s  "
            f"x{row['tokens_per_second'] / baseline:.2f} vs {rows[0]['method']}"
            f"  ({row['trainable'] / 1e6:.1f}M of {row['parameters'] / 1e6:.1f}M parameters trained{mfu})"
        )
    print("loss per optimizer step (same batches):")
    for row in rows:
        gap = max((abs(a - b) for a, b in zip(row["losses"], rows[0]["losses"], strict=False)), default=0.0)
        print(f"  {row['method']:<24} {' '.join(f'{x:.4f}' for x in row['losses'])}  (max |Δ| vs {rows[0]['method']}: {gap:.4f})")


if __name__ == "__main__":
    main()
