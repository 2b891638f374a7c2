"""Load time of the embedded Gemma-3-270M: cold (GGUF dequantization) vs the on-disk cache.

Baseline and candidate are measured in the same run: the cold load uses a fresh, empty cache
directory; the cached load reads the safetensors copy that the cold load wrote.

    python benchmarks/model_load.py [--spec gemma-3-270m]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="gemma-3-270m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["IIT_CACHE_DIR"] = cache
        from implicit_it.models import clear_model_cache, load_model

        t = time.perf_counter()
        cold = load_model(args.spec, device="cpu", use_process_cache=False)
        cold_s = time.perf_counter() - t
        assert cold.loaded_from == "gguf-dequantize", cold.loaded_from
        del cold
        clear_model_cache()
        t = time.perf_counter()
        warm = load_model(args.spec, device="cpu", use_process_cache=False)
        warm_s = time.perf_counter() - t
        assert warm.loaded_from == "gguf-cache"
        first = load_model(args.spec, device="cpu")  # fills the process cache
        t = time.perf_counter()
        assert load_model(args.spec, device="cpu") is first
        proc_s = time.perf_counter() - t
    print(f"model: {warm.source.display_name}")
    print(f"cold load (dequantize GGUF + write cache): {cold_s:7.2f} s")
    print(f"cached load (safetensors copy):            {warm_s:7.2f} s   speed-up {cold_s / warm_s:5.1f}x")
    print(f"process-cache hit (same process):         {proc_s * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
