"""The paper's source transformations reproduce the paper pipeline's files."""

from __future__ import annotations

import json

import pytest

from implicit_it.sources import SOURCES, chess_from_lines, gsm8k_from_rows, lima_from_rows, mbpp_from_rows, recipes_from_rows


def test_mbpp_byte_identical_to_paper_output(shared_data):
    rows = [json.loads(line) for line in (shared_data / "mbpp" / "mbpp_raw.jsonl").read_text().splitlines()]
    train = [r for r in rows if 601 <= r["task_id"] <= 974]  # the HF "full" train split
    out = "".join(json.dumps(e.to_json()) + "\n" for e in mbpp_from_rows(train))
    assert out == (shared_data / "mbpp" / "train.jsonl").read_text()


def test_poetry_matches_paper_output(shared_data):
    examples = SOURCES["poetry"].convert_local(shared_data / "poetry" / "poems_kaggle_raw.csv")
    ref = [json.loads(line) for line in (shared_data / "poetry" / "train.jsonl").read_text().splitlines()]
    assert [e.id for e in examples] == [r["id"] for r in ref]  # untitled rows 354 and 489 skipped
    assert [e.instruction for e in examples] == [r["messages"][0]["content"] for r in ref]
    norm = lambda s: " ".join(s.split())  # the CSV copy is whitespace-normalised
    assert [norm(e.response) for e in examples] == [norm(r["messages"][1]["content"]) for r in ref]


def test_chess_transformation(shared_data, tmp_path):
    ref = [json.loads(line) for line in (shared_data / "chess" / "train.jsonl").read_text().splitlines()[:2]]
    lines = [
        '[Event "Rated"]',
        '[WhiteElo "1639"]',
        '[BlackElo "1403"]',
        "",
        "1. e4 e6 1-0",
        "",
        '[WhiteElo "1654"]',
        '[BlackElo "1919"]',
        "1. d4 d5 0-1",
    ]
    ex = chess_from_lines(lines)
    assert [e.instruction for e in ex] == ['[WhiteElo "1639"]\n[BlackElo "1403"]\n', '[WhiteElo "1654"]\n[BlackElo "1919"]\n']
    assert [e.id for e in ex] == ["pgn-patrickfrank1-4", "pgn-patrickfrank1-8"]
    assert ref[0]["messages"][0]["content"].startswith('[WhiteElo "') and ref[0]["messages"][1]["content"].startswith("1. ")
    assert len(chess_from_lines(lines, limit=1)) == 1
    dump = tmp_path / "pgn.txt"
    dump.write_text("\n".join(lines))
    assert SOURCES["chess"].convert_local(dump) == ex


def test_recipes_transformation_keeps_three_newlines(shared_data):
    row = {"Title": "Toast", "Cleaned_Ingredients": "['1 slice bread', 'butter']", "Instructions": "Toast it.\nButter it."}
    (ex,) = recipes_from_rows([row])
    assert ex.instruction == "Recipe for Toast"
    assert ex.response == " - 1 slice bread\n - butter\n\n\nToast it.\nButter it."
    ref = json.loads((shared_data / "recipes" / "train.jsonl").read_text().splitlines()[0])
    assert ref["messages"][0]["content"].startswith("Recipe for ") and " - " in ref["messages"][1]["content"]


def test_gsm_and_lima_rows():
    rows = [{"question": f"q{i}", "answer": f"a\n#### {i}"} for i in range(1005)]
    ex = gsm8k_from_rows(rows)
    assert len(ex) == 1000 and ex[-1].id == "gsm8k_999" and ex[0].response == "a\n#### 0"
    lima = lima_from_rows([{"conversations": ["u1", "a1", "u2", "a2"], "source": "x"}])
    assert [m.role for m in lima[0].messages] == ["user", "assistant", "user", "assistant"]


def test_registry_names_hub_ids():
    assert SOURCES["gsm"].hub_id == "openai/gsm8k" and SOURCES["gsm"].config == "main"
    assert SOURCES["recipes"].hub_id == "Hieu-Pham/kaggle_food_recipes"
    assert set(SOURCES) == {"lima", "gsm", "mbpp", "poetry", "recipes", "chess"}


def test_load_chat_source_path_and_hub_names(shared_data):
    from implicit_it.sources import load_chat_source

    ex = load_chat_source(str(shared_data / "lima" / "train.jsonl"), limit=5, single_turn_only=True)
    assert len(ex) == 5 and all(e.is_single_turn for e in ex)
    with pytest.raises(ValueError, match="unknown hub source 'alpaca'"):
        load_chat_source("hub:alpaca")
