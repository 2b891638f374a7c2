"""Weight deltas streamed from two checkpoints: time against reading both once, and peak memory.

Baseline (measured in the same run): read every tensor of both checkpoints once, tensor by tensor
(``safetensors`` ``get_tensor``, then a sum so that the bytes are really touched).
Measured: ``implicit_it.analyses.WeightDelta`` on the same pair, with the singular-value spectrum
of every ΔW and without it. Each phase runs in a fresh child process so its peak RSS is its own.
Target: time ratio <= 1.5x, and memory far below the two checkpoints' size (for 7B: < 4 GB). Peak
RSS includes the checkpoints' memory-mapped pages; "peak heap" (RssAnon, sampled every 5 ms) is
what the process itself allocates.

    python benchmarks/weight_diff.py [--base gemma-3-270m] [--variant runs/demo/response]

Without ``--variant`` (or when it does not exist) a variant is made once in a temp directory:
the base with every block's MLP down-projection scaled by 1.01 and the final norm shifted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def _read_both(base: str, variant: str) -> float:
    from implicit_it.analyses.weights import SafetensorsCheckpoint

    total = 0.0
    for directory in (base, variant):
        ckpt = SafetensorsCheckpoint(directory)
        for name in ckpt.names():
            total += float(ckpt.get(name).sum())
    return total


def _weight_delta(base: str, variant: str, spectrum: bool) -> int:
    from implicit_it.analyses import WeightDelta

    return WeightDelta(spectrum=spectrum).run(base, variant).entries[0]["n_tensors_changed"]


def _rss_anon_mib() -> float:
    """Anonymous resident memory (heap), excluding the checkpoints' memory-mapped pages, which
    count in RSS but are file-backed and dropped by the kernel under pressure."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(conn, what: str, base: str, variant: str) -> None:
    import threading

    peak_anon = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _rss_anon_mib())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if what == "read":
        out = _read_both(base, variant)
    else:
        out = _weight_delta(base, variant, spectrum=what == "delta+spectrum")
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    conn.send(
        {
            "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mib": peak_anon[0],
            "out": out,
        }
    )


def measure(what: str, base: str, variant: str) -> dict:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_child, args=(child, what, base, variant))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def make_variant(base_dir: Path, out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(base_dir / "model.safetensors"))
    for name in tensors:
        if name.endswith("mlp.down_proj.weight"):
            tensors[name] = tensors[name] * 1.01
        elif name == "model.norm.weight":
            tensors[name] = tensors[name] + 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--variant", default="runs/demo/response")
    ap.add_argument("--repeats", type=int, default=2, help="Each phase runs this many times; the fastest counts (warm page cache).")
    args = ap.parse_args()

    from implicit_it.analyses import checkpoint_dir

    base = checkpoint_dir(args.base)
    tmp = None
    if Path(args.variant).is_dir():
        variant = checkpoint_dir(args.variant)
    else:
        tmp = tempfile.TemporaryDirectory()
        variant = make_variant(base, Path(tmp.name) / "variant")
    size_gib = sum(f.stat().st_size for d in (base, variant) for f in Path(d).glob("*.safetensors")) / 2**30
    print(f"base {base}\nvariant {variant}\nboth checkpoints: {size_gib:.2f} GiB of safetensors")
    rows = {}
    for what in ("read", "delta", "delta+spectrum"):
        runs = [measure(what, str(base), str(variant)) for _ in range(args.repeats)]
        rows[what] = min(runs, key=lambda r: r["seconds"])
    baseline = rows["read"]["seconds"]
    print(f"{'phase':<16}{'seconds':>10}{'ratio':>8}{'peak RSS MiB':>15}{'peak heap MiB':>15}")
    for what, r in rows.items():
        print(f"{what:<16}{r['seconds']:>10.2f}{r['seconds'] / baseline:>7.2f}x{r['peak_rss_mib']:>15.0f}{r['peak_anon_mib']:>15.0f}")
    print(f"tensors changed: {rows['delta']['out']}; target: ratio <= 1.5x")
    print(json.dumps({k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in rows.items()}))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
