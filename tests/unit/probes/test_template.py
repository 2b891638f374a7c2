"""The template-only generation probe: the user-turn prefix, the cut, the instruction-like check, the scores, seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest

from implicit_it.analysis import read_result
from implicit_it.models import load_model
from implicit_it.probes import (
    Sample,
    TemplateResult,
    cut_sample,
    distinct_n,
    instruction_check,
    sample_user_turns,
    score_samples,
    template,
    user_prefix,
)
from implicit_it.probes.config import TemplateConfig
from implicit_it.probes.template import turn_end
from implicit_it.stats import mean_with_ci

NO_EMBED = {"embedder": None, "lima": None, "alpaca_eval": None}


def test_user_prefix_and_turn_end_come_from_the_format():
    assert user_prefix("tulu") == "<|user|>\n" and turn_end("tulu") == "<|assistant|>"
    assert user_prefix("ab_tags") == "<|A|>\n" and turn_end("ab_tags") == "<|B|>"
    assert user_prefix("empty_instruction") == "<|user|>\n"  # response tuning's format keeps the user tag
    with pytest.raises(ValueError, match="no user tag"):
        user_prefix("raw")


def test_native_prefix_comes_from_the_chat_template(tiny):
    assert user_prefix("native", tiny.tokenizer) == "<start>user\n" and turn_end("native", tiny.tokenizer) == "<end>"


@pytest.mark.parametrize(
    "text, markers, eos, want",
    [
        ("Write a poem about cats.\n<|assistant|>\nMeow", ["<|assistant|>"], False, Sample("Write a poem about cats.", "turn")),
        ("What is 2+2?<end_of_turn>\n<start_of_turn>model", ["<end_of_turn>"], False, Sample("What is 2+2?", "turn")),
        ("  Tell me a joke. ", ["<|assistant|>"], True, Sample("Tell me a joke.", "eos")),
        ("Tell me a joke and", ["<|assistant|>"], False, Sample("Tell me a joke and", "length")),
        ("A <|B|> B <|assistant|>", ["<|assistant|>", "<|B|>"], False, Sample("A", "turn")),  # the first marker cuts
    ],
)
def test_cut_at_the_end_of_the_user_turn(text, markers, eos, want):
    assert cut_sample(text, markers, eos) == want


@pytest.mark.parametrize(
    "text",
    [
        "Write a short poem about the sea.",
        "What is the capital of France?",
        "Can you help me plan a trip to Japan",
        "I have a list of numbers: 3, 1, 2. Sort them in ascending order.",
        "Given the list [3, 1, 2], find the median.",
        "how do I install numpy on windows",
        "I need a cover letter for a barista job.",
    ],
)
def test_instruction_like_positive(text):
    assert instruction_check(Sample(text, "turn")) == []


@pytest.mark.parametrize(
    "sample, reason",
    [
        (Sample("Write a short poem about the sea.", "eos"), "closed"),  # EOS, not the assistant tag
        (Sample("Write a short poem about the sea.", "length"), "closed"),
        (Sample("", "turn"), "length"),
        (Sample("Explain.", "turn"), "length"),
        (Sample("write " * 301, "turn"), "length"),
        (Sample("<|user|>\nWrite a poem about cats.", "turn"), "markup"),  # repeats the template
        (Sample("The weather was nice and I walked my dog in the park.", "turn"), "request"),
        (Sample("asdf qwer zxcv uiop", "turn"), "request"),
    ],
)
def test_instruction_like_negative(sample, reason):
    assert reason in instruction_check(sample)


def test_distinct_2_and_mean_ci_on_known_inputs():
    assert distinct_n(["a b a b", "a b"]) == pytest.approx(2 / 4)  # bigrams: ab ba ab | ab -> {ab, ba} of 4
    assert distinct_n(["one", ""]) is None
    mean, (lo, hi) = mean_with_ci([0.5] * 10)
    assert mean == lo == hi == 0.5
    mean, (lo, hi) = mean_with_ci([0.0, 1.0] * 20, seed=3)
    assert mean == 0.5 and 0.3 < lo < 0.5 < hi < 0.7


def test_scores_on_known_samples():
    """Fractions, CIs, pairwise distance and max similarity from hand-made unit vectors."""
    vectors = {"What is love?": [1.0, 0.0], "Write a haiku about rain.": [0.0, 1.0], "ref a": [1.0, 0.0], "ref b": [0.6, 0.8]}

    def embed(texts):
        return np.array([vectors.get(t, [np.sqrt(0.5), np.sqrt(0.5)]) for t in texts])

    samples = [
        Sample("What is love?", "turn"),
        Sample("Write a haiku about rain.", "turn"),
        Sample("Write a haiku about rain.", "eos"),  # not closed
        Sample("", "length"),  # empty: not embedded
    ]
    got = score_samples(samples, embed=embed, references={"refs": ["ref a", "ref b"]}, n_boot=500)
    assert got["n"] == 4 and got["instruction_like"]["fraction"] == 0.5
    lo, hi = got["instruction_like"]["ci95"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert got["ends"] == {"turn": 0.5, "eos": 0.25, "length": 0.25}
    assert got["failed"]["closed"] == 0.5 and got["failed"]["length"] == 0.25
    # pairs among the 3 embedded samples: (1,0)·(0,1)=0, (1,0)·(0,1)=0, (0,1)·(0,1)=1 -> mean sim 1/3
    assert got["mean_pairwise_distance"] == pytest.approx(1 - 1 / 3)
    sim = got["similarity"]["refs"]
    assert sim["mean"] == pytest.approx((1.0 + 0.8 + 0.8) / 3) and sim["n"] == 3 and sim["n_reference"] == 2
    assert got["samples"][0]["nearest"]["refs"] == "ref a" and got["samples"][1]["max_similarity"]["refs"] == pytest.approx(0.8)
    assert "max_similarity" not in got["samples"][3]


def test_scores_with_the_real_minilm():
    """Real all-MiniLM-L6-v2: a sample that is a reference instruction is nearest to itself (similarity ~1)."""
    from implicit_it.embedding import Embedder

    refs = ["Write a poem about the ocean.", "How do I bake sourdough bread?", "Explain quantum entanglement simply."]
    samples = [Sample("How do I bake sourdough bread?", "turn"), Sample("Compose a short poem about the sea.", "turn")]
    got = score_samples(samples, embed=Embedder(), references={"refs": refs}, n_boot=200)
    assert got["samples"][0]["max_similarity"]["refs"] == pytest.approx(1.0, abs=1e-4)
    assert got["samples"][1]["nearest"]["refs"] == refs[0]
    assert 0 < got["mean_pairwise_distance"] < 1


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu")


def test_same_seed_same_samples_other_seed_differs(tiny):
    cfg = TemplateConfig(n=5, max_new_tokens=8, batch_size=2, **NO_EMBED)
    a = sample_user_turns(tiny, cfg, seed=1)
    assert len(a) == 5 and a == sample_user_turns(tiny, cfg, seed=1)
    assert a != sample_user_turns(tiny, cfg, seed=2)
    assert len({s.text for s in a}) > 1  # samples, not one greedy continuation
    assert all(s.end in ("turn", "eos", "length") for s in a)


def test_stage_writes_merges_and_reads_back(tiny, tmp_path):
    cfg = TemplateConfig(n=4, max_new_tokens=6, **NO_EMBED)
    first = template(tiny, cfg, tmp_path, fmt="tulu", label="a", seed=0)
    assert "samples" not in first.summary and first.summary["n"] == 4 and first.summary["prefix"] == "<|user|>\n"
    both = template(tiny, cfg, tmp_path, fmt="ab_tags", label="b", seed=0, earlier=first)
    back = read_result(tmp_path / "template.json")
    assert isinstance(back, TemplateResult) and [e["model"] for e in back.entries] == ["a", "b"]
    assert back.entries[1]["prefix"] == "<|A|>\n" and len(back.entries[1]["samples"]) == 4
    assert list(both.result.to_frame()["model"]) == ["a", "b"]
    assert (tmp_path / "template.png").stat().st_size > 0 and (tmp_path / "template.parquet").exists()
    with pytest.raises(ValueError, match="no user tag"):
        template(tiny, cfg, tmp_path, fmt="raw", label="c")


def test_sampler_cuts_at_the_assistant_tag_and_at_eos(tiny):
    """The sampler's own path (decode, stop id, cut) on fixed continuations: a stub stands in for ``model.generate``."""
    import torch

    tok = tiny.tokenizer
    rows = [
        tok("Write a poem about rain.\n<|assistant|>\nDrops fall", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
        tok("What is 2+2?", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, 5, 6],
        tok("and so on and so", add_special_tokens=False)["input_ids"],
    ]
    width = max(map(len, rows))

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            new = [r + [tok.pad_token_id] * (width - len(r)) for r in rows[: input_ids.shape[0]]]
            return torch.cat([input_ids, torch.tensor(new)], dim=1)

    class Loaded:
        model, tokenizer = Stub(), tok

    got = sample_user_turns(Loaded(), TemplateConfig(n=3, batch_size=3, **NO_EMBED))
    assert got == [Sample("Write a poem about rain.", "turn"), Sample("What is 2+2?", "eos"), Sample("and so on and so", "length")]
    assert [instruction_check(s) == [] for s in got] == [True, False, False]
    rows[0] = tok("Explain tides.<end>\n<start>assistant\nThe moon", add_special_tokens=False)["input_ids"]
    got = sample_user_turns(Loaded(), TemplateConfig(n=2, **NO_EMBED), fmt="native")
    assert got == [Sample("Explain tides.", "turn"), Sample("What is 2+2?", "eos")]


@pytest.mark.parametrize(
    "path, percent", [("lima/train.jsonl", 92.7), ("alpaca_eval/eval_set.json", 91.4), ("lima/val_instructions.jsonl", 100.0)]
)
def test_the_check_accepts_most_reference_instructions_as_the_readme_says(path, percent, shared_data):
    """README's shares of each reference set the check accepts, each instruction taken as a closed user turn (this test
    regenerates them)."""
    from implicit_it.data import read_instructions

    texts = [i.instruction for i in read_instructions(shared_data / path)]
    assert round(100 * sum(not instruction_check(Sample(t, "turn")) for t in texts) / len(texts), 1) == percent
