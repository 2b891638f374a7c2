"""Logit-lens KL per layer: implicit-it against the code a TransformerLens or nnsight user would write.

The quantity: mean KL(variant ‖ base) over the response positions of the same texts, at every layer
(logit lens: final norm + unembedding on each model's own residual stream; the last layer is the
output). Three implementations, interleaved in one process (a contended machine slows all alike):

* **implicit-it**: ``LogitDelta`` on a ``DeltaPass`` (one traced forward per batch, the lens in
  memory-budgeted chunks into reused buffers, normaliser and KL summed exactly);
* **TransformerLens**: per text, ``run_with_cache``, ``cache.accumulated_resid(apply_ln=True)``,
  ``bridge.unembed`` at the response positions, ``log_softmax``, KL;
* **nnsight**: per text, ``trace`` saving each block's output, final norm + ``lm_head``, KL.

The peers' timed KL is what their users would write in float32 (``log_softmax``, then
``(p * (lp_v - lp_b)).sum(-1)``); their numbers are also recomputed exactly (the same float32
logits, every reduction in float64, untimed): implicit-it must equal those within 1e-6 nats, and
the float32 peers' own error is printed beside it. Printed: agreement, time per implementation,
the speed ratio against the faster peer (target ≥ 1.1), and the lens alone against the time its
two unembedding matmuls per position and layer take at this machine's measured fp32 rate (target
≤ 1.3×), with the peak memory of the process.

    python benchmarks/lens_peers.py [--base gemma-3-270m] [--variant runs/study/demo/train/response.s0]
                                    [--texts 4] [--max-length 128] [--repeats 2]

Without ``--variant`` (or when it does not exist) the variant is the base with every block's MLP
down-projection scaled by 1.01 and the final norm shifted, built in memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

DEFAULT_VARIANT = "runs/study/demo/train/response.s0"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lima" / "val_reference_gpt35.json"


def load_pair(base_spec: str, variant_spec: str | None):
    from implicit_it.analyses import load_variant
    from implicit_it.models import LoadedModel, ModelSource, load_model

    base = load_model(base_spec, device="cpu")
    if variant_spec and Path(variant_spec).exists():
        return base, load_variant(variant_spec, base_spec, device="cpu"), variant_spec
    made = load_model(base_spec, device="cpu", use_process_cache=False)
    with torch.no_grad():
        for block in made.model.get_decoder().layers:
            block.mlp.down_proj.weight.mul_(1.01)
        made.model.get_decoder().norm.weight.add_(0.05)
    label = f"{base_spec} with MLP down-projections ×1.01 and the final norm +0.05"
    return base, LoadedModel(made.model, made.tokenizer, ModelSource(label, "local", "memory"), 0.0, "hf"), label


def encoded_texts(tokenizer, texts, max_length: int):
    """(input ids (1, T), response-predicting columns) per text, as the delta pass encodes them."""
    from implicit_it.analyses.delta_pass import encode_texts
    from implicit_it.formats import get_format

    out = []
    for e in encode_texts(tokenizer, get_format("tulu"), texts, range(len(texts)), max_length):
        out.append((torch.tensor([e.ids]), torch.arange(e.n_prompt - 1, len(e.ids) - 1)))
    return out


def kl_float32(logits_base: torch.Tensor, logits_variant: torch.Tensor) -> torch.Tensor:
    """What a peer's user writes: float32 log-softmax, then Σ p_v (lp_v − lp_b)."""
    lp_b, lp_v = torch.log_softmax(logits_base, -1), torch.log_softmax(logits_variant, -1)
    return (lp_v.exp() * (lp_v - lp_b)).sum(-1)


def kl_float64(logits_base: torch.Tensor, logits_variant: torch.Tensor) -> torch.Tensor:
    """The same float32 logits, every reduction in float64 (the exact reference)."""
    lp_b, lp_v = torch.log_softmax(logits_base.double(), -1), torch.log_softmax(logits_variant.double(), -1)
    return (lp_v.exp() * (lp_v - lp_b)).sum(-1)


class Peer:
    """Per-layer KL sums from float32 logits (timed) and, on request, the exact ones (untimed)."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers

    def logits(self, ids: torch.Tensor, cols: torch.Tensor) -> list[list[torch.Tensor]]:
        """[model][layer] -> (positions, V) float32 logits through the lens."""
        raise NotImplementedError

    def run(self, encoded, *, exact: bool = False) -> list[float]:
        sums, n = [0.0] * (self.n_layers + 1), 0
        for ids, cols in encoded:
            with torch.no_grad():
                base, variant = self.logits(ids, cols)
                for layer in range(self.n_layers + 1):
                    kl = (kl_float64 if exact else kl_float32)(base[layer], variant[layer])
                    sums[layer] += float(kl.double().sum())
            n += len(cols)
        return [s / n for s in sums]


class TransformerLensPeer(Peer):
    def __init__(self, base, variant, n_layers: int):
        from implicit_it.hooking import transformer_bridge

        super().__init__(n_layers)
        self.bridges = [transformer_bridge(base), transformer_bridge(variant)]

    def logits(self, ids, cols):
        out = []
        for bridge in self.bridges:
            _, cache = bridge.run_with_cache(ids)
            resid = cache.accumulated_resid(apply_ln=True)  # (layers + 1, 1, T, d), final norm applied
            out.append([bridge.unembed(resid[layer, 0, cols]).float() for layer in range(self.n_layers + 1)])
        return out


class NnsightPeer(Peer):
    def __init__(self, base, variant, n_layers: int):
        from implicit_it.hooking import nnsight_model

        super().__init__(n_layers)
        self.models = [(nnsight_model(m), m.model) for m in (base, variant)]

    def logits(self, ids, cols):
        out = []
        for lm, hf in self.models:
            saved = []  # filled inside the trace (nnsight runs the block's body in its own frame)
            with lm.trace(ids):
                saved.append(lm.model.embed_tokens.output.save())
                for block in lm.model.layers:
                    saved.append(block.output.save())
            decoder = hf.get_decoder()
            hidden = [(h[0] if isinstance(h, tuple) else h)[0, cols] for h in saved]
            out.append([hf.lm_head(decoder.norm(h)).float() for h in hidden])
        return out


def ours(base, variant, texts, max_length: int) -> list[float]:
    from implicit_it.analyses import DeltaPassConfig, LogitDelta

    entry = LogitDelta().run(base, variant, texts, config=DeltaPassConfig(max_length=max_length, layers="all")).entries[0]
    return [layer["kl"] for layer in entry["layers"]]


def unembedding_rate(model, rows: int) -> float:
    """This machine's fp32 FLOP/s for the lens's unembedding at ``rows`` positions: the best of 5
    runs of both ways to write it (``h @ W.T`` and ``W @ h.T``), so the floor is the faster one."""
    weight = model.get_output_embeddings().weight
    hidden = torch.randn(rows, weight.shape[1])
    best = float("inf")
    for matmul in (lambda: torch.mm(hidden, weight.T), lambda: torch.mm(weight, hidden.T)):
        matmul()
        for _ in range(5):
            t0 = time.perf_counter()
            matmul()
            best = min(best, time.perf_counter() - t0)
    return 2 * rows * weight.shape[0] * weight.shape[1] / best


def lens_alone(base, variant, encoded, n_layers: int) -> float:
    """Seconds the delta pass's lens takes (both models, every layer, exact log-softmax into its
    buffers, in its chunk size) on the texts' real residuals, read beforehand (untimed)."""
    from implicit_it.analyses import DeltaPass, DiffText
    from implicit_it.hooking import nnsight_model, traced_residuals
    from implicit_it.lens import LogitLens
    from implicit_it.rules import RuleAdapter

    layers = list(range(n_layers + 1))
    hidden = []
    for model in (base, variant):
        lm = nnsight_model(model)
        with torch.no_grad():
            per_text = [traced_residuals(lm, {"input_ids": ids}, layers) for ids, _ in encoded]
        hidden.append([torch.cat([res[layer][0, cols] for res, (_, cols) in zip(per_text, encoded, strict=True)]) for layer in layers])
    dp = DeltaPass(base, variant, [DiffText("x", "y", "data", 0)], RuleAdapter(base.tokenizer))
    n_positions = len(hidden[0][0])
    rows = min(n_positions, dp.chunk_rows)
    lp_base, lp_var, p_var, work = (torch.empty(rows, dp.vocab_size) for _ in range(4))
    lenses = [LogitLens(base.model), LogitLens(variant.model)]
    t0 = time.perf_counter()
    for layer in layers:
        for p0 in range(0, n_positions, rows):
            n = min(rows, n_positions - p0)
            lenses[0].logprobs(hidden[0][layer][p0 : p0 + n], vocab_size=dp.vocab_size, out=lp_base[:n], work=work[:n])
            lenses[1].logprobs(hidden[1][layer][p0 : p0 + n], vocab_size=dp.vocab_size, out=lp_var[:n], probs=p_var[:n])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="gemma-3-270m")
    parser.add_argument("--variant", default=DEFAULT_VARIANT)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from implicit_it.analyses import texts_from_source
    from implicit_it.data import read_ranking_source

    torch.manual_seed(0)
    base, variant, label = load_pair(args.base, args.variant)
    texts = texts_from_source(read_ranking_source(args.data, limit=args.texts))
    encoded = encoded_texts(base.tokenizer, texts, args.max_length)
    n_layers = len(base.model.get_decoder().layers)
    n_positions = sum(len(cols) for _, cols in encoded)
    vocab, d = base.model.get_output_embeddings().weight.shape
    print(f"base {args.base}; variant {label}")
    print(
        f"{len(encoded)} texts, {n_positions} response positions, {n_layers + 1} layers, vocabulary {vocab:,}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    peers = {"TransformerLens": TransformerLensPeer(base, variant, n_layers), "nnsight": NnsightPeer(base, variant, n_layers)}
    runs = {
        "implicit-it": lambda: ours(base, variant, texts, args.max_length),
        "TransformerLens": lambda: peers["TransformerLens"].run(encoded),
        "nnsight": lambda: peers["nnsight"].run(encoded),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    values: dict[str, list[float]] = {}
    peak_mib = {"models loaded": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - t0)
            peak_mib.setdefault(f"after {name}'s first run", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    exact = {name: peer.run(encoded, exact=True) for name, peer in peers.items()}

    print("\nagreement, max over layers of |ΔKL| (nats):")
    for name in peers:
        print(
            f"  implicit-it vs {name} (exact reductions): "
            f"{max(abs(a - b) for a, b in zip(values['implicit-it'], exact[name], strict=True)):.2e}"
            f"   {name}'s float32 code vs exact: {max(abs(a - b) for a, b in zip(values[name], exact[name], strict=True)):.2e}"
        )
    print(f"  output-layer KL: implicit-it {values['implicit-it'][-1]:.6f}, exact {exact['nnsight'][-1]:.6f}")

    med = {name: statistics.median(t) for name, t in times.items()}
    fastest_peer = min(peers, key=lambda name: med[name])
    print("\ntime (median of", args.repeats, "interleaved runs):")
    for name, t in med.items():
        print(f"  {name:16s} {t:7.1f} s   runs: {', '.join(f'{x:.1f}' for x in times[name])}")
    ratio = med[fastest_peer] / med["implicit-it"]
    print(f"  speed ratio vs the faster peer ({fastest_peer}): {ratio:.2f}x (target >= 1.1)")

    rows = min(n_positions, 256)
    rate = unembedding_rate(base.model, rows)
    floor = 2 * (n_layers + 1) * n_positions * 2 * vocab * d / rate
    lens = lens_alone(base, variant, encoded, n_layers)
    print(
        f"\nlens alone: {lens:.1f} s; its unembedding matmuls at the measured {rate / 1e9:.0f} GFLOP/s "
        f"(fp32, {rows} x {d} x {vocab:,}): {floor:.1f} s; ratio {lens / floor:.2f}x (target <= 1.3)"
    )
    peak_mib["whole run (the exact float64 references included)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("peak RSS of this process: " + "; ".join(f"{k} {v:,.0f} MiB" for k, v in peak_mib.items()))


if __name__ == "__main__":
    main()
