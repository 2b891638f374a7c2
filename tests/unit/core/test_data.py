"""Data readers: valid layouts parse; each kind of bad input raises one error naming file:line."""

from __future__ import annotations

import json

import pytest

from implicit_it.data import read_chat_jsonl, read_instructions
from implicit_it.errors import DataFormatError


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def _chat(i, user="Hi?", assistant="Hello."):
    return json.dumps({"id": f"x{i}", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_reads_shared_lima(shared_data):
    ex = read_chat_jsonl(shared_data / "lima" / "train.jsonl")
    assert len(ex) == 1030
    assert sum(not e.is_single_turn for e in ex) == 30
    assert ex[0].id == "lima_0" and ex[0].instruction.startswith("Can brain cells move?")
    single = read_chat_jsonl(shared_data / "lima" / "train.jsonl", single_turn_only=True)
    assert len(single) == 1000


def test_reads_instruction_layouts(shared_data):
    val = read_instructions(shared_data / "lima" / "val_instructions.jsonl")
    assert len(val) == 56 and val[0].instruction == "What is Samyang Buldak ramen?"
    ae = read_instructions(shared_data / "alpaca_eval" / "eval_set.json")
    assert len(ae) == 805 and ae[0].reference_output and ae[0].generator == "gpt4_1106_preview"
    chat = read_instructions(shared_data / "gsm8k" / "test.jsonl", limit=3)
    assert len(chat) == 3 and chat[0].reference_output.strip().split()[-1].isdigit()


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        ([_chat(0), '{"id": "x1", "messages": [{"role": "user", "content": "a"'], 2, "malformed JSON"),
        (
            [_chat(0), _chat(1), json.dumps({"id": "x2", "messages": [{"role": "user", "content": "only a question"}]})],
            3,
            "missing role 'assistant'",
        ),
        ([json.dumps({"id": "x0", "messages": [{"content": "hi"}, {"role": "assistant", "content": "a"}]})], 1, "has no 'role'"),
        ([_chat(0), _chat(1, assistant="   ")], 2, "empty content"),
        (
            [_chat(0), json.dumps({"id": "x1", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]})],
            2,
            "expected 'user'",
        ),
        ([_chat(0), _chat(0)], 2, "duplicate id 'x0'"),
        (["[1, 2]"], 1, "expected a JSON object"),
    ],
)
def test_bad_chat_lines_name_file_and_line(tmp_path, lines, line_no, message):
    path = _write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_chat_jsonl(path)
    assert str(err.value).startswith(f"{path}:{line_no}: ")
    assert message in str(err.value)
    assert err.value.line == line_no


def test_non_utf8_names_line(tmp_path):
    path = _write(tmp_path, "latin1.jsonl", (_chat(0) + "\n").encode() + '{"instruction": "caf\xe9"}\n'.encode("latin-1"), "wb")
    with pytest.raises(DataFormatError, match=rf"{path}:2: not valid UTF-8"):
        read_instructions(path)


def test_instruction_errors(tmp_path):
    path = _write(tmp_path, "ins.jsonl", '{"instruction": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(DataFormatError, match=rf"{path}:2: record: missing field 'instruction'"):
        read_instructions(path)
    path = _write(tmp_path, "ins.json", json.dumps([{"instruction": "a"}, {"instruction": ""}]))
    with pytest.raises(DataFormatError, match="record 1: field 'instruction' must be a non-empty string"):
        read_instructions(path)
    with pytest.raises(DataFormatError, match="file not found"):
        read_instructions(tmp_path / "missing.jsonl")
    with pytest.raises(DataFormatError, match="no examples"):
        read_chat_jsonl(_write(tmp_path, "empty.jsonl", "\n\n"))


def test_limit(tmp_path):
    path = _write(tmp_path, "c.jsonl", "\n".join(_chat(i) for i in range(5)))
    assert [e.id for e in read_chat_jsonl(path, limit=2)] == ["x0", "x1"]
