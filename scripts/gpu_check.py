"""GPU readiness without weights: the study's CUDA paths at real shapes, timed and checked (see app/gpu_check/).

    python scripts/gpu_check.py            # on a GPU machine: Gemma-3-270M and a Llama-2-7B shape (<= 10 min on one H100/H200)
    python scripts/gpu_check.py --tiny     # 2-layer shapes: seconds, on CPU too (CI runs this)
    python scripts/gpu_check.py --help     # shapes, steps, sequence length, JSON output

Same as ``iit doctor --gpu``. Exits 1 if any check fails.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on a lent GPU machine: never wait for a hub

from implicit_it.app.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
