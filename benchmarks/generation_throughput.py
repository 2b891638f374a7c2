"""Greedy generation throughput on the embedded Gemma-3-270M (CPU), by batch size.

Baseline: batch size 1 with the KV cache, measured in the same run. Prints new tokens/s per
batch size and the ratio to the baseline. Every prompt runs to the full token budget (stop
tokens are disabled) so all settings decode the same number of tokens.

    python benchmarks/generation_throughput.py [--prompts 16] [--new-tokens 64] [--batch-sizes 1 8 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from implicit_it.data import read_instructions
from implicit_it.formats import encode_prompt
from implicit_it.generation import generate_ids
from implicit_it.models import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lima" / "val_instructions.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--instructions", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    args = ap.parse_args()

    loaded = load_model(args.spec, device="cpu")
    tok = loaded.tokenizer
    prompts = [encode_prompt(tok, "tulu", i.instruction) for i in read_instructions(args.instructions, limit=args.prompts)]
    print(
        f"model: {loaded.source.display_name}; {len(prompts)} prompts x {args.new_tokens} new tokens; "
        f"torch threads {torch.get_num_threads()}"
    )
    baseline = None
    for bs in args.batch_sizes:
        t = time.perf_counter()
        out, _, stats = generate_ids(
            loaded.model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=(), max_new_tokens=args.new_tokens, batch_size=bs
        )
        secs = time.perf_counter() - t
        tps = sum(len(o) for o in out) / secs
        baseline = baseline or tps
        print(f"batch {bs:3d}: {tps:7.1f} new tokens/s  ({secs:6.1f} s)  ratio vs batch 1: {tps / baseline:5.2f}x")


if __name__ == "__main__":
    main()
