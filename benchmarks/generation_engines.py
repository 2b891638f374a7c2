"""Generation engines side by side (Gemma-3-270M, greedy): hf fp32 (the analyses' model), hf bf16, vLLM bf16 and fp32.

The same IFEval prompts and lengths for every engine, in one run, on this machine:

* per engine and batch size B: the prefill time (one new token) and the decode rate, (T − 1) further tokens per
  prompt with stop tokens off (``--new-tokens`` T), as new tokens/s over the B prompts; the vLLM engine is handed
  the same B prompts at once, so it decodes the same batch the hf backend forms;
* the decode roofline of each dtype: one step reads every weight once (bytes in that dtype, at the measured streaming
  bandwidth) and does 2·N·B flops (at the measured matmul rate of that dtype), whichever is slower;
* the ratios the issue's targets are stated in: each engine's tokens/s over hf fp32's (today's path) and over its own
  dtype's roofline;
* the engine's start-up (and everything above) with ``enforce_eager`` (no compilation), or with torch.compile under
  ``--compile``.

    python benchmarks/generation_engines.py [--batch-sizes 1 16 64] [--new-tokens 65] [--compile] [--cpu-reserved-cores 0]
        [--engines hf-fp32 hf-bf16 vllm-bf16 vllm-fp32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from generation_roofline import bandwidth_gbs, matmul_gflops  # the same machine rates as the roofline benchmark

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval" / "input_data.jsonl"
ENGINES = ("hf-fp32", "hf-bf16", "vllm-bf16", "vllm-fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    ap.add_argument("--prompts", default=str(DATA), help="IFEval input_data.jsonl")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=65, help="tokens per prompt in the decode timing (the first is the prefill's)")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--compile", action="store_true", help="vLLM engines with torch.compile instead of eager (start-up: minutes)")
    ap.add_argument("--cpu-reserved-cores", type=int, default=0, help="vllm.cpu_reserved_cores (vLLM's own default: 1)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    from implicit_it.config import VllmConfig
    from implicit_it.engines import close_engine, vllm_engine
    from implicit_it.formats import encode_prompt, get_format
    from implicit_it.generation import generate_ids
    from implicit_it.models import load_model, model_directory

    fp32 = load_model(args.spec, device="cpu")
    tok = fp32.tokenizer
    model = fp32.model
    head = model.get_output_embeddings().weight
    blocks = sum(p.numel() for p in model.get_decoder().layers.parameters())
    n_active = blocks + head.numel()
    texts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [encode_prompt(tok, get_format("tulu"), t) for t in texts]
    bw = bandwidth_gbs()
    rates = {dt: matmul_gflops(64, 640, 2048, dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"model: {fp32.source.display_name}; {n_active / 1e6:.0f}M parameters per token")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"bandwidth {bw:.1f} GB/s; matmul (64x640 @ 640x2048) fp32 {rates[torch.float32]:.1f}, bf16 {rates[torch.bfloat16]:.1f} GFLOP/s\n"
    )

    def roofline(dtype: torch.dtype, b: int) -> float:
        size = torch.tensor([], dtype=dtype).element_size()
        step = max(n_active * size / (bw * 1e9), 2 * n_active * b / (rates[dtype] * 1e9))
        return b / step

    rows, base_rate = [], {}
    for engine_name in args.engines:
        backend, dtype_name = engine_name.split("-")
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        if backend == "hf":
            loaded = fp32 if dtype == torch.float32 else load_model(args.spec, device="cpu", dtype=dtype)
        else:
            settings = VllmConfig(
                dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                enforce_eager=not args.compile,
                cpu_reserved_cores=args.cpu_reserved_cores,
            )
            directory = model_directory(args.spec)
        for b in args.batch_sizes:
            batch = [prompts[i % len(prompts)] for i in range(b)]
            if backend == "hf":

                def gen(n: int, batch=batch, b=b, loaded=loaded) -> float:
                    t = time.perf_counter()
                    generate_ids(loaded.model, batch, pad_token_id=tok.pad_token_id, stop_token_ids=(), max_new_tokens=n, batch_size=b)
                    return time.perf_counter() - t

                startup = None
            else:
                engine = vllm_engine(directory, settings, max_num_seqs=max(args.batch_sizes))  # B requests: B in flight
                startup = engine.start_seconds

                def gen(n: int, batch=batch, engine=engine) -> float:
                    t = time.perf_counter()
                    engine.generate_ids(batch, stop_token_ids=(), max_new_tokens=n)
                    return time.perf_counter() - t

            gen(1)  # warm-up
            t1 = gen(1)
            tn = gen(args.new_tokens)
            decode = b * (args.new_tokens - 1) / (tn - t1)
            if engine_name == "hf-fp32":
                base_rate[b] = decode
            bound = roofline(dtype, b)
            row = {
                "engine": engine_name,
                "batch": b,
                "prefill_s": round(t1, 3),
                "decode_tok_s": round(decode, 1),
                "vs_hf_fp32": round(decode / base_rate[b], 2) if b in base_rate else None,
                "roofline_tok_s": round(bound, 1),
                "of_roofline": round(decode / bound, 2),
                "startup_s": round(startup, 1) if startup is not None else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if backend == "vllm":
            close_engine()
        elif dtype != torch.float32:
            del loaded

    print("\n| engine | B | prefill s | decode tok/s | × hf fp32 | roofline tok/s (own dtype) | of roofline | engine start s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['vs_hf_fp32']:.2f}" if r["vs_hf_fp32"] is not None else "–"
        start = f"{r['startup_s']:.1f}" if r["startup_s"] is not None else "–"
        print(
            f"| {r['engine']} | {r['batch']} | {r['prefill_s']:.2f} | {r['decode_tok_s']:.1f} | {vs} | {r['roofline_tok_s']:.1f} "
            f"| {r['of_roofline']:.2f} | {start} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
