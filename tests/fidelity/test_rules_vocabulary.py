"""The rule adapter's uniform-rule strings resolve, on Llama-2's own vocabulary, to the ids the paper's code scores.

implicit-it writes the paper's 15 uniform-rule tokens as strings so that any tokenizer gets them; this test is what
ties those strings back to the paper. The ids and scores below are read off ``InsTunerModel.forward`` in
john-hewitt/implicit-ins ``open_instruct/combined_model.py`` at bc261e5 (unchanged through fe1c2d8), not from
implicit-it. The vocabulary is llama.cpp's ``ggml-vocab-llama-spm.gguf`` (``python3 scripts/fetch_llama2_vocab.py``,
which ``scripts/setup.sh`` runs).
"""

from __future__ import annotations

import os

import pytest

from implicit_it.rules import PAPER_UNIFORM, RuleAdapter, RuleConfig, TokenScore, resolve_token_scores
from scripts.fetch_llama2_vocab import llama2_vocab_path

# output[id] = score, in the order the paper's code assigns them (the "-"/"*" comments there are swapped: 334 is "▁*").
PAPER_CODE_UNIFORM = {
    29966: -4, 529: -4, 29989: -4,  # "<", "▁<", "|"
    306: -5, 29902: -5, 1334: -3, 5618: -5, 881: -6,  # "▁I", "I", "▁We", "What", "▁should"
    334: 1, 448: 1, 1678: 1, 396: 1, 444: 1, 13: 1,  # "▁*", "▁-", "▁▁▁", "▁#", "▁##", newline
    29991: 1,  # "!"
}  # fmt: skip


@pytest.fixture(scope="module")
def llama2_tokenizer():
    from transformers import AutoTokenizer

    path = llama2_vocab_path()
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Llama-2's vocabulary at {path}: scripts/setup.sh runs scripts/fetch_llama2_vocab.py")
        pytest.skip(f"no Llama-2 vocabulary at {path} (python3 scripts/fetch_llama2_vocab.py)")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def uniform_ids(tokenizer, items) -> dict[int, float]:
    """What the adapter's uniform vector holds: id -> score, only the ids a string resolves to."""
    vector = RuleAdapter(tokenizer, RuleConfig(uniform=list(items))).uniform_vector
    return {i: float(vector[i]) for i in vector.nonzero().flatten().tolist()}


def test_every_uniform_string_resolves_to_its_paper_id(llama2_tokenizer):
    resolved = resolve_token_scores(llama2_tokenizer, PAPER_UNIFORM)
    assert [(r.text, r.token_id) for r in resolved] == [(r.text, r.llama2_id) for r in resolved]


def test_the_uniform_vector_on_llama2_is_the_paper_codes(llama2_tokenizer):
    assert uniform_ids(llama2_tokenizer, PAPER_UNIFORM) == PAPER_CODE_UNIFORM


def test_the_two_space_token_would_fail(llama2_tokenizer):
    """The departure this test was written to catch: two spaces are Llama-2's '▁▁' (259), not the paper's 1678."""
    old = [TokenScore(text="  ", score=1) if t.llama2_id == 1678 else t for t in PAPER_UNIFORM]
    got = uniform_ids(llama2_tokenizer, old)
    assert got != PAPER_CODE_UNIFORM and 1678 not in got and got[259] == 1
    assert llama2_tokenizer.convert_ids_to_tokens([1678, 259]) == ["▁▁▁", "▁▁"]
