"""Greedy generation against this CPU's roofline (Gemma-3-270M, fp32): how far is `iit generate` from the machine's limit?

Measured in the same run:

* the machine: the fp32 matmul rate on the model's own shapes (a batch of rows times the 640×262,144 unembedding and
  the 640×2,048 MLP matrices; GFLOP/s) and the memory bandwidth (a streaming sum over a 1 GiB tensor; GB/s);
* the bounds they imply for each batch size B and prompt length P: a prefill reads every weight once and does
  2·(N_blocks·B·P + N_head·B) flops (generation keeps only the last position's logits); a decode step reads every
  weight once and does 2·N·B flops (N = N_blocks + N_head: the embedding is a lookup), so one step takes at least
  max(weight bytes / bandwidth, 2·N·B / matmul rate); attention's own flops are left out (small at these lengths);
* `generate_ids` (the loop `iit generate` runs) at each B, short and long prompts: the prefill (one new token) and
  the decode rate ((T − 1) further tokens), each against its bound (ratio measured / bound; 1.0 is the roofline).

    python benchmarks/generation_roofline.py [--batch-sizes 1 4 16 64] [--long-batch-sizes 1 4 16] [--new-tokens 33] [--long-tokens 320]
    python benchmarks/generation_roofline.py --profile-batch 64   # only: where 8 decode steps at that batch size go

``--profile-batch B`` profiles ``generate_ids`` on B short prompts with 9 new tokens and with 1 (torch profiler, CPU)
and prints the self time per operator of the difference: 8 decode steps without the prefill.
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


def best_of(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls (after one warm-up): the machine's rate, not its noise."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(rows: int, inner: int, cols: int, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    return 2 * rows * inner * cols / best_of(lambda: torch.mm(a, b)) / 1e9


def bandwidth_gbs(gib: float = 1.0) -> float:
    x = torch.ones(int(gib * 2**30 / 4))
    return x.numel() * 4 / best_of(lambda: x.sum()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--instructions", default=str(DATA))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="batch sizes with the short prompts")
    ap.add_argument("--long-batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="batch sizes with the long prompts")
    ap.add_argument("--new-tokens", type=int, default=33, help="tokens per prompt in the decode timing (the first is the prefill's)")
    ap.add_argument("--long-tokens", type=int, default=320, help="length of the long prompts (LIMA instructions repeated)")
    ap.add_argument("--profile-batch", type=int, default=None, help="only profile 8 decode steps at this batch size")
    args = ap.parse_args()

    loaded = load_model(args.spec, device="cpu")
    if args.profile_batch:
        profile_decode(loaded, [i.instruction for i in read_instructions(args.instructions)], args.profile_batch)
        return
    model, tok = loaded.model, loaded.tokenizer
    head = model.get_output_embeddings().weight
    blocks = sum(p.numel() for p in model.get_decoder().layers.parameters())
    n_active = blocks + head.numel()  # what one token passes through (the embedding is a lookup)
    weight_bytes = n_active * head.element_size()
    d, vocab = head.shape[1], head.shape[0]
    print(f"model: {loaded.source.display_name}; {n_active / 1e6:.0f}M parameters per token ({blocks / 1e6:.0f}M in blocks)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    rates = {f"unembedding ({b}x{d} @ {d}x{vocab})": matmul_gflops(b, d, vocab) for b in (1, 16, 64)}
    rates[f"MLP (256x{d} @ {d}x2048)"] = matmul_gflops(256, d, 2048)
    for name, r in rates.items():
        print(f"matmul {name}: {r:7.1f} GFLOP/s")
    flops = max(rates.values())
    for b in (1, 16, 64):  # the model's own unembedding as generation calls it: F.linear(x, W) with W (vocab, d)
        x = torch.randn(b, d)
        with torch.no_grad():
            secs = best_of(lambda x=x: torch.nn.functional.linear(x, head))
        print(f"the model's lm_head, F.linear({b}x{d}, W {vocab}x{d}): {2 * b * d * vocab / secs / 1e9:7.1f} GFLOP/s, {secs * 1e3:.1f} ms")
    bw = bandwidth_gbs()
    print(f"memory bandwidth (streaming sum of 1 GiB): {bw:.1f} GB/s; peak matmul used for the bounds: {flops:.1f} GFLOP/s")
    print(f"decode floor at B=1: {weight_bytes / 1e9:.2f} GB of weights per step -> {bw * 1e9 / weight_bytes:.1f} steps/s at most\n")

    instructions = [i.instruction for i in read_instructions(args.instructions)]
    short = [encode_prompt(tok, "tulu", ins) for ins in instructions]
    long_text = " ".join(instructions)
    long = []
    for i in range(len(instructions)):
        words = long_text.split()[i * 7 :]
        ids = encode_prompt(tok, "tulu", " ".join(words))
        long.append(ids[: args.long_tokens - 6] + ids[-6:])  # keep the assistant tag at the end
    print("| prompts | B | P | prefill s | prefill bound s | ratio | decode tok/s | decode bound tok/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, pool, sizes in (("short", short, args.batch_sizes), ("long", long, args.long_batch_sizes)):
        for b in sizes:
            prompts = [pool[i % len(pool)] for i in range(b)]
            p = max(len(x) for x in prompts)

            def gen(n: int, prompts=prompts, b=b) -> float:
                t = time.perf_counter()
                generate_ids(model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=(), max_new_tokens=n, batch_size=b)
                return time.perf_counter() - t

            gen(1)  # warm-up (allocator, this shape's kernels)
            t1 = gen(1)
            tn = gen(args.new_tokens)
            step = (tn - t1) / (args.new_tokens - 1)
            prefill_bound = max(weight_bytes / (bw * 1e9), 2 * (blocks * b * p + head.numel() * b) / (flops * 1e9))
            step_bound = max(weight_bytes / (bw * 1e9), 2 * n_active * b / (flops * 1e9))
            decode, decode_bound = b / step, b / step_bound
            print(
                f"| {label} | {b} | {p} | {t1:.2f} | {prefill_bound:.2f} | {prefill_bound / t1:.2f} | "
                f"{decode:.1f} | {decode_bound:.1f} | {decode / decode_bound:.2f} |",
                flush=True,
            )


def profile_decode(loaded, instructions: list[str], batch: int) -> None:
    """Self CPU seconds per operator of 8 decode steps: a 9-token run's profile minus a 1-token run's (the prefill)."""
    from torch.profiler import ProfilerActivity, profile

    tok = loaded.tokenizer
    prompts = [encode_prompt(tok, "tulu", instructions[i % len(instructions)]) for i in range(batch)]
    per_op = {}
    for n in (1, 9):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            generate_ids(loaded.model, prompts, pad_token_id=tok.pad_token_id, stop_token_ids=(), max_new_tokens=n, batch_size=batch)
            print(f"batch {batch}, {n} new tokens: {time.perf_counter() - t:.2f} s", flush=True)
        per_op[n] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    decode = {k: v - per_op[1].get(k, 0.0) for k, v in per_op[9].items()}
    total = sum(decode.values())
    print(f"8 decode steps: {total:.2f} s of self CPU time; by operator:")
    for k, v in sorted(decode.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {k:28s} {v:7.2f} s  {v / total:6.1%}")


if __name__ == "__main__":
    main()
