"""Does finetuning change behaviour? Greedy outputs of the base model vs each trained variant.

For each model: the fraction of held-out instructions whose greedy response ends with EOS within
``--max-new-tokens``, the fraction that echo a chat tag (``<|user|>``/``<|assistant|>``: the base
model continuing the template instead of answering), and the mean response length. The base
model is the baseline measured in the same run.

    python3 benchmarks/demo_behaviour.py --model gemma-3-270m --model runs/demo/response ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TAGS = ("<|user|>", "<|assistant|>")


def behaviour(spec: str, instructions: list[str], fmt: str, max_new_tokens: int, batch_size: int) -> dict:
    from implicit_it import generate_responses, load_model

    loaded = load_model(spec, device="cpu", use_process_cache=False)
    results, stats = generate_responses(
        loaded, instructions, fmt=fmt, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=False
    )
    n = len(results)
    return {
        "model": spec,
        "eos_rate": sum(r.stopped for r in results) / n,
        "tag_echo_rate": sum(any(t in r.output for t in TAGS) for r in results) / n,
        "mean_new_tokens": sum(len(r.token_ids) for r in results) / n,
        "tokens_per_second": round(stats.tokens_per_second, 1),
        "examples": [{"instruction": r.instruction, "output": r.output[:400], "ended_with_eos": r.stopped} for r in results[:3]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="Model SPEC or trained directory (repeat; the first is the baseline).")
    ap.add_argument("--instructions", default="../shared/data/lima/val_instructions.jsonl")
    ap.add_argument("--format", default="tulu")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("runs/demo/behaviour.json"))
    args = ap.parse_args()

    from implicit_it.data import read_instructions
    from implicit_it.manifest import build_manifest, write_manifest

    instructions = [i.instruction for i in read_instructions(args.instructions)]
    rows, t0 = [], time.perf_counter()
    for spec in args.model:
        row = behaviour(spec, instructions, args.format, args.max_new_tokens, args.batch_size)
        rows.append(row)
        print(
            f"{spec}: EOS within {args.max_new_tokens} tokens {row['eos_rate']:.1%}, tag echo {row['tag_echo_rate']:.1%}, "
            f"mean {row['mean_new_tokens']:.0f} new tokens ({row['tokens_per_second']} tok/s)",
            flush=True,
        )
    base = rows[0]
    for row in rows[1:]:
        print(
            f"{row['model']} vs {base['model']}: EOS rate {row['eos_rate']:.1%} vs {base['eos_rate']:.1%}; "
            f"tag echo {row['tag_echo_rate']:.1%} vs {base['tag_echo_rate']:.1%}"
        )
    from implicit_it.io import atomic_write_json

    atomic_write_json(args.out, rows)
    write_manifest(
        args.out,
        build_manifest(
            command=" ".join(["python3"] + sys.argv),
            config=vars(args) | {"out": str(args.out)},
            seed=None,
            data_files=[args.instructions],
            results={"rows": [{k: v for k, v in r.items() if k != "examples"} for r in rows]},
            timings={"total": round(time.perf_counter() - t0, 1)},
        ),
    )


if __name__ == "__main__":
    main()
