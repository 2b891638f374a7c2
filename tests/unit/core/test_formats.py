"""Chat formats and the response-only label mask, property-tested on every tokenizer shape."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from implicit_it.formats import FORMATS, IGNORE_INDEX, encode_example, get_format, pad_batch
from tests.helpers import check_mask_invariants

TEXT = st.text(alphabet=st.sampled_from([chr(c) for c in range(32, 127)] + ["\n"]), min_size=1, max_size=80).filter(lambda s: s.strip())
# Responses that start the way real ones do, including starts a BPE merges with the preceding "\n".
RESPONSE = st.one_of(TEXT, st.sampled_from(["The", "I", "\n", " ", "Here", "1."]).flatmap(lambda p: TEXT.map(lambda t: p + t)))


@pytest.mark.parametrize("fmt_name", ["tulu", "ab_tags", "empty_instruction", "native", "raw"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=TEXT, response=RESPONSE)
def test_mask_bytelevel(bytelevel_tokenizer, fmt_name, instruction, response):
    check_mask_invariants(bytelevel_tokenizer, fmt_name, instruction, response)


@pytest.mark.parametrize("fmt_name", ["tulu", "ab_tags", "empty_instruction", "raw"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=TEXT, response=RESPONSE)
def test_mask_merging_sentencepiece(merging_tokenizer, fmt_name, instruction, response):
    check_mask_invariants(merging_tokenizer, fmt_name, instruction, response)


def test_merging_tokenizer_really_merges_across_boundary(merging_tokenizer):
    """The property test above must exercise the merge path, not only the easy one."""
    merged = [
        check_mask_invariants(merging_tokenizer, fmt, ins, resp)
        for fmt in ("tulu", "ab_tags")
        for ins in ("0", "Why?", "x", "Hi.")
        for resp in ("The", "The0", "I am", "Here")
    ]
    assert sum(merged) >= 1


def test_prompt_texts():
    assert FORMATS["tulu"].prompt_text("Hi") == "<|user|>\nHi\n<|assistant|>\n"
    assert FORMATS["ab_tags"].prompt_text("Hi") == "<|A|>\nHi\n<|B|>\n"
    assert FORMATS["empty_instruction"].prompt_text("Hi") == "<|user|>\n\n<|assistant|>\n"
    assert FORMATS["raw"].prompt_text("Hi") == "Hi"


def test_native_needs_chat_template(merging_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        FORMATS["native"].prompt_text("Hi", merging_tokenizer)


def test_native_uses_template_and_end_of_turn(bytelevel_tokenizer):
    text = FORMATS["native"].prompt_text("Hi", bytelevel_tokenizer)
    assert text == "<start>user\nHi<end>\n<start>assistant\n"  # BOS stripped: the tokenizer adds it


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown chat format 'chatml'"):
        get_format("chatml")


def test_truncation_cuts_response_and_keeps_prompt(bytelevel_tokenizer):
    tok = bytelevel_tokenizer
    full = encode_example(tok, "tulu", "Explain", "word " * 100)
    cut = encode_example(tok, "tulu", "Explain", "word " * 100, max_length=full.n_prompt_tokens + 5)
    assert cut.truncated and len(cut.input_ids) == full.n_prompt_tokens + 5
    assert cut.input_ids == full.input_ids[: len(cut.input_ids)]
    assert sum(lab != IGNORE_INDEX for lab in cut.labels) == 5
    with pytest.raises(ValueError, match="max_length"):
        encode_example(tok, "tulu", "Explain " * 50, "ok", max_length=10)


def test_pad_batch_left_and_right():
    left = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right", label_sequences=[[-100, 6, 7], [8]])
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
