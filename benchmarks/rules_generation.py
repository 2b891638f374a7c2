"""Rule-adapter generation: the fast path vs the paper's loop, on Gemma-3-270M (CPU).

Baseline (paper-style, measured in the same run): batch size 1, ``use_cache=False`` (the whole
prefix is recomputed for every token, logits for every position, as the paper's
CombinedCausalLM does), rules added to the last position's log-probs.
Fast path: batch 16, left padding, KV cache, ``RuleLogitsProcessor``.
Both decode exactly ``--new-tokens`` tokens per prompt (stopping disabled) so the work is equal;
the baseline runs on fewer prompts (its per-token cost does not depend on how many prompts
there are, only on their lengths) to keep the run short.

    python benchmarks/rules_generation.py [--new-tokens 256] [--prompts 16] [--baseline-prompts 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from implicit_it.data import read_instructions
from implicit_it.formats import encode_prompt, instruction_offset
from implicit_it.generation import generate_ids
from implicit_it.models import load_model
from implicit_it.rules import RuleAdapter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lima" / "val_instructions.jsonl"


@torch.no_grad()
def paper_style(model, adapter: RuleAdapter, prompt: list[int], ins_start: int, new_tokens: int) -> int:
    ids = list(prompt)
    for _ in range(new_tokens):
        x = torch.tensor([ids])
        logits = model(x, use_cache=False).logits[0, -1]
        rule = adapter.scores(x, torch.tensor([len(ids) - 1]), torch.tensor([len(prompt)]), instruction_start=torch.tensor([ins_start]))[
            0, 0
        ]
        ids.append(int((torch.log_softmax(logits, -1) + torch.log_softmax(rule, -1)).argmax()))
    return len(ids) - len(prompt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--baseline-prompts", type=int, default=2)
    args = ap.parse_args()

    loaded = load_model(args.spec, device="cpu")
    tok = loaded.tokenizer
    adapter = RuleAdapter(tok)
    texts = [i.instruction for i in read_instructions(DATA, limit=args.prompts)]
    prompts = [encode_prompt(tok, "tulu", t) for t in texts]
    offsets = [instruction_offset(tok, "tulu", t) for t in texts]
    print(
        f"model: {loaded.source.display_name}; rules {adapter.rules}; {args.new_tokens} new tokens; torch threads {torch.get_num_threads()}"
    )

    t = time.perf_counter()
    n = sum(
        paper_style(loaded.model, adapter, p, o, args.new_tokens) for p, o in zip(prompts[: args.baseline_prompts], offsets, strict=False)
    )
    base_tps = n / (time.perf_counter() - t)
    print(f"paper-style (batch 1, no KV cache), {args.baseline_prompts} prompts: {base_tps:8.2f} tokens/s")

    t = time.perf_counter()
    out, _, _ = generate_ids(
        loaded.model,
        prompts,
        pad_token_id=tok.pad_token_id,
        stop_token_ids=(),
        max_new_tokens=args.new_tokens,
        batch_size=args.batch_size,
        logits_processor_factory=adapter.logits_processor,
        instruction_offsets=offsets,
    )
    fast_tps = sum(map(len, out)) / (time.perf_counter() - t)
    print(f"fast path (batch {args.batch_size}, KV cache), {len(prompts)} prompts: {fast_tps:8.2f} tokens/s")
    print(f"speed-up: {fast_tps / base_tps:.1f}x (target >= 30x)")


if __name__ == "__main__":
    main()
