"""Evaluation: AlpacaEval metrics through alpaca_eval (real judge annotations), judges, LC data,
behaviour metrics, output files, the similarity analysis and the ``iit eval`` commands."""

from __future__ import annotations

import csv
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.errors import DataFormatError
from implicit_it.evaluation import (
    JudgeUnavailable,
    alpaca_metrics,
    annotate,
    behaviour_metrics,
    distinct_ngram_ratio,
    find_lc_data,
    pair_with_reference,
    parse_judge,
    read_model_outputs,
)
from implicit_it.evaluation.alpaca import LCData

runner = CliRunner()
VICUNA = "vicuna-7b-v1.5"


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def alpaca_dir(shared_data) -> Path:
    return shared_data / "alpaca_eval"


@pytest.fixture(scope="module")
def vicuna_annotations(alpaca_dir) -> list[dict]:
    return json.loads((alpaca_dir / "annotations_vicuna-7b-v1.5.json").read_text())


@pytest.fixture(scope="module")
def eval_instructions(alpaca_dir) -> list[str]:
    return [r["instruction"] for r in json.loads((alpaca_dir / "eval_set.json").read_text())]


def _leaderboard_row(alpaca_dir: Path, model: str) -> dict:
    with open(alpaca_dir / "leaderboard_weighted_gpt4_turbo.csv") as fh:
        return next(r for r in csv.DictReader(fh) if r[""] == model)


# ---- AlpacaEval metrics on real GPT-4-turbo annotations ------------------------------------------
def test_leaderboard_win_rate_and_standard_error_reproduced(alpaca_dir, vicuna_annotations, eval_instructions):
    row = _leaderboard_row(alpaca_dir, VICUNA)
    m = alpaca_metrics(vicuna_annotations, judge="weighted_alpaca_eval_gpt4_turbo", lc=find_lc_data(None), eval_set=eval_instructions)
    assert abs(m["win_rate"] - float(row["win_rate"])) < 0.1
    assert abs(m["standard_error"] - float(row["standard_error"])) < 0.1
    assert m["n"] == int(row["n_total"]) == 805
    assert (m["n_wins"], m["n_wins_base"], m["n_draws"]) == (int(row["n_wins"]), int(row["n_wins_base"]), int(row["n_draws"]))
    # offline and no --lc-data: LC is reported as unavailable, never computed some other way
    assert m["lc_win_rate"] is None and m["lc_standard_error"] is None
    assert "unavailable" in m["lc_note"] and "df_gamed.csv" in m["lc_note"]


def test_cli_scores_stored_annotations_offline(tmp_path, alpaca_dir):
    out = tmp_path / "ae"
    res = runner.invoke(
        app,
        [
            "eval",
            "alpaca",
            "--annotations",
            str(alpaca_dir / "annotations_vicuna-7b-v1.5.json"),
            "--reference",
            str(alpaca_dir / "eval_set.json"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((out / "alpaca_eval.json").read_text())["results"][0]
    row = _leaderboard_row(alpaca_dir, VICUNA)
    assert abs(got["win_rate"] - float(row["win_rate"])) < 0.1 and abs(got["standard_error"] - float(row["standard_error"])) < 0.1
    assert got["lc_win_rate"] is None and got["n"] == 805 and got["judge"] == "weighted_alpaca_eval_gpt4_turbo"
    assert {"win_rate", "standard_error", "lc_win_rate", "n", "judge"} <= set(got)
    assert (out / "alpaca_eval.png").stat().st_size > 0 and len(json.loads((out / "annotations.json").read_text())) == 805
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["metric_functions"][0] == "alpaca_eval.metrics.get_winrate" and man["data"]


def _synthetic_df_gamed(path: Path, n: int = 805, seed: int = 0) -> Path:
    """A stand-in for alpaca_eval's df_gamed.csv, with its columns, to test the plumbing only
    (the real file is on the hub). Difficulty rises with the instruction's position."""
    rng = np.random.default_rng(seed)
    rows = [
        dict(
            model=m,
            index=i,
            preference=float(rng.uniform()),
            std_delta_len=float(rng.normal()),
            instruction_difficulty=(i / n) * 4 - 2,
            not_gamed_baseline=False,
        )
        for m in ("gamed_long", "gamed_short")
        for i in range(n)
    ]
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path / "df_gamed.csv", index=False)
    return path


def test_lc_from_local_dir_uses_each_instructions_true_position(tmp_path, vicuna_annotations, eval_instructions):
    from alpaca_eval.metrics import get_length_controlled_winrate

    from implicit_it.evaluation.alpaca import _alpaca_eval_reads, annotations_frame

    lc = find_lc_data(_synthetic_df_gamed(tmp_path / "lc"))
    assert lc.available
    import sklearn

    full = alpaca_metrics(vicuna_annotations, judge="j", lc=lc, eval_set=eval_instructions)
    assert not sklearn.get_config()["enable_metadata_routing"]  # alpaca_eval's global switch does not leak
    assert full["lc_scope"] == "full" and full["lc_win_rate"] is not None and full["lc_note"] is None

    subset = vicuna_annotations[600:]  # positions 600..804: the hardest under the synthetic difficulty
    got = alpaca_metrics(subset, judge="j", lc=lc, eval_set=eval_instructions)
    assert got["lc_scope"] == "subset" and "not comparable" in got["lc_note"] and got["n"] == 205
    frame = annotations_frame(subset)
    with _alpaca_eval_reads(lc), sklearn.config_context():
        naive = get_length_controlled_winrate(frame.copy(), save_weights_dir=None, is_add_glm_preference_inplace=False)
        placed = frame.copy()
        placed.index = range(600, 805)
        right = get_length_controlled_winrate(placed, save_weights_dir=None, is_add_glm_preference_inplace=False)
    assert got["lc_win_rate"] == pytest.approx(right["length_controlled_winrate"])
    assert abs(naive["length_controlled_winrate"] - right["length_controlled_winrate"]) > 1e-6  # the index matters


def test_lc_unavailable_outside_alpacaeval_set_and_without_df_gamed(tmp_path, vicuna_annotations, eval_instructions):
    lc = find_lc_data(_synthetic_df_gamed(tmp_path / "lc"))
    other = [dict(a, instruction="A new instruction " + str(i)) for i, a in enumerate(vicuna_annotations[:50])]
    m = alpaca_metrics(other, judge="j", lc=lc, eval_set=eval_instructions)
    assert m["lc_win_rate"] is None and "not in AlpacaEval's instruction set" in m["lc_note"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not find_lc_data(empty).available and "no df_gamed.csv" in find_lc_data(empty).reason
    with pytest.raises(DataFormatError, match="not a directory"):
        find_lc_data(tmp_path / "missing")


# ---- judges --------------------------------------------------------------------------------------
def _write_outputs(path: Path, pairs: list[tuple[str, str]], generator: str) -> Path:
    path.write_text(json.dumps([{"instruction": i, "output": o, "generator": generator, "dataset": "t"} for i, o in pairs]))
    return path


def _toy_pairs(tmp_path: Path) -> tuple[Path, Path]:
    ins = ["Name a colour.", "Say hello.", "Count to three.", "Give a fruit.", "Name a planet.", "Pick a number."]
    ref = _write_outputs(tmp_path / "ref.json", [(i, "ok") for i in ins], "reference")
    model = _write_outputs(tmp_path / "model.json", [(i, f"A much longer answer to: {i} With detail.") for i in ins], "toy")
    return model, ref


def test_parse_judge_and_preflight_errors(monkeypatch, tmp_path):
    assert parse_judge("gpt4_turbo").name == "weighted_alpaca_eval_gpt4_turbo"
    assert parse_judge("http://localhost:9/v1", "m").kind == "openai_compatible"
    assert parse_judge("local:gemma-3-270m").kind == "local"
    with pytest.raises(ValueError, match="--judge"):
        parse_judge("claude")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    with pytest.raises(JudgeUnavailable, match="OPENAI_API_KEY"):
        parse_judge("gpt4_turbo").preflight()
    with pytest.raises(JudgeUnavailable, match="not reachable"):
        parse_judge("http://127.0.0.1:9/v1", "m").preflight()  # nothing listens on port 9
    with pytest.raises(JudgeUnavailable, match="local judge"):
        parse_judge(f"local:{tmp_path / 'no-model'}").preflight()


def test_cli_unusable_judge_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    model, ref = _toy_pairs(tmp_path)
    out = tmp_path / "ae"
    res = runner.invoke(
        app, ["eval", "alpaca", "--outputs", str(model), "--reference", str(ref), "--judge", "gpt4_turbo", "--out", str(out)]
    )
    assert res.exit_code == 2 and "OPENAI_API_KEY" in res.output
    assert not out.exists()
    res = runner.invoke(app, ["eval", "alpaca", "--outputs", str(model), "--reference", str(ref), "--out", str(out)])
    assert res.exit_code == 2 and "--judge" in res.output  # no judge is chosen for you: a judge can cost money
    assert not any(out.iterdir()) if out.exists() else True


def _long_context_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny model with a context long enough for alpaca_eval's ~700-token judge prompt (RoPE)."""
    import shutil

    shutil.copytree(model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["max_position_embeddings"] = 4096
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_local_judge_runs_alpaca_eval_and_caches(tmp_path, tiny_llama_dir, monkeypatch):
    from implicit_it.evaluation import judges

    model, ref = _toy_pairs(tmp_path)
    judge = parse_judge(f"local:{_long_context_copy(tiny_llama_dir, tmp_path / 'judge-model')}")
    judge.preflight()
    calls = []

    def counting(prompts, **kw):
        calls.append(len(prompts))
        return judges.local_logprob_completions(prompts, **kw)

    judge.fn_completions = counting
    pairs = pair_with_reference(read_model_outputs(model), read_model_outputs(ref))
    frame = annotate(pairs, judge, tmp_path / "judge", generator="toy", cache_path=tmp_path / "cache.json")
    assert sum(calls) == 6 and len(frame) == 6
    prefs = frame["preference"].astype(float)
    assert prefs.notna().all() and ((prefs >= 1) & (prefs <= 2)).all()  # weighted preference from p(m), p(M)
    assert (frame["annotator"] == judge.annotator_name).all()
    assert (tmp_path / "judge" / "configs.yaml").is_file() and "{output_2}" in (tmp_path / "judge" / "prompt.txt").read_text()
    again = annotate(pairs, judge, tmp_path / "judge", generator="toy", cache_path=tmp_path / "cache.json")
    assert sum(calls) == 6  # all cached: no judge call
    assert np.allclose(again["preference"].astype(float), prefs)
    m = alpaca_metrics(frame, judge=judge.name, lc=LCData({}, "none"), eval_set=None)
    assert 0 <= m["win_rate"] <= 100 and m["n"] == 6


def test_local_judge_prompt_beyond_context_is_a_missing_preference(tiny_llama_dir):
    from implicit_it.evaluation import judges

    done = judges.local_logprob_completions(["word " * 2000, "short"], model_name=str(tiny_llama_dir))["completions_all"]
    assert done[0]["logprobs"]["content"][0]["top_logprobs"] == []  # alpaca_eval's parser records NaN
    tokens = {e["token"] for e in done[1]["logprobs"]["content"][0]["top_logprobs"]}
    assert {"m", "M"} <= tokens  # the answer tokens are always scored, even outside the top 5


class _FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that prefers the longer output (a stand-in for a vLLM server)."""

    requests: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send({"object": "list", "data": [{"id": "judge-7b", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(self.path)
        text = body["messages"][-1]["content"]
        first, second = re.findall(r'"output": """(.*?)"""', text, flags=re.S)[-2:]  # outputs shown as m, then M
        best, other = ("m", "M") if len(first) > len(second) else ("M", "m")
        top = [
            {"token": best, "logprob": -0.05, "bytes": list(best.encode())},
            {"token": other, "logprob": -3.0, "bytes": list(other.encode())},
        ]
        self._send(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "message": {"role": "assistant", "content": best},
                        "logprobs": {"content": [dict(top[0], top_logprobs=top)]},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }
        )


def test_openai_compatible_judge_by_url_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEYS", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        model, ref = _toy_pairs(tmp_path)
        out = tmp_path / "ae"
        args = ["eval", "alpaca", "--outputs", str(model), "--reference", str(ref), "--judge", url, "--out", str(out)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        got = json.loads((out / "alpaca_eval.json").read_text())["results"][0]
        assert got["n"] == 6 and got["win_rate"] > 90  # the longer (model) output is preferred every time
        assert got["judge"] == f"openai_compatible:judge-7b@{url}" and got["lc_win_rate"] is None
        n_requests = len(_FakeOpenAI.requests)
        assert n_requests == 6
        res = runner.invoke(app, args)  # re-run: every comparison comes from the cache
        assert res.exit_code == 0, res.output
        assert len(_FakeOpenAI.requests) == n_requests
    finally:
        server.shutdown()


# ---- outputs and behaviour -----------------------------------------------------------------------
def test_read_model_outputs_errors_and_eos_flags(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b"}]))
    with pytest.raises(DataFormatError, match=r"bad.json: record 1: field 'output'"):
        read_model_outputs(bad)
    good = tmp_path / "o.json"
    good.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b", "output": "y"}]))
    assert [o.ended_with_eos for o in read_model_outputs(good)] == [None, None]
    from implicit_it.manifest import write_manifest

    flags = {"results": {"per_record": [{"ended_with_eos": True}, {"ended_with_eos": False}]}}
    (tmp_path / "o.manifest.json").write_text(json.dumps(flags))  # no output_sha256: not known to describe this file
    assert [o.ended_with_eos for o in read_model_outputs(good)] == [None, None]
    write_manifest(good, flags)  # what `iit generate` writes: the sidecar records the outputs' sha256
    assert [o.ended_with_eos for o in read_model_outputs(good)] == [True, False]
    with pytest.raises(DataFormatError, match="no reference output"):
        pair_with_reference(read_model_outputs(good), read_model_outputs(good)[:1], outputs_path=good)


def test_behaviour_metrics_on_hand_made_outputs():
    assert distinct_ngram_ratio(["a", "b", "a", "b", "a", "b"], 2) == pytest.approx(2 / 5)
    assert distinct_ngram_ratio(["a"], 2) is None
    outs = ["a b a b a b", "One clear answer.", "Sure<|user|>\nnext question", ""]
    m = behaviour_metrics(outs, [False, True, True, False])
    assert m["n"] == 4 and m["eos_fraction"] == 0.5
    assert m["template_echo_rate"] == 0.25 and m["empty_rate"] == 0.25
    assert m["repetition_2gram"] > 0.2 and m["mean_length_words"] == pytest.approx((6 + 3 + 3 + 0) / 4)
    assert behaviour_metrics(outs)["eos_fraction"] is None  # unknown, not guessed
    with pytest.raises(ValueError):
        behaviour_metrics([])


# ---- the IF suite and similarity through the CLI -------------------------------------------------
def test_cli_ifsuite_generates_then_rescoring_outputs_agrees(tmp_path, tiny_llama_dir):
    out = tmp_path / "ifs"
    res = runner.invoke(
        app,
        ["eval", "ifsuite", "--model", str(tiny_llama_dir), "--ifsuite-prompts", "13", "--max-new-tokens", "6", "--out", str(out), "-q"],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((out / "ifsuite.json").read_text())["results"][0]
    assert got["n"] == 13 and len(got["per_category"]) == 13 and {"strict_accuracy", "loose_accuracy"} <= set(got)
    assert 0 <= got["strict_accuracy"] <= got["loose_accuracy"] <= 1
    beh = json.loads((out / "behaviour.json").read_text())
    assert beh["n"] == 13 and beh["eos_fraction"] is not None
    again = tmp_path / "again"
    res = runner.invoke(app, ["eval", "ifsuite", "--outputs", str(out / "outputs.json"), "--ifsuite-prompts", "13", "--out", str(again)])
    assert res.exit_code == 0, res.output
    got2 = json.loads((again / "ifsuite.json").read_text())["results"][0]
    assert (got2["strict_accuracy"], got2["loose_accuracy"], got2["per_category"]) == (
        got["strict_accuracy"],
        got["loose_accuracy"],
        got["per_category"],
    )
    assert json.loads((again / "behaviour.json").read_text())["eos_fraction"] == beh["eos_fraction"]
    res = runner.invoke(app, ["eval", "ifsuite", "--outputs", str(out / "outputs.json"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no response" in res.output.lower()  # outputs cover 13 of the 136 prompts


def test_similarity_finds_domain_pull(tmp_path):
    """Real all-MiniLM-L6-v2 embeddings: responses to math-like instructions written in the math
    domain's style, general ones in a general style, must give a positive trend."""

    def chat(rows, name):
        p = tmp_path / name
        p.write_text(
            "".join(
                json.dumps(
                    {"dataset": "t", "id": f"{name}{i}", "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
                )
                + "\n"
                for i, (u, a) in enumerate(rows)
            )
        )
        return p

    domain = chat(
        [
            (
                f"Tom has {k} apples and buys {k + 2} more. How many apples does he have?",
                f"Tom has {k} + {k + 2} = {2 * k + 2} apples.\n#### {2 * k + 2}",
            )
            for k in range(1, 9)
        ],
        "gsm.jsonl",
    )
    general = chat(
        [
            ("Write a short note to a friend.", "Dear friend, I hope you are well and enjoying the spring."),
            ("Describe a forest.", "The forest is quiet, green and full of birdsong at dawn."),
            ("Give advice on sleep.", "Keep a regular schedule and avoid screens before bed."),
            ("What is jazz?", "Jazz is a music genre born in New Orleans, built on improvisation."),
        ],
        "lima.jsonl",
    )
    outputs = [
        ("Sara has 3 pens and gets 4 more. How many pens?", "Sara has 3 + 4 = 7 pens.\n#### 7"),
        ("A shop sells 5 cakes then 6 more. How many cakes were sold?", "5 + 6 = 11 cakes.\n#### 11"),
        ("Describe a beach.", "The beach is calm, with soft sand and gentle waves at sunset."),
        ("Write a note to a neighbour.", "Dear neighbour, thank you for watering my plants last week."),
        ("What is opera?", "Opera is a theatrical art form where singers perform a drama with music."),
    ]
    out_file = _write_outputs(tmp_path / "outs.json", outputs, "toy-gsm")
    res = runner.invoke(
        app,
        [
            "eval",
            "similarity",
            "--outputs",
            str(out_file),
            "--domain",
            str(domain),
            "--general",
            str(general),
            "--out",
            str(tmp_path / "sim"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "sim" / "similarity.json").read_text())["results"][0]
    assert got["n"] == 5 and got["trend"]["slope"] > 0 and got["trend"]["pearson_r"] > 0.8
    pts = got["points"]
    assert pts[0]["response_similarity_difference"] > 0 > pts[2]["response_similarity_difference"]
    assert got["most_domain_like_instructions"][0] in {outputs[0][0], outputs[1][0]}
    assert (tmp_path / "sim" / "similarity.png").stat().st_size > 0
