"""The judge-free instruction-following suite: each checker on hand-made responses, loose scoring,
the packaged prompts, malformed files, and the scored result's files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from implicit_it.errors import DataFormatError
from implicit_it.evaluation.ifsuite import CHECKS, IfPrompt, IfSuiteResult, load_suite, loose_variants, score_responses
from implicit_it.evaluation.ifsuite.checks import ARGUMENTS, run_check, run_check_loosely, validate_check

CATEGORIES = {
    "word_count",
    "sentence_count",
    "paragraph_count",
    "bullet_count",
    "keywords_required",
    "keywords_forbidden",
    "lowercase",
    "uppercase",
    "start_phrase",
    "end_phrase",
    "json_format",
    "title",
    "no_commas",
}
COUNT_KINDS = {"word_count", "sentence_count", "paragraph_count", "bullet_count"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]

# (check, response, expected strict result)
CASES = [
    ({"kind": "word_count", "relation": "at_most", "n": 5}, "One two three four five.", True),
    ({"kind": "word_count", "relation": "at_most", "n": 5}, "One two three four five six.", False),
    ({"kind": "word_count", "relation": "at_most", "n": 2}, "don't stop", False),  # \w+ : don, t, stop = 3 words
    ({"kind": "word_count", "relation": "at_least", "n": 4}, "well - this is it", True),  # the dash is no word
    ({"kind": "word_count", "relation": "at_least", "n": 4}, "only three words", False),
    ({"kind": "sentence_count", "relation": "exactly", "n": 3}, "It rains. Is it cold? Yes!", True),
    ({"kind": "sentence_count", "relation": "exactly", "n": 3}, "It rains. It pours.", False),
    (
        {"kind": "sentence_count", "relation": "exactly", "n": 2},
        "Pi is 3.14 exactly. Wow...",
        True,
    ),  # no split inside 3.14; "..." is one end
    ({"kind": "sentence_count", "relation": "exactly", "n": 2}, "First one.\nAnd an unpunctuated tail", True),
    ({"kind": "sentence_count", "relation": "at_least", "n": 2}, "Just one sentence here.", False),
    ({"kind": "sentence_count", "relation": "at_most", "n": 1}, "One. Two.", False),
    ({"kind": "paragraph_count", "n": 2, "separator": "blank_line"}, "First part.\n\nSecond part.", True),
    ({"kind": "paragraph_count", "n": 2, "separator": "blank_line"}, "First part.\nStill the first.\n \nSecond.\n\n\n", True),
    ({"kind": "paragraph_count", "n": 2, "separator": "blank_line"}, "Only one\nparagraph here.", False),
    ({"kind": "paragraph_count", "n": 3, "separator": "divider"}, "One.\n***\nTwo.\n***\nThree.", True),
    ({"kind": "paragraph_count", "n": 3, "separator": "divider"}, "One.\n\nTwo.\n\nThree.", False),  # blank lines are no dividers
    ({"kind": "paragraph_count", "n": 2, "separator": "divider"}, "One.\n***\n***\nTwo.", False),  # empty middle paragraph
    ({"kind": "paragraph_count", "n": 2, "separator": "divider"}, "A ***bold*** word.\n***\nTwo.", True),  # *** inside a line is no divider
    ({"kind": "bullet_count", "n": 3}, "Items:\n* tent\n- torch\n  * stove", True),
    ({"kind": "bullet_count", "n": 2}, "* tent\n***\n* torch\n**Bold** line\n---", True),  # ***, **bold** and --- are no bullets
    ({"kind": "bullet_count", "n": 2}, "* tent\n* torch\n* stove", False),
    ({"kind": "bullet_count", "n": 2}, "1. tent\n2. torch", False),
    ({"kind": "keywords_required", "words": ["cat", "Blue"]}, "The CAT was blue.", True),
    ({"kind": "keywords_required", "words": ["cat"]}, "Pick a category.", False),  # inside another word
    ({"kind": "keywords_required", "words": ["cat", "dog"]}, "A cat only.", False),
    ({"kind": "keywords_required", "words": ["ice cream"]}, "I love ice cream!", True),
    ({"kind": "keywords_forbidden", "words": ["red"]}, "The sky was bright and bored.", True),  # "bored" holds no word "red"
    ({"kind": "keywords_forbidden", "words": ["red"]}, "A Red sky.", False),
    ({"kind": "keywords_forbidden", "words": ["cat"]}, "cat's toy", False),
    ({"kind": "lowercase"}, "all lower, with digits 123 and punctuation!?", True),
    ({"kind": "lowercase"}, "almost all lower but One", False),
    ({"kind": "lowercase"}, "123 !!!", False),  # no letter at all
    ({"kind": "uppercase"}, "CLOSED ON MONDAY, 9-5!", True),
    ({"kind": "uppercase"}, "CLOSED on MONDAY", False),
    ({"kind": "start_phrase", "phrase": "Once upon a time"}, '  "once upon a time there was a fox.', True),
    ({"kind": "start_phrase", "phrase": "Once upon a time"}, "Sure! Once upon a time", False),
    ({"kind": "start_phrase", "phrase": "Dear Sam"}, "Dear Samantha, hello.", False),  # runs into a longer word
    ({"kind": "start_phrase", "phrase": "Dear Ms. Patel,"}, "Dear Ms. Patel, the parcel is late.", True),
    ({"kind": "end_phrase", "phrase": "The end."}, "They lived happily.\nthe end.  \n", True),
    ({"kind": "end_phrase", "phrase": "The end."}, "The end. Or is it?", False),
    ({"kind": "end_phrase", "phrase": "Good luck!"}, 'Go for it. "Good luck!"', True),
    ({"kind": "end_phrase", "phrase": "Sam"}, "Best wishes, Pam Sam", True),
    ({"kind": "end_phrase", "phrase": "Sam"}, "Best wishes, Wilsam", False),
    ({"kind": "json_format"}, '{"a": 1}', True),
    ({"kind": "json_format"}, '```json\n{"a": [1, 2]}\n```', True),
    ({"kind": "json_format"}, '  ```\n["x", "y"]\n```  ', True),
    ({"kind": "json_format"}, 'Here is the JSON: {"a": 1}', False),
    ({"kind": "json_format"}, '{"a": 1,}', False),
    ({"kind": "json_format"}, "42", False),  # a bare number is not "formatted as JSON"
    ({"kind": "json_format", "keys": ["name", "age"]}, '{"name": "Ada", "age": 36, "x": 0}', True),
    ({"kind": "json_format", "keys": ["name", "age"]}, '{"name": "Ada"}', False),
    ({"kind": "json_format", "keys": ["name"]}, '[{"name": "Ada"}]', False),
    ({"kind": "title"}, "<<Autumn Leaves>>\nRed and gold.", True),
    ({"kind": "title"}, "Autumn Leaves\nRed and gold.", False),
    ({"kind": "title"}, "<<Autumn\nLeaves>>", False),
    ({"kind": "title"}, "<<>>", False),
    ({"kind": "no_commas"}, "No commas here; none at all.", True),
    ({"kind": "no_commas"}, "One, two.", False),
]


@pytest.mark.parametrize(("check", "response", "expected"), CASES, ids=lambda v: v["kind"] if isinstance(v, dict) else None)
def test_check_on_hand_made_response(check, response, expected):
    validate_check(check, "cases")
    assert run_check(response, check) is expected


def test_every_kind_has_a_passing_and_a_failing_case():
    outcomes = {(check["kind"], expected) for check, _, expected in CASES}
    assert {(kind, expected) for kind in CHECKS for expected in (True, False)} <= outcomes
    assert ARGUMENTS.keys() == CHECKS.keys()


@pytest.mark.parametrize(
    ("check", "response"),
    [
        ({"kind": "lowercase"}, "Sure! Here is your answer:\nall lower case here"),
        ({"kind": "start_phrase", "phrase": "Once upon a time"}, "**Once upon a time** a fox slept."),
        ({"kind": "title"}, "Title: <<Fox\nStory>>\nbody"),  # not loose either
        ({"kind": "json_format"}, 'Here is your JSON:\n{"a": 1}\nHope this helps!'),
        ({"kind": "end_phrase", "phrase": "The end."}, "They slept. **The end.**"),
        ({"kind": "no_commas"}, "Sure, here it is:\nno commas below"),
    ],
)
def test_loose_forgives_a_chatty_first_line_and_markdown_stars(check, response):
    assert not run_check(response, check)
    assert run_check_loosely(response, check) is (check["kind"] != "title")


def test_loose_variants_are_ifeval_eight():
    variants = loose_variants("Sure:\n**a**\nb\nBye")
    assert variants == [
        "Sure:\n**a**\nb\nBye",
        "**a**\nb\nBye",
        "Sure:\n**a**\nb",
        "**a**\nb",
        "Sure:\na\nb\nBye",
        "a\nb\nBye",
        "Sure:\na\nb",
        "a\nb",
    ]


def test_loose_skips_empty_variants_but_never_undercuts_strict():
    one_line = "too, many, commas"  # removing its only line leaves "" which must not count as comma-free
    assert not run_check_loosely(one_line, {"kind": "no_commas"})
    assert run_check_loosely("", {"kind": "no_commas"})  # strict passes, so loose does too


@pytest.mark.parametrize(
    ("check", "field"),
    [
        ({"kind": "wordcount", "n": 3}, "checks[0].kind"),
        ({"n": 3}, "checks[0].kind"),
        ({"kind": "word_count", "n": 3}, "checks[0].relation"),
        ({"kind": "word_count", "relation": "about", "n": 3}, "checks[0].relation"),
        ({"kind": "bullet_count", "n": "3"}, "checks[0].n"),
        ({"kind": "bullet_count", "n": True}, "checks[0].n"),
        ({"kind": "bullet_count", "n": 0}, "checks[0].n"),
        ({"kind": "bullet_count", "n": 3, "relation": "exactly"}, "checks[0].relation"),
        ({"kind": "keywords_required", "words": "cat"}, "checks[0].words"),
        ({"kind": "keywords_required", "words": []}, "checks[0].words"),
        ({"kind": "end_phrase", "phrase": " "}, "checks[0].phrase"),
        ({"kind": "paragraph_count", "n": 2, "separator": "hr"}, "checks[0].separator"),
        ({"kind": "title", "text": "x"}, "checks[0].text"),
        ("title", "checks[0]"),
    ],
)
def test_validate_check_names_the_bad_field(check, field):
    with pytest.raises(DataFormatError, match=r"^f\.jsonl:7: ") as err:
        validate_check(check, "f.jsonl", 7, field="checks[0]")
    assert err.value.problem.startswith(field + ":")


def _number_mentioned(instruction: str, n: int) -> bool:
    text = instruction.lower()
    return str(n) in text or (n < len(NUMBER_WORDS) and NUMBER_WORDS[n] in text.replace("-", " ").split(" "))


def test_packaged_suite_is_complete_and_consistent():
    suite = load_suite()
    assert len(suite) >= 120
    counts = Counter(p.category for p in suite)
    assert set(counts) == CATEGORIES and min(counts.values()) >= 10
    assert len({p.id for p in suite}) == len(suite) and len({p.instruction for p in suite}) == len(suite)
    for p in suite:
        assert p.category in {c["kind"] for c in p.checks}, p.id
        for i, check in enumerate(p.checks):
            validate_check(check, p.id, field=f"checks[{i}]")
            if check["kind"] in COUNT_KINDS:
                assert _number_mentioned(p.instruction.replace(".", " ").replace(",", " "), check["n"]), (p.id, check)
            for word in check.get("words", []) + check.get("keys", []) + [check.get("phrase", "")]:
                assert word in p.instruction, (p.id, word)


def test_limit_interleaves_categories():
    suite = load_suite()
    first = load_suite(limit=13)
    assert {p.category for p in first} == CATEGORIES
    assert first == [next(p for p in suite if p.category == c) for c in dict.fromkeys(p.category for p in suite)]
    assert {p.category for p in load_suite(limit=24)} == CATEGORIES
    assert len(load_suite(limit=1000)) == len(suite)
    with pytest.raises(ValueError, match="limit"):
        load_suite(limit=0)


def _compliant(check: dict) -> str:
    """A response built from the check's arguments alone that must satisfy it."""
    kind, n = check["kind"], check.get("n", 0)
    if kind == "word_count":
        return " ".join(["word"] * n) if check["relation"] == "at_least" else "A few words."
    if kind == "sentence_count":
        return " ".join(["This is a sentence."] * n)
    if kind == "paragraph_count":
        return ("\n\n" if check["separator"] == "blank_line" else "\n***\n").join(f"Paragraph {i}." for i in range(n))
    return {
        "bullet_count": "\n".join(f"* item {i}" for i in range(n)),
        "keywords_required": " and ".join(check.get("words", [])) + ".",
        "keywords_forbidden": "Nothing to see here.",
        "lowercase": "all lower case, 42!",
        "uppercase": "ALL UPPER CASE, 42!",
        "start_phrase": f"{check.get('phrase')} and then more.",
        "end_phrase": f"Some text first. {check.get('phrase')}",
        "json_format": "```json\n" + json.dumps({k: "x" for k in check.get("keys", ["answer"])}) + "\n```",
        "title": "<<A Title>>\nThe body.",
        "no_commas": "No commas here.",
    }[kind]


def _empty_passes(check: dict) -> bool:
    return check["kind"] in {"keywords_forbidden", "no_commas"} or check.get("relation") == "at_most"


def test_packaged_checks_pass_on_built_responses_and_fail_on_empty():
    suite = load_suite()
    single = [p for p in suite if len(p.checks) == 1]
    assert {p.category for p in single} == CATEGORIES
    for p in single:
        (check,) = p.checks
        assert run_check(_compliant(check), check), p.id
        assert run_check("", check) is _empty_passes(check), p.id
    scored = score_responses(single, [_compliant(p.checks[0]) for p in single]).summary()
    assert scored["strict_accuracy"] == 1.0 and scored["instruction_level"]["n_checks"] == len(single)


def _write(tmp_path, records):
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


GOOD = {"id": "a-1", "category": "title", "instruction": "Give it a <<title>>.", "checks": [{"kind": "title"}]}


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({**GOOD, "id": "a-2", "instruction": "x", "checks": [{"kind": "shout"}]}, r":2: checks\[0\]\.kind: unknown check kind 'shout'"),
        ({k: v for k, v in GOOD.items() if k != "instruction"} | {"id": "a-2"}, r":2: instruction: missing field"),
        ({**GOOD, "instruction": "another"}, r":2: id: duplicate id 'a-1' \(first on line 1\)"),
        ({**GOOD, "id": "a-2"}, r":2: instruction: duplicate instruction"),
        ({**GOOD, "id": "a-2", "instruction": "x", "checks": []}, r":2: checks: expected a non-empty list"),
        ({**GOOD, "id": "a-2", "instruction": "x", "check": []}, r":2: check: unexpected field"),
        ({**GOOD, "id": 2, "instruction": "x"}, r":2: id: expected a non-empty string"),
        ('{"id": "a-2",', r":2: not valid JSON"),
        ("[1, 2]", r":2: expected a JSON object"),
    ],
)
def test_malformed_line_raises_one_error_naming_line_and_field(tmp_path, second, message):
    path = _write(tmp_path, [GOOD, second])
    with pytest.raises(DataFormatError, match=message) as err:
        load_suite(path)
    assert err.value.line == 2 and err.value.path == str(path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="no prompts"):
        load_suite(_write(tmp_path, [""]))


def _small_suite():
    return [
        IfPrompt("p1", "lowercase", "Answer in lowercase.", ({"kind": "lowercase"},)),
        IfPrompt(
            "p2", "no_commas", "No commas, five words.", ({"kind": "no_commas"}, {"kind": "word_count", "relation": "at_most", "n": 5})
        ),
        IfPrompt("p3", "title", "Give a title.", ({"kind": "title"},)),
        IfPrompt("p4", "lowercase", "Lowercase again.", ({"kind": "lowercase"},)),
    ]


SMALL_RESPONSES = ["Sure! Here it is:\nall lower here", "one, two", "<<Ok>>\nbody", "fine text"]


def test_score_responses_exact_numbers():
    out = score_responses(_small_suite(), SMALL_RESPONSES, model="tiny").summary()
    assert out["strict_accuracy"] == 0.5 and out["loose_accuracy"] == 0.75 and out["n"] == 4 and out["model"] == "tiny"
    assert out["per_category"] == {
        "lowercase": {"strict_accuracy": 0.5, "loose_accuracy": 1.0, "n": 2},
        "no_commas": {"strict_accuracy": 0.0, "loose_accuracy": 0.0, "n": 1},
        "title": {"strict_accuracy": 1.0, "loose_accuracy": 1.0, "n": 1},
    }
    assert out["instruction_level"] == {"strict_accuracy": 0.6, "loose_accuracy": 0.8, "n_checks": 5}
    assert out["per_prompt"][1] == {
        "id": "p2",
        "category": "no_commas",
        "strict": False,
        "loose": False,
        "not_an_answer": None,
        "checks": [{"kind": "no_commas", "strict": False, "loose": False}, {"kind": "word_count", "strict": True, "loose": True}],
    }
    assert list(out) == [
        "strict_accuracy",
        "loose_accuracy",
        "per_category",
        "n",
        "not_an_answer",
        "instruction_level",
        "model",
        "per_prompt",
    ]


def test_score_responses_by_instruction_and_missing():
    prompts = _small_suite()
    by_instruction = {p.instruction: r for p, r in zip(prompts, SMALL_RESPONSES, strict=True)}
    assert score_responses(prompts, dict(reversed(by_instruction.items()))).to_json() == score_responses(prompts, SMALL_RESPONSES).to_json()
    del by_instruction["Give a title."], by_instruction["Lowercase again."]
    with pytest.raises(ValueError, match=r"2 of 4 prompts have no response.*'Give a title\.'.*'Lowercase again\.'"):
        score_responses(prompts, by_instruction)
    with pytest.raises(ValueError, match="3 responses for 4 prompts"):
        score_responses(prompts, SMALL_RESPONSES[:3])
    with pytest.raises(ValueError, match="p4"):
        score_responses(prompts, SMALL_RESPONSES[:3] + [None])


def test_result_saves_json_parquet_png(tmp_path):
    import pandas as pd

    result = score_responses(_small_suite(), SMALL_RESPONSES, model="tiny")
    paths = result.save(tmp_path)
    assert sorted(p.name for p in paths) == ["ifsuite.json", "ifsuite.parquet", "ifsuite.png"]
    saved = json.loads((tmp_path / "ifsuite.json").read_text())
    assert saved == result.to_json() and saved["analysis"] == "ifsuite" and saved["format"] == 1
    assert {"strict_accuracy", "loose_accuracy", "per_category", "instruction_level", "per_prompt"} <= set(saved["results"][0])
    assert type(result).from_json(saved).entries == result.entries
    frame = pd.read_parquet(tmp_path / "ifsuite.parquet")
    assert list(frame.columns) == ["model", "category", "strict_accuracy", "loose_accuracy", "n"]
    assert frame["category"].tolist() == ["lowercase", "no_commas", "title", "overall"]
    assert (tmp_path / "ifsuite.png").read_bytes()[:4] == b"\x89PNG"


def test_merged_results_keep_every_model(tmp_path):
    prompts = _small_suite()
    merged = score_responses(prompts, SMALL_RESPONSES, model="a").merge(score_responses(prompts[:2], SMALL_RESPONSES[:2], model="b"))
    assert isinstance(merged, IfSuiteResult)
    assert [e["model"] for e in merged.to_json()["results"]] == ["a", "b"]
    frame = merged.to_frame()
    assert len(frame) == 4 + 3 and set(frame["model"]) == {"a", "b"}
    merged.save(tmp_path)
    assert (tmp_path / "ifsuite.png").stat().st_size > 0


def test_echoing_the_prompt_or_template_is_not_an_answer():
    """A base model that repeats the instruction (which contains its own keywords and no commas)
    or writes the next chat turn must not pass: measured on base Gemma-3-270M, it otherwise did."""
    from implicit_it.evaluation.ifsuite.suite import answer_problem

    ins = "Describe your favourite meal without using any commas."
    p = IfPrompt("e1", "no_commas", ins, ({"kind": "no_commas"},))
    k = IfPrompt(
        "e2",
        "keywords_required",
        "Write about a picnic. Include the words 'sandwiches' and 'sunscreen'.",
        ({"kind": "keywords_required", "words": ["sandwiches", "sunscreen"]},),
    )
    responses = [ins + "\n" + ins, "Write about a picnic. Include the words 'sandwiches' and 'sunscreen'.\n<|user|>\n"]
    out = score_responses([p, k], responses).summary()
    assert out["strict_accuracy"] == 0 and out["loose_accuracy"] == 0
    assert out["not_an_answer"] == {"empty": 0, "template_echo": 1, "instruction_echo": 1}
    assert answer_problem("", ins) == "empty" and answer_problem("Pasta with basil and garlic.", ins) is None
    # loose forgives a restated task on the first line, as IFEval forgives a chatty first line
    fine = score_responses([p], [ins + "\nPasta with basil and garlic is my favourite."]).summary()
    assert (fine["strict_accuracy"], fine["loose_accuracy"]) == (0, 1)


KEYWORDS_INS = "Write a short email inviting your team to a picnic on Friday. Include the words 'sandwiches' and 'sunscreen'."
TITLE_INS = "Write a poem about rain. Give it a title wrapped in double angular brackets, such as <<poem of joy>>."


@pytest.mark.parametrize(
    ("instruction", "check", "body"),
    [
        (KEYWORDS_INS, {"kind": "keywords_required", "words": ["sandwiches", "sunscreen"]}, "Hi team, we meet at noon by the lake."),
        (TITLE_INS, {"kind": "title"}, "Rain falls softly on the roof\nand the garden drinks it in."),
    ],
)
def test_loose_never_passes_on_the_echoed_instruction(instruction, check, body):
    """The echo on the first line holds the keywords / the example title; the body ignores the constraint.
    Every loose variant that still holds the echo is not an answer, so loose fails like strict."""
    from implicit_it.evaluation.ifsuite.suite import loose_answers

    prompt = IfPrompt("x", check["kind"], instruction, (check,))
    for response in (instruction + "\n" + body, instruction + "\n" + body + "\nThanks!", "**" + instruction + "**\n" + body):
        assert run_check_loosely(response, check)  # the ungated check alone would pass on the full response
        out = score_responses([prompt], [response]).summary()
        assert (out["strict_accuracy"], out["loose_accuracy"]) == (0, 0), response
        assert all(instruction.lower() not in v.lower() for v in loose_answers(response, instruction))
    # a genuine answer after the same restated first line still passes loose (IFEval forgives a chatty first line)
    genuine = {"keywords_required": "Hi team, bring sandwiches and sunscreen on Friday!", "title": "<<Rain>>\n" + body}[check["kind"]]
    out = score_responses([prompt], [instruction + "\n" + genuine]).summary()
    assert (out["strict_accuracy"], out["loose_accuracy"]) == (0, 1)
    assert score_responses([prompt], [genuine]).summary()["strict_accuracy"] == 1


def test_loose_rejects_a_variant_that_is_only_a_piece_of_a_multiline_echo():
    ins = "Describe the sea.\nDo not use any commas."
    prompt = IfPrompt("m", "no_commas", ins, ({"kind": "no_commas"},))
    # dropping the first and the last line leaves "Do not use any commas." (comma-free, but the echo itself)
    out = score_responses([prompt], [ins + "\nWaves, foam, salt."]).summary()
    assert out["loose_accuracy"] == 0
    assert score_responses([prompt], [ins + "\nWaves roll and foam."]).summary()["loose_accuracy"] == 1
