"""Response-ranking scoring: the fast path vs the paper's loop, pairs per second, in one run.

Baseline (the paper's ``ratio_eval.py``, measured in the same run): one pair at a time,
``model(input_ids, labels=labels).loss`` over the whole sequence, no cache.
Fast path (``implicit_it.probes.score_groups``): each instruction's prompt runs once into a KV
cache that its k+1 responses reuse, pairs are batched (padding-aware, longest first) and the
unembedding runs only at response positions, in row chunks.
Both score the same pairs; the script also prints the largest difference of the mean log-probs
(the test suite requires <= 1e-4). Target: ratio >= 5x.

    python benchmarks/ranking_throughput.py [--spec gemma-3-270m] [--instructions 4] [--negatives 5] [--max-length 512]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from implicit_it.data import read_ranking_source
from implicit_it.models import load_model
from implicit_it.probes import OUTPUT, PairForward, build_ranking_groups, encode_groups, paper_scores, score_groups

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lima" / "train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--instructions", type=int, default=4)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    loaded = load_model(args.spec, device=args.device)
    source = read_ranking_source(args.data, limit=args.instructions)
    groups = encode_groups(
        loaded.tokenizer, "tulu", source, build_ranking_groups(source, negatives=args.negatives), max_length=args.max_length
    )
    n_seqs = sum(len(g.responses) for g in groups)
    n_pairs = sum(len(g.responses) - 1 for g in groups)  # (real, other) comparisons
    n_tokens = sum(len(g.prompt_ids) + len(r) for g in groups for r in g.responses)
    print(
        f"model: {loaded.source.display_name} on {loaded.device} ({loaded.dtype}); torch threads {torch.get_num_threads()}; "
        f"{len(groups)} instructions x {args.negatives + 1} responses = {n_seqs} scored sequences ({n_pairs} ranking pairs), "
        f"{n_tokens} tokens, "
        f"max_length {args.max_length}"
    )

    def timed(fn):
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    score_groups(PairForward(loaded, max_batch_tokens=args.batch_tokens), groups[:1])  # warm-up (allocator, kernels)
    fast, t_fast = timed(lambda: score_groups(PairForward(loaded, max_batch_tokens=args.batch_tokens), groups))
    naive, t_naive = timed(lambda: paper_scores(loaded.model, groups))
    diff = float(np.nanmax(np.abs(fast.mean(OUTPUT) - naive.mean(OUTPUT))))
    print(f"paper loop (batch 1, no cache):    {n_pairs / t_naive:8.2f} pairs/s, {n_seqs / t_naive:8.2f} sequences/s ({t_naive:.1f} s)")
    print(f"fast path (prefix reuse, batched): {n_pairs / t_fast:8.2f} pairs/s, {n_seqs / t_fast:8.2f} sequences/s ({t_fast:.1f} s)")
    print(f"ratio: {t_naive / t_fast:.2f}x (target >= 5x); max |mean log-prob difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
