"""hf (fp32) against vLLM (fp32 and bf16) on the real model: how often greedy outputs are token-identical, and how far
apart the two engines' scores are where they part and where they agree (the README's equality numbers).

    python benchmarks/engine_equality.py [--prompts 32] [--new-tokens 128] [--dtypes float32 bfloat16]

Each comparison decodes the first N IFEval prompts with and without the paper's rule adapter on both engines, recording
each step's top-8 scores after the rules (:func:`implicit_it.engines.compare_backends`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval" / "input_data.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    args = ap.parse_args()

    from implicit_it.config import VllmConfig
    from implicit_it.engines import close_engine, compare_backends
    from implicit_it.models import load_model, model_directory
    from implicit_it.rules import RuleConfig

    lines = Path(args.data).read_text(encoding="utf-8").splitlines()[: args.prompts]
    prompts = [json.loads(line)["prompt"] for line in lines]
    loaded = load_model(args.spec, device="cpu")
    for dtype in args.dtypes:
        for rules in (None, RuleConfig()):
            cmp = compare_backends(
                loaded,
                prompts,
                VllmConfig(dtype=dtype),
                model_dir=model_directory(args.spec),
                max_new_tokens=args.new_tokens,
                batch_size=16,
                rule_config=rules,
            )
            print(f"vllm {dtype} vs hf float32, {'rules' if rules else 'no rules'}: {cmp.detail}", flush=True)
    close_engine()


if __name__ == "__main__":
    main()
