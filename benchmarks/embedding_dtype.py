"""The reference-similarity metric's embedder (MiniLM) in bf16 autocast against fp32, on real outputs.

Baseline and candidate in the same run, on the same texts: llama-2-7b-chat's AlpacaEval outputs and GPT-4-turbo's
reference answers (the first N instructions). Reports the seconds each dtype takes, the smallest cosine between an
output's bf16 and fp32 embeddings, how far the metric's score (cosine to the reference) moves with the dtype, and how
far it moves under bf16 between two batch sizes (batch composition changes the bf16 arithmetic, not fp32's).

    python benchmarks/embedding_dtype.py [--data ../shared/data/alpaca_eval] [--n 512]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/alpaca_eval"))
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    from implicit_it.embedding import Embedder

    outputs = [r["output"] for r in json.loads((args.data / "outputs_llama-2-7b-chat-hf.json").read_text())[: args.n]]
    references = [r["output"] for r in json.loads((args.data / "eval_set.json").read_text())[: args.n]]
    emb, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        embedder = Embedder(dtype=dtype, batch_size=32)
        embedder(outputs[:8])  # warm-up
        t = time.perf_counter()
        emb[dtype] = (embedder(outputs), embedder(references))
        seconds[dtype] = time.perf_counter() - t
    rebatched = Embedder(dtype="bfloat16", batch_size=7)
    other = (rebatched(outputs), rebatched(references))

    def scores(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return np.einsum("ij,ij->i", *pair)

    fp32, bf16 = emb["float32"], emb["bfloat16"]
    cos = np.einsum("ij,ij->i", fp32[0], bf16[0])
    print(f"{len(outputs)} outputs + {len(references)} references, MiniLM, batch 32, 2-core CPU")
    ratio = seconds["float32"] / seconds["bfloat16"]
    print(f"fp32: {seconds['float32']:.1f} s   bf16 autocast: {seconds['bfloat16']:.1f} s   ratio {ratio:.2f}x")
    print(f"smallest cosine of an output's bf16 embedding to its fp32 one: {cos.min():.6f} (1 - {1 - cos.min():.1e})")
    print(f"score (cosine to the reference) moved by the dtype: max |bf16 - fp32| = {np.abs(scores(bf16) - scores(fp32)).max():.1e}")
    print(f"score moved under bf16 by the batch size (32 vs 7): max = {np.abs(scores(bf16) - scores(other)).max():.1e}")


if __name__ == "__main__":
    main()
