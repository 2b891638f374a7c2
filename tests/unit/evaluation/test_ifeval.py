"""IFEval: the official verifiers through if-verifiable, the official scoring loop, subsets, CIs and the CLI."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.errors import DataFormatError
from implicit_it.evaluation.ifeval import (
    IfEvalPrompt,
    load_ifeval,
    loose_variants,
    official_verifiers,
    read_ifeval_responses,
    reference_responses,
    score_ifeval,
    stratified_subset,
)

# The IFEval paper's GPT-4 figures (Zhou et al. 2023, Table 1 / the repository's README), in %.
PUBLISHED_GPT4 = {"prompt_strict": 76.89, "instruction_strict": 83.57, "prompt_loose": 79.30, "instruction_loose": 85.37}


@pytest.fixture(scope="module")
def ifeval_data(shared_data):
    return shared_data / "ifeval"


def test_gpt4_responses_reproduce_the_published_figures(ifeval_data):
    prompts = load_ifeval(ifeval_data / "input_data.jsonl")
    responses = read_ifeval_responses(ifeval_data / "input_response_data_gpt4_20231107_145030.jsonl")
    result = score_ifeval(prompts, responses, model="gpt4").summary()
    assert (result["n_prompts"], result["n_instructions"]) == (541, 834)
    for metric, published in PUBLISHED_GPT4.items():
        got = 100 * result[metric]["accuracy"]
        assert abs(got - published) <= 0.5, (metric, got, published)
        assert result[metric]["ci_low"] < result[metric]["accuracy"] < result[metric]["ci_high"]
    # one prompt's wording (key 2785) was fixed upstream after GPT-4's responses were made: matched by position
    assert result["n_matched_by_position"] == 1
    assert score_ifeval(prompts, responses).summary()["per_prompt"] == result["per_prompt"]  # deterministic


def _prompt(key, ids, kwargs, text="Write about cats."):
    return IfEvalPrompt(key, text, tuple(ids), tuple(kwargs))


def test_official_strict_and_loose_loop():
    kw = _prompt(1, ["keywords:existence"], [{"keywords": ["banana"]}])
    lower = _prompt(2, ["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}])
    responses = [
        "Sure! Here it is:\nbanana bread is good",  # strict pass
        "**Intro**\nno fruit here",  # fails both ways
        "Here is my answer:\nall lowercase, with a comma\nand, another",  # lowercase: fails strict, passes loose; commas fail
    ]
    result = score_ifeval([kw, kw, lower], responses, n_boot=200).summary()
    rows = result["per_prompt"]
    assert [r["strict"] for r in rows] == [True, False, False] and [r["loose"] for r in rows] == [True, False, False]
    assert rows[2]["instruction_strict"] == [False, False] and rows[2]["instruction_loose"] == [True, False]
    assert result["instruction_loose"]["accuracy"] == pytest.approx(2 / 4)
    assert len(loose_variants("a\n*b*\nc")) == 8 and "b" in loose_variants("a\n*b*\nc")[-1]


def test_an_empty_response_fails_every_instruction_and_counts_them():
    p = _prompt(1, ["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}])
    result = score_ifeval([p, p], ["", "this is a plain answer written in english by a person"], n_boot=100).summary()
    assert result["n_instructions"] == 4 and result["instruction_strict"]["accuracy"] == pytest.approx(0.5)


def test_reference_systems_show_what_the_metric_gives_for_free(ifeval_data):
    prompts = load_ifeval(ifeval_data / "input_data.jsonl")
    scores = {
        k: score_ifeval(prompts, reference_responses(k, prompts), model=k, n_boot=200).summary() for k in ("constant", "echo", "empty")
    }
    assert scores["empty"]["prompt_loose"]["accuracy"] == 0.0
    assert 0.0 < scores["constant"]["instruction_loose"]["accuracy"] < 0.5  # "Okay!" has no commas, no forbidden words...
    assert scores["echo"]["prompt_loose"]["accuracy"] > 0.0
    with pytest.raises(ValueError, match="unknown reference system"):
        reference_responses("silence", prompts)


def test_stratified_subset_keeps_type_shares_and_is_fixed_by_its_seed(ifeval_data):
    prompts = load_ifeval(ifeval_data / "input_data.jsonl")
    sub = stratified_subset(prompts, 60, seed=0)
    assert len(sub) == 60 and sub == stratified_subset(prompts, 60, seed=0) != stratified_subset(prompts, 60, seed=1)
    assert [p.key for p in sub] == sorted(p.key for p in sub) or [prompts.index(p) for p in sub] == sorted(prompts.index(p) for p in sub)
    types = {p.first_type for p in prompts}
    assert {p.first_type for p in sub} == types  # every first-instruction type represented at 60
    for t in types:
        share = sum(p.first_type == t for p in prompts) / len(prompts)
        assert abs(sum(p.first_type == t for p in sub) - 60 * share) <= 1.5, t
    assert load_ifeval(ifeval_data / "input_data.jsonl", limit=60) == sub


def test_scoring_leaves_global_state_as_it_found_it():
    import langdetect
    import nltk.tokenize

    random.seed(123)
    expected = random.random()
    random.seed(123)
    before = (nltk.tokenize._get_punkt_tokenizer, langdetect.DetectorFactory.seed)
    with official_verifiers():
        random.random()
    assert (nltk.tokenize._get_punkt_tokenizer, langdetect.DetectorFactory.seed) == before
    assert random.random() == expected


def test_bad_input_names_file_and_line(tmp_path, ifeval_data):
    bad = tmp_path / "input.jsonl"
    bad.write_text(json.dumps({"key": 1, "prompt": "x", "instruction_id_list": ["nope:nothing"], "kwargs": [{}]}) + "\n")
    with pytest.raises(DataFormatError, match=r"input.jsonl:1.*unknown instruction type"):
        load_ifeval(bad)
    resp = tmp_path / "resp.jsonl"
    resp.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataFormatError, match=r"resp.jsonl:2"):
        read_ifeval_responses(resp)


def test_cli_scores_outputs_and_generates(tmp_path, ifeval_data, tiny_llama_dir):
    prompts = load_ifeval(ifeval_data / "input_data.jsonl", limit=5)
    records = [{"instruction": p.prompt, "output": "okay, here it is", "generator": "x"} for p in prompts]
    (tmp_path / "outputs.json").write_text(json.dumps(records))
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "ifeval",
            "--outputs",
            str(tmp_path / "outputs.json"),
            "--ifeval-prompts",
            "5",
            "--ifeval-data",
            str(ifeval_data / "input_data.jsonl"),
            "--out",
            str(tmp_path / "scored"),
        ],
    )
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "scored" / "ifeval.json").read_text())["results"][0]
    assert scored["n_prompts"] == 5 and (tmp_path / "scored" / "ifeval.parquet").is_file()
    manifest = json.loads((tmp_path / "scored" / "manifest.json").read_text())
    assert manifest["results"]["prompt_loose"] == scored["prompt_loose"]
    gen = CliRunner().invoke(
        app,
        [
            "eval",
            "ifeval",
            "--model",
            str(tiny_llama_dir),
            "--ifeval-prompts",
            "3",
            "--max-new-tokens",
            "4",
            "-q",
            "--ifeval-data",
            str(ifeval_data / "input_data.jsonl"),
            "--out",
            str(tmp_path / "gen"),
        ],
    )
    assert gen.exit_code == 0, gen.output
    outputs = json.loads((tmp_path / "gen" / "outputs.json").read_text())
    assert len(outputs) == 3 and json.loads((tmp_path / "gen" / "ifeval.json").read_text())["results"][0]["n_prompts"] == 3
    both = CliRunner().invoke(app, ["eval", "ifeval", "--out", str(tmp_path / "x")])
    assert both.exit_code != 0 and "--model" in both.output
