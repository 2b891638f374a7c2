"""Judge agreement: loading a judged folder (every bad record named), the system- and item-level statistics computed by
hand on small folders, the fit verdict on a synthetic folder where the answer is known, the embedding cache, the
``iit eval judge-agreement`` command, and the loader on the real GPT-4-turbo judgments in ``../shared/data``."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.errors import DataFormatError
from implicit_it.evaluation.judge_agreement import (
    AgreementConfig,
    JudgeAgreement,
    JudgeAgreementResult,
    ResponseMetric,
    build_metrics,
    echoes_instruction,
    is_answer,
    load_judged,
)

runner = CliRunner()
REAL_JUDGED = Path(__file__).resolve().parents[3] / "../shared/data/alpaca_eval/judged"


def write_folder(root: Path, outputs: dict[str, list[str]], preferences: dict[str, list[float]], lc: dict[str, float], *, gz=True) -> Path:
    """A judged folder: eval_set.json beside it (as in ../shared/data/alpaca_eval), one file per system, leaderboard.csv."""
    n = len(next(iter(outputs.values())))
    instructions = [f"Instruction number {j}: explain topic {j} to a student." for j in range(n)]
    (root / "eval_set.json").write_text(
        json.dumps([{"instruction": i, "output": f"Reference answer about topic {j}."} for j, i in enumerate(instructions)])
    )
    folder = root / "judged"
    folder.mkdir()
    for system, outs in outputs.items():
        records = [
            {"index": j, "instruction": instructions[j], "output": o, "preference": p}
            for j, (o, p) in enumerate(zip(outs, preferences[system], strict=True))
        ]
        data = json.dumps(records).encode()
        if gz:
            (folder / f"{system}.json.gz").write_bytes(gzip.compress(data))
        else:
            (folder / f"{system}.json").write_bytes(data)
    with open(folder / "leaderboard.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "model",
                "n_judged",
                "n_missing",
                "win_rate_from_file",
                "win_rate_leaderboard",
                "length_controlled_winrate_leaderboard",
                "avg_length",
            ]
        )
        for system, outs in outputs.items():
            wr = 100 * float(np.mean(np.array(preferences[system]) - 1))
            w.writerow([system, n, 0, wr, wr, lc[system], float(np.mean([len(o) for o in outs]))])
    return folder


class LookupMetric(ResponseMetric):
    """A metric defined by a table (output text -> score): lets a test fix the metric's verdicts exactly."""

    name = "lookup"
    description = "test metric"

    def __init__(self, table: dict[str, float]):
        super().__init__(None)
        self.table = table

    def score(self, instructions, outputs, references):
        return np.array([self.table[o] for o in outputs])


def run(folder: Path, metrics, **config) -> JudgeAgreementResult:
    return JudgeAgreement(AgreementConfig(n_boot=200, **config)).run(load_judged(folder), metrics)


def entry(result: JudgeAgreementResult, name: str) -> dict:
    return next(e for e in result.entries if e["metric"] == name)


# ---- the statistics, by hand ----------------------------------------------------------------------------------------


def test_item_agreement_counts_decided_and_length_matched_pairs_by_hand(tmp_path):
    # 2 instructions, 3 systems. Instruction 0: prefs a 2.0, b 1.2, c 1.0 -> decided pairs (a,b) and (a,c); (b,c) differs by
    # 0.2 and is not decided. Instruction 1: a 1.0, b 1.9, c 1.6 -> decided (a,b), (a,c); not (b,c).
    outputs = {"a": ["x" * 100, "x" * 10], "b": ["y" * 95, "y" * 200], "c": ["z" * 300, "z" * 50]}
    prefs = {"a": [2.0, 1.0], "b": [1.2, 1.9], "c": [1.0, 1.6]}
    folder = write_folder(tmp_path, outputs, prefs, {"a": 30.0, "b": 20.0, "c": 10.0})
    result = run(folder, build_metrics(["length"]))
    length = entry(result, "length")
    # pick the longer: instr 0 (a,b): a longer (100 > 95), GPT-4 prefers a -> agree; (a,c): c longer, GPT-4 prefers a ->
    # disagree. instr 1 (a,b): b longer, b preferred -> agree; (a,c): c longer, c preferred -> agree. 3 of 4.
    assert length["items"]["all"]["pairs"] == 4
    assert length["items"]["all"]["agreement"] == pytest.approx(0.75)
    # length-matched (within 20% of the longer): only instr 0 (a,b) (100 vs 95)
    assert length["items"]["length_matched"]["pairs"] == 1
    assert length["items"]["length_matched"]["agreement"] == pytest.approx(1.0)
    # a metric tie counts half
    tie = LookupMetric({o: 1.0 for outs in outputs.values() for o in outs})
    assert entry(run(folder, [tie]), "lookup")["items"]["all"]["agreement"] == pytest.approx(0.5)


def test_system_level_spearman_follows_the_leaderboard_and_keeps_adversarial_apart(tmp_path):
    systems = ["s1", "s2", "s3", "s4", "NullModel"]
    outputs = {s: [f"{s} answer {j}" for j in range(4)] for s in systems}
    prefs = {s: [1.5] * 4 for s in systems}
    lc = {"s1": 10.0, "s2": 20.0, "s3": 30.0, "s4": 40.0, "NullModel": 90.0}
    folder = write_folder(tmp_path, outputs, prefs, lc)
    rank = {"s1": 1.0, "s2": 2.0, "s3": 3.0, "s4": 4.0, "NullModel": 0.0}
    aligned = LookupMetric({o: rank[s] for s, outs in outputs.items() for o in outs})
    e = entry(run(folder, [aligned]), "lookup")
    assert e["spearman"]["lc"] == pytest.approx(1.0)  # the 4 honest systems, in LC's order
    assert e["n_systems"] == 4
    assert e["adversarial"] == {"NullModel": {"rank": 5, "of": 5}}  # ranked last, as a sound metric should
    expected = spearmanr([1, 2, 3, 4, 0], [10, 20, 30, 40, 90]).statistic
    assert e["spearman"]["lc_with_adversarial"] == pytest.approx(expected)
    reversed_ = LookupMetric({o: -rank[s] for s, outs in outputs.items() for o in outs})
    assert entry(run(folder, [reversed_]), "lookup")["spearman"]["lc"] == pytest.approx(-1.0)


def synthetic_folder(tmp_path: Path, seed: int = 0) -> tuple[Path, dict[str, float]]:
    """12 systems × 60 instructions; GPT-4's preference follows each system's quality, lengths are noise."""
    rng = np.random.default_rng(seed)
    quality = {f"sys{k:02d}": float(q) for k, q in enumerate(np.linspace(-2, 2, 12))}
    outputs, prefs = {}, {}
    for s, q in quality.items():
        noise = rng.normal(0, 0.7, 60)
        prefs[s] = list(np.round(1 + 1 / (1 + np.exp(-(q + noise))), 6))
        outputs[s] = [f"{s}-{j}-" + "w" * int(rng.integers(20, 400)) for j in range(60)]
    lc = {s: 100 * float(np.mean(np.array(p) - 1)) for s, p in prefs.items()}
    return write_folder(tmp_path, outputs, prefs, lc), {o: p for s in outputs for o, p in zip(outputs[s], prefs[s], strict=True)}


def test_a_metric_that_reads_the_judge_is_fit_and_length_is_not(tmp_path):
    folder, oracle_table = synthetic_folder(tmp_path)
    metrics = build_metrics(["length"]) + [LookupMetric(oracle_table)]
    result = run(folder, metrics)
    oracle, length = entry(result, "lookup"), entry(result, "length")
    assert oracle["items"]["all"]["agreement"] == 1.0 and oracle["items"]["length_matched"]["agreement"] == 1.0
    assert oracle["spearman"]["lc"] > 0.95
    assert oracle["fit"] is True and oracle["not_fit_because"] == []
    assert length["fit"] is None  # baselines are not candidates
    assert abs(length["spearman"]["lc"]) < 0.7
    assert oracle["versus_baselines"]["length"]["ci"][0] > 0
    # a noise metric is not fit, and the table says why
    rng = np.random.default_rng(1)
    noise = LookupMetric({o: float(rng.normal()) for o in oracle_table})
    noise_entry = entry(run(folder, build_metrics(["length"]) + [noise]), "lookup")
    assert noise_entry["fit"] is False and noise_entry["not_fit_because"]
    table = run(folder, metrics).to_markdown()
    assert "| `lookup` |" in table and "**yes**" in table


def test_the_result_round_trips_and_the_same_seed_gives_the_same_numbers(tmp_path):
    folder, oracle_table = synthetic_folder(tmp_path)
    a = run(folder, build_metrics(["length"]) + [LookupMetric(oracle_table)])
    b = run(folder, build_metrics(["length"]) + [LookupMetric(oracle_table)])
    assert a.to_json() == b.to_json()
    paths = a.save(tmp_path / "out")
    assert {p.name for p in paths} == {"judge_agreement.json", "judge_agreement.parquet", "judge_agreement.png"}
    back = JudgeAgreementResult.read(tmp_path / "out" / "judge_agreement.json")
    assert back.headline() == a.headline()
    assert len(back.to_frame()) == 4 * 12  # the two length baselines always run, then the metric and its +lc


def test_length_control_removes_each_systems_length_term_exactly():
    from implicit_it.evaluation.judge_agreement import length_controlled

    rng = np.random.default_rng(0)
    ref = rng.integers(100, 1000, 50).astype(float)
    lengths = np.stack([ref + rng.normal(0, 300, 50) for _ in range(3)])
    x = np.tanh((lengths - ref) / np.std(lengths - ref))
    intercept, slope = np.array([0.2, 0.5, 0.7]), np.array([0.3, -0.1, 0.0])
    scores = intercept[:, None] + slope[:, None] * x
    adjusted = length_controlled(scores, lengths, ref)
    assert np.allclose(adjusted, intercept[:, None])  # no length term left: every output scores its system's intercept
    scores[1, 3] = np.nan  # a missing output stays missing and the fit skips it
    assert np.isnan(length_controlled(scores, lengths, ref)[1, 3])


def test_each_candidate_gets_a_length_controlled_twin_and_baselines_do_not(tmp_path):
    folder, oracle_table = synthetic_folder(tmp_path)
    judged = load_judged(folder)
    result = JudgeAgreement(AgreementConfig(n_boot=200)).run(judged, build_metrics(["length"]) + [LookupMetric(oracle_table)])
    assert [e["metric"] for e in result.entries] == ["length", "longer_than_reference", "lookup", "lookup+lc"]
    twin = entry(result, "lookup+lc")
    # the synthetic lengths are noise, so removing the length term keeps the oracle's verdicts
    assert twin["spearman"]["lc"] > 0.9 and twin["items"]["all"]["agreement"] > 0.9 and twin["fit"] is True
    no_lc = JudgeAgreement(AgreementConfig(n_boot=200, length_control=False)).run(judged, [LookupMetric(oracle_table)])
    assert [e["metric"] for e in no_lc.entries] == ["lookup"]


# ---- the answer check -----------------------------------------------------------------------------------------------


def test_answer_check_rejects_empty_template_and_echo():
    ins = "Write a short poem about the sea and the wind at night."
    assert is_answer(ins, "The waves are dark, the wind is cold.")
    assert not is_answer(ins, "   ")
    assert not is_answer(ins, "Sure.<|user|>\nAnother question")
    assert echoes_instruction(ins, "Write a short poem about the sea and the wind at night. Then")
    assert not is_answer(ins, "write a short poem about the sea and the wind, please")
    assert not echoes_instruction("Hi", "Hello there")


# ---- bad input: one error naming the file and the record ------------------------------------------------------------


@pytest.fixture()
def small_folder(tmp_path):
    outputs = {s: [f"{s} out {j}" for j in range(3)] for s in ("a", "b", "c")}
    prefs = {s: [1.0, 1.5, 2.0] for s in outputs}
    return write_folder(tmp_path, outputs, prefs, {"a": 1.0, "b": 2.0, "c": 3.0})


def rewrite(path: Path, edit) -> None:
    records = json.loads(gzip.decompress(path.read_bytes()))
    edit(records)
    path.write_bytes(gzip.compress(json.dumps(records).encode()))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r[1].update(preference=3.0), "record 1 (index 1): 'preference' must be a number in [1, 2]"),
        (lambda r: r[2].update(index=7), "record 2: 'index' must be an integer position"),
        (lambda r: r[0].update(instruction="something else"), "record 0 (index 0): its instruction differs"),
        (lambda r: r[1].update(index=0, instruction=r[0]["instruction"]), "record 1: index 0 appears twice"),
        (lambda r: r[0].update(output=None), "record 0 (index 0): 'output' must be a string"),
    ],
)
def test_a_bad_record_is_named_with_its_file(small_folder, edit, words):
    rewrite(small_folder / "b.json.gz", edit)
    with pytest.raises(DataFormatError) as err:
        load_judged(small_folder)
    assert "b.json.gz" in str(err.value) and words in str(err.value)


def test_missing_leaderboard_row_and_eval_set_are_named(small_folder, tmp_path):
    board = (small_folder / "leaderboard.csv").read_text().splitlines()
    (small_folder / "leaderboard.csv").write_text("\n".join(line for line in board if not line.startswith("c,")) + "\n")
    with pytest.raises(DataFormatError, match=r"leaderboard.csv: no row for system\(s\) c"):
        load_judged(small_folder)
    (tmp_path / "eval_set.json").unlink()
    with pytest.raises(DataFormatError, match="no eval_set.json in it or beside it"):
        load_judged(small_folder)


def test_plain_json_files_and_a_prefix_of_the_instructions(tmp_path):
    outputs = {s: [f"{s} out {j}" for j in range(5)] for s in ("a", "b", "c")}
    folder = write_folder(tmp_path, outputs, {s: [1.2] * 5 for s in outputs}, {"a": 1.0, "b": 2.0, "c": 3.0}, gz=False)
    judged = load_judged(folder, instructions=2)
    assert judged.systems == ["a", "b", "c"] and len(judged.instructions) == 2 and judged.preference.shape == (3, 2)


def test_unknown_metric_is_one_error():
    with pytest.raises(ValueError, match="unknown metric.*'bleu'.*known: length"):
        build_metrics(["bleu"])


# ---- the embedding metrics, the cache and the command (real MiniLM) ---------------------------------------------------


def test_embedding_cache_reads_back_what_it_wrote(tmp_path, monkeypatch):
    from implicit_it.embedding import Embedder, embed_unique

    emb = Embedder()
    texts = ["a cat sat on the mat", "the stock market fell", "a cat sat on the mat"]
    first = embed_unique(emb, texts, cache_dir=tmp_path)
    assert np.allclose(first[0], first[2]) and len(list(tmp_path.glob("*.npy"))) == 1
    monkeypatch.setattr(emb, "model", None)  # a second call must not need the encoder
    assert np.array_equal(embed_unique(emb, texts, cache_dir=tmp_path), first)
    assert first[0] @ first[1] < 0.5  # unrelated sentences


def test_bf16_embeddings_agree_with_fp32():
    from implicit_it.embedding import Embedder

    texts = ["How do I bake bread at home?", "Preheat the oven to 220 C, knead the dough, let it rise for an hour."]
    a, b = Embedder(dtype="float32")(texts), Embedder(dtype="bfloat16")(texts)
    assert np.min(np.sum(a * b, axis=1)) > 0.999


def test_cli_judge_agreement_writes_table_json_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("IIT_CACHE_DIR", str(tmp_path / "cache"))
    refs_like = {
        "good": ["Reference answer about topic {j}, explained simply."] * 4,
        "okay": ["Some words on topic {j}."] * 4,
        "bad": ["Bananas are yellow and grow in bunches."] * 4,
    }
    outputs = {s: [o.format(j=j) for j, o in enumerate(outs)] for s, outs in refs_like.items()}
    prefs = {"good": [2.0] * 4, "okay": [1.5] * 4, "bad": [1.0] * 4}
    folder = write_folder(tmp_path, outputs, prefs, {"good": 50.0, "okay": 20.0, "bad": 5.0})
    out = tmp_path / "ja"
    res = runner.invoke(
        app,
        ["eval", "judge-agreement", "--judged", str(folder), "--metric", "reference_similarity", "--out", str(out), "--bootstrap", "200"],
    )
    assert res.exit_code == 0, res.output
    assert "| `reference_similarity` |" in res.output
    got = json.loads((out / "judge_agreement.json").read_text())
    sim = next(e for e in got["results"] if e["metric"] == "reference_similarity")
    assert sim["spearman"]["lc"] == pytest.approx(1.0)  # closest to the reference = judged best
    assert sim["items"]["all"]["agreement"] == 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["embedder"] == "all-minilm-l6-v2" and manifest["config"]["metrics"][-1] == "reference_similarity"
    assert "Judge-free metrics" in (out / "judge_agreement.md").read_text()
    assert list((tmp_path / "cache" / "embeddings").glob("*.npy"))
    bad = runner.invoke(app, ["eval", "judge-agreement", "--judged", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "not a directory of judged outputs" in bad.output


# ---- the real judgments (../shared/data) ----------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_JUDGED.is_dir(), reason="needs ../shared/data/alpaca_eval/judged")
def test_real_judged_folder_aligns_with_its_leaderboard():
    judged = load_judged(REAL_JUDGED)
    assert len(judged.systems) == 45 and len(judged.instructions) == 805
    # the preferences read back give the leaderboard's win rates (SOURCE.md: within 0.05 points)
    wr = 100 * np.nanmean(judged.preference - 1, axis=1)
    assert np.max(np.abs(wr - judged.column("win_rate"))) < 0.05
    result = JudgeAgreement(AgreementConfig(n_boot=200)).run(judged, build_metrics(["length"]))
    length = entry(result, "length")
    assert length["spearman"]["avg_length"] > 0.99  # the mean characters per system are the leaderboard's avg_length
    assert length["items"]["all"]["pairs"] > 100_000


# ---- a metric as AlpacaEval's judge ---------------------------------------------------------------------------------


def test_metric_judge_prefers_the_output_closer_to_the_gold_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("IIT_CACHE_DIR", str(tmp_path))
    from implicit_it.evaluation import ModelOutput, parse_judge
    from implicit_it.evaluation.alpaca import annotate
    from implicit_it.evaluation.judges import JudgeUnavailable

    gold = {"How do I boil an egg?": "Put the egg in boiling water for eight minutes, then cool it in cold water."}
    ins = next(iter(gold))
    near = ModelOutput(ins, "Boil the egg in water for about eight minutes and cool it.", "a", "")
    far = ModelOutput(ins, "The French revolution began in 1789.", "b", "")
    judge = parse_judge("metric:reference_similarity")
    judge.preflight()
    frame = annotate([(far, near), (near, far), (near, near)], judge, "unused", generator="model", cache_path="unused", gold=gold)
    assert list(frame["preference"]) == [2.0, 1.0, 1.5]
    assert frame["score_2"][0] > frame["score_1"][0]
    assert judge.name == "metric:reference_similarity" and judge.annotator_name == "iit_metric_reference_similarity"
    with pytest.raises(ValueError, match="needs gold answers"):
        annotate([(far, near)], judge, "unused", generator="model", cache_path="unused", gold=None)
    with pytest.raises(ValueError, match="1 instruction\\(s\\) have no gold answer"):
        annotate([(far, near)], judge, "unused", generator="model", cache_path="unused", gold={"other": "x"})
    for bad in ("metric:bleu", "metric:length"):  # unknown, or a baseline (not a candidate judge)
        with pytest.raises(JudgeUnavailable, match="no such metric; choose one of reference_similarity"):
            parse_judge(bad).preflight()


def test_cli_alpaca_with_a_metric_judge_scores_against_the_eval_sets_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("IIT_CACHE_DIR", str(tmp_path / "cache"))
    eval_set = [
        {"instruction": "Name a primary colour.", "output": "Red is a primary colour."},
        {"instruction": "What is 2 + 2?", "output": "2 + 2 equals 4."},
        {"instruction": "Say hello in French.", "output": "Bonjour!"},
    ]
    model = [
        {"instruction": "Name a primary colour.", "output": "Red.", "generator": "m"},
        {"instruction": "What is 2 + 2?", "output": "It equals 4.", "generator": "m"},
        {"instruction": "Say hello in French.", "output": "I like trains.", "generator": "m"},
    ]
    reference = [
        {"instruction": "Name a primary colour.", "output": "Bananas are long.", "generator": "r"},
        {"instruction": "What is 2 + 2?", "output": "Cats sleep a lot.", "generator": "r"},
        {"instruction": "Say hello in French.", "output": "Bonjour, hello in French.", "generator": "r"},
    ]
    for name, data in (("eval_set", eval_set), ("model", model), ("reference", reference)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    args = ["eval", "alpaca", "--outputs", str(tmp_path / "model.json"), "--reference", str(tmp_path / "reference.json")]
    res = runner.invoke(
        app, [*args, "--judge", "metric:reference_similarity", "--eval-set", str(tmp_path / "eval_set.json"), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "alpaca_eval.json").read_text())["results"][0]
    assert result["n"] == 3 and result["n_wins"] == 2 and result["n_wins_base"] == 1
    assert result["judge"] == "metric:reference_similarity"
    no_gold = runner.invoke(app, [*args, "--judge", "metric:reference_similarity", "--out", str(tmp_path / "o2")])
    assert no_gold.exit_code != 0 and "needs gold answers" in no_gold.output


def test_the_published_page_quotes_only_numbers_of_its_generated_table():
    """docs/results/judge-agreement/README.md cites numbers; each interval it quotes must be in the table the command wrote."""
    import re

    folder = Path(__file__).resolve().parents[3] / "docs" / "results" / "judge-agreement"
    page, table = (folder / "README.md").read_text(), (folder / "judge_agreement.md").read_text()
    quoted = re.findall(r"[+−-]?\d+\.\d+%? \[[+−-]?\d+\.\d+, [+−-]?\d+\.\d+\]", page)
    assert len(quoted) >= 5
    for q in quoted:
        assert q.replace("−", "-") in table, q
    for share in re.findall(r"\d+\.\d+%", page):
        assert share in table, share
