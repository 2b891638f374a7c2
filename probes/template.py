"""The template-only generation probe (Magpie, Xu et al. 2024): what does a model write as the *user*?

Given only the chat format's user-turn prefix (Tulu: ``<|user|>\\n``), an aligned model writes a plausible instruction
and closes the turn with the assistant tag. Asked of every system, it tests whether response tuning, which never saw an
instruction, still learned what instructions look like. Per model:

* the share of **instruction-like** samples (:func:`instruction_check`), with a bootstrap 95% CI;
* **diversity**: distinct-2 over all samples, and the mean pairwise cosine distance of their embeddings;
* **similarity** to reference instruction sets (LIMA, AlpacaEval): each sample's max cosine similarity to the set's
  embeddings, averaged over samples, with a bootstrap 95% CI.

Sampling is seeded (``torch.manual_seed`` inside a forked RNG, so the caller's RNG is untouched): the same seed, batch
size and device give the same samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.errors import UserError
from implicit_it.formats import ChatFormat, get_format
from implicit_it.stats import accuracy_with_ci, mean_with_ci

from .config import TemplateConfig

_SLOT = "TEMPLATEPROBESLOT9C1E"
MIN_WORDS, MAX_WORDS = 3, 300
# A sample that contains any of these repeats the template (or another chat template) instead of writing an instruction.
CHAT_MARKUP = ("<|", "|>", "<start_of_turn>", "<end_of_turn>", "[INST]", "### Instruction")
IMPERATIVES = frozenset(
    "act add analyse analyze answer apply arrange assess brainstorm briefly build calculate categorize change check choose clarify "
    "classify combine compare compose compute continue convert correct count create critically critique define derive describe "
    "design determine develop discuss do draft elaborate estimate edit evaluate expand explain extract fill find finish fix format "
    "generate give guess help identify illustrate imagine implement improve include introduce let list make name offer outline "
    "paraphrase plan play predict prepare pretend proofread propose prove provide rank rate read recommend rephrase replace reply "
    "respond review rewrite say search select share shorten show simplify solve sort suggest summarise summarize take teach tell "
    "think translate try turn use write".split()
)
# Openings of a request or a question without a question mark ("how do I ...", "can a ...", "I need ...").
REQUEST_STARTS = (
    "please", "can", "could", "would", "will", "should", "is", "are", "do", "does", "did", "i need", "i want", "i'd like",
    "i would like", "i'm looking for", "i am looking for", "i'm trying", "i am trying", "i'm curious", "i wonder",
    "i was wondering", "how", "what", "why", "who", "which", "when", "where",
)  # fmt: skip


def user_prefix(fmt: str | ChatFormat, tokenizer: Any = None) -> str:
    """The text before the instruction in ``fmt``'s prompt (Tulu: ``<|user|>\\n``); an error for a format without a user tag."""
    fmt = get_format(fmt)
    text = "" if fmt.raw else replace(fmt, drop_instruction=False).prompt_text(_SLOT, tokenizer)
    prefix = text[: text.index(_SLOT)] if _SLOT in text else ""
    if not prefix.strip():
        raise UserError(f"format {fmt.name!r} has no user tag: the template probe needs a user-turn prefix (use tulu, ab_tags or native)")
    return prefix


def turn_end(fmt: str | ChatFormat, tokenizer: Any = None) -> str:
    """The first marker after the instruction in ``fmt``'s prompt (Tulu: ``<|assistant|>``; ChatML: ``<|im_end|>``)."""
    fmt = get_format(fmt)
    text = replace(fmt, drop_instruction=False).prompt_text(_SLOT, tokenizer)
    after = text[text.index(_SLOT) + len(_SLOT) :]
    return next((line.strip() for line in after.splitlines() if line.strip()), fmt.assistant_tag)


@dataclass(frozen=True)
class Sample:
    text: str  # what the model wrote as the user, cut before the end of its turn
    end: str  # "turn" (wrote the assistant tag / end-of-turn), "eos", or "length" (ran out of tokens)


def cut_sample(text: str, end_markers: Sequence[str], stopped_on_eos: bool) -> Sample:
    """Cut a decoded continuation at the first end-of-turn marker; otherwise it ended on EOS or on the token budget."""
    hits = [i for i in (text.find(m) for m in end_markers if m) if i >= 0]
    if hits:
        return Sample(text[: min(hits)].strip(), "turn")
    return Sample(text.strip(), "eos" if stopped_on_eos else "length")


def instruction_check(sample: Sample) -> list[str]:
    """Why ``sample`` is not instruction-like (empty list: it is). Instruction-like means all of:

    * ``closed``: the model ended the user turn itself (wrote the assistant tag / end-of-turn), not EOS or the budget;
    * ``length``: MIN_WORDS to MAX_WORDS whitespace-separated words;
    * ``markup``: no chat markup (a repeated template, another turn);
    * ``request``: it asks or tells: it contains ``?``, or a sentence, clause or line starts with an imperative verb
      (IMPERATIVES) or a request/question opening (REQUEST_STARTS, e.g. "can", "how", "I need").

    On the references as written (cut as closed turns) this accepts 92.7% of LIMA's (train) and 91.4% of AlpacaEval's instructions;
    what it refuses is mostly titles and statements ("Understanding the Rails Authenticity Token").
    """
    failed = []
    text = sample.text
    if sample.end != "turn":
        failed.append("closed")
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
        failed.append("length")
    if any(m in text for m in CHAT_MARKUP):
        failed.append("markup")
    if not _is_request(text):
        failed.append("request")
    return failed


def _is_request(text: str) -> bool:
    if "?" in text:
        return True
    for sentence in re.split(r"(?<=[.!:;,])\s+|\n+", text):
        opening = re.sub(r"^[^\w']+", "", sentence).lower()
        first = re.split(r"[^\w']+", opening, maxsplit=1)[0]
        if first in IMPERATIVES or any(re.match(rf"{re.escape(s)}\b", opening) for s in REQUEST_STARTS):
            return True
    return False


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams / all n-grams over every text (lower-cased words); None when no text has n words."""
    grams = [tuple(w[i : i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def sample_user_turns(
    loaded: Any, cfg: TemplateConfig, *, fmt: str | ChatFormat = "tulu", seed: int = 0, progress: Callable[[int], None] | None = None
) -> list[Sample]:
    """``cfg.n`` seeded samples from the user-turn prefix alone, each cut at the end of the user turn."""
    import torch
    from transformers import GenerationConfig

    tok, model = loaded.tokenizer, loaded.model
    chat = get_format(fmt)
    prompt = list(tok(user_prefix(chat, tok), add_special_tokens=True)["input_ids"])
    markers = [m for m in dict.fromkeys([turn_end(chat, tok), chat.assistant_tag]) if m]
    eos = set(chat.stop_token_ids(tok))
    config = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,  # 0: off (an explicit 0, not the library default of 50)
        eos_token_id=sorted(eos),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        stop_strings=markers or None,
    )
    device = next(model.parameters()).device
    samples: list[Sample] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, cfg.n, cfg.batch_size):
            k = min(cfg.batch_size, cfg.n - start)
            ids = torch.tensor([prompt] * k, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, tokenizer=tok)
            for row in gen[:, len(prompt) :].tolist():
                stop = next((i for i, t in enumerate(row) if t in eos), None)
                body = row if stop is None else row[:stop]
                while stop is None and body and body[-1] == config.pad_token_id:  # a row done early is padded to the batch
                    body = body[:-1]
                text = tok.decode(body, skip_special_tokens=False)
                closing = tok.decode(row[stop : stop + 1], skip_special_tokens=False) if stop is not None else ""
                if any(m in closing for m in markers):  # a stop token that ends the turn (native's <|im_end|>), not plain EOS
                    text += closing
                samples.append(cut_sample(text, markers, stop is not None))
            if progress is not None:
                progress(k)
    return samples


Embed = Callable[[Sequence[str]], Any]  # texts -> unit-norm rows (numpy)


def score_samples(
    samples: Sequence[Sample],
    *,
    embed: Embed | None = None,
    references: dict[str, Sequence[str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The per-model numbers of the module docstring, and every sample with its check and similarities."""
    import numpy as np

    failed = [instruction_check(s) for s in samples]
    like = np.array([not f for f in failed], dtype=bool)
    fraction, ci = accuracy_with_ci(like, n_boot=n_boot, seed=seed)
    rows = [{"text": s.text, "end": s.end, "instruction_like": not f, "failed": f} for s, f in zip(samples, failed, strict=True)]
    entry: dict[str, Any] = {
        "n": len(samples),
        "instruction_like": {"fraction": fraction, "ci95": list(ci)},
        "ends": {e: sum(s.end == e for s in samples) / len(samples) for e in ("turn", "eos", "length")},
        "failed": {c: sum(c in f for f in failed) / len(samples) for c in ("closed", "length", "markup", "request")},
        "distinct_2": distinct_n([s.text for s in samples], 2),
        "mean_pairwise_distance": None,
        "similarity": {},
        "samples": rows,
    }
    kept = [i for i, s in enumerate(samples) if s.text]
    if embed is None or not kept:
        return entry
    emb = embed([samples[i].text for i in kept])
    if len(kept) >= 2:
        sims = emb @ emb.T
        entry["mean_pairwise_distance"] = float(1 - (sims.sum() - np.trace(sims)) / (len(kept) * (len(kept) - 1)))
    for name, texts in (references or {}).items():
        ref = embed(list(texts))
        sim = emb @ ref.T
        best = sim.max(axis=1)
        mean, sci = mean_with_ci(best, n_boot=n_boot, seed=seed)
        entry["similarity"][name] = {"mean": mean, "ci95": list(sci), "n": len(kept), "n_reference": len(texts)}
        for j, i in enumerate(kept):
            rows[i].setdefault("max_similarity", {})[name] = float(best[j])
            rows[i].setdefault("nearest", {})[name] = texts[int(sim[j].argmax())][:200]
    return entry


@register_result
class TemplateResult(AnalysisResult):
    """Template-only generation (Magpie): what each system writes as the user, given only the user-turn prefix
    Instruction-like: the model closed the user turn itself (the assistant tag), 3-300 words, no chat markup, and a question
    or a request (an imperative or request opening). Diversity: distinct-2 and the mean pairwise cosine distance of MiniLM
    embeddings. Similarity: each sample's max cosine similarity to LIMA's and AlpacaEval's instructions, averaged; 95%
    bootstrap CIs (_lo, _hi). One entry per model, with every sample."""

    name: ClassVar[str] = "template"

    def summary(self) -> dict[str, Any]:
        """The single model's numbers without the samples (what a step's summary and the CLI show)."""
        return {k: v for k, v in super().summary().items() if k != "samples"}

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for e in self.entries:
            row = {
                "model": e["model"],
                "format": e["format"],
                "n": e["n"],
                "instruction_like": e["instruction_like"]["fraction"],
                "instruction_like_lo": e["instruction_like"]["ci95"][0],
                "instruction_like_hi": e["instruction_like"]["ci95"][1],
                "ends_turn": e["ends"]["turn"],
                "distinct_2": e["distinct_2"],
                "mean_pairwise_distance": e["mean_pairwise_distance"],
            }
            for name, s in e["similarity"].items():
                row |= {f"similarity_{name}": s["mean"], f"similarity_{name}_lo": s["ci95"][0], f"similarity_{name}_hi": s["ci95"][1]}
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """Per model: the instruction-like share and each reference similarity, with their 95% CIs."""
        import numpy as np

        metrics = [("instruction-like", lambda e: e["instruction_like"])]
        for name in dict.fromkeys(n for e in self.entries for n in e["similarity"]):
            metrics.append((f"sim. {name}", lambda e, n=name: e["similarity"].get(n)))
        fig, ax = new_figure(figsize=(1.6 + 1.4 * len(metrics) * max(1, len(self.entries)) / 2, 3))
        width = 0.8 / max(1, len(self.entries))
        for k, e in enumerate(self.entries):
            vals = [get(e) for _, get in metrics]
            y = np.array([np.nan if v is None else v.get("fraction", v.get("mean")) for v in vals])
            lo = np.array([np.nan if v is None else v["ci95"][0] for v in vals])
            hi = np.array([np.nan if v is None else v["ci95"][1] for v in vals])
            x = np.arange(len(metrics)) + (k - (len(self.entries) - 1) / 2) * width
            ax.bar(x, y, width, yerr=[y - lo, hi - y], capsize=2, label=e["model"])
        ax.set_xticks(np.arange(len(metrics)), [m for m, _ in metrics], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("template-only samples", fontsize=9)
        ax.legend(fontsize=7)
        return fig
