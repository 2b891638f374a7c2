"""Ranking pairs, the prefix-reusing forward, the logit lens, bootstrap CIs and linear probes.

Tiny random models of each architecture stand in for real ones: the numbers are meaningless
as accuracies, but every score must equal a plain batch-1 HF computation of the same thing.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from implicit_it.data import read_ranking_source
from implicit_it.errors import DataFormatError
from implicit_it.models import load_model
from implicit_it.probes import (
    OUTPUT,
    ActivationStore,
    LinearProbe,
    LogitLens,
    PairForward,
    RankingProbe,
    accuracy_with_ci,
    build_ranking_groups,
    cross_validated_accuracy,
    encode_groups,
    paper_scores,
    pool_batch,
    ranking_wins,
    score_groups,
    swap_pair_groups,
)


@pytest.fixture(scope="module")
def lima_source(shared_data):
    return read_ranking_source(shared_data / "lima" / "train.jsonl", limit=8)


# --------------------------------------------------------------------------- pairs


def test_paper_draws_are_reproduced_exactly(lima_source):
    groups = build_ranking_groups(lima_source, negatives=5, seed=0, exclude_self=False)
    random.seed(0)  # the paper's ratio_eval.py
    expected = [[random.randint(0, len(lima_source.pool) - 1) for _ in range(5)] for _ in lima_source.instructions]
    assert [[c.response_index for c in g.negatives] for g in groups] == expected
    assert all(g.candidates[0].is_real and g.candidates[0].response_index == lima_source.own_response[i] for i, g in enumerate(groups))


def test_exclude_self_never_draws_the_own_response(lima_source):
    groups = build_ranking_groups(lima_source, negatives=20, seed=3)
    assert all(c.response_index != lima_source.own_response[g.instruction_index] for g in groups for c in g.negatives)
    assert groups == build_ranking_groups(lima_source, negatives=20, seed=3)  # deterministic
    assert groups != build_ranking_groups(lima_source, negatives=20, seed=4)


def test_pool_holds_every_assistant_turn(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "id": "a",
            "messages": [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": " r1 "},
                {"role": "user", "content": "q1b"},
                {"role": "assistant", "content": "r1b"},
            ],
        },
        {"id": "b", "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "r2"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = read_ranking_source(path)
    assert src.pool == ("r1", "r1b", "r2") and src.own_response == (0, 2) and src.instructions == ("q1", "q2")


def test_alpaca_style_source_needs_outputs(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps([{"instruction": "i1", "output": "o1"}, {"instruction": "i2", "output": "o2"}]))
    assert read_ranking_source(good).pool == ("o1", "o2")
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{"instruction": "i1", "output": "o1"}, {"instruction": "i2"}]))
    with pytest.raises(DataFormatError, match=r"b\.json: record 1: .*'output'"):
        read_ranking_source(bad)


# --------------------------------------------------------------------------- statistics


def test_ties_are_losses_and_ci_brackets_accuracy():
    scores = np.array([[1.0, 0.5, 1.0], [0.0, 1.0, -1.0]])  # a tie in row 0
    wins = ranking_wins(scores)
    assert wins.tolist() == [[True, False], [False, True]]
    acc, (lo, hi) = accuracy_with_ci(wins, n_boot=500)
    assert acc == 0.5 and lo <= acc <= hi
    assert accuracy_with_ci(np.ones((10, 5), bool))[1] == (1.0, 1.0)


def test_cluster_bootstrap_is_wider_than_pairs_are_independent():
    rng = np.random.default_rng(0)
    easy = rng.random(200) < 0.5  # whole instructions win or lose all their pairs together
    wins = np.repeat(easy[:, None], 5, axis=1)
    _, (lo, hi) = accuracy_with_ci(wins)
    iid_halfwidth = 1.96 * np.sqrt(0.25 / wins.size)
    assert (hi - lo) / 2 > 1.8 * iid_halfwidth


# --------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def tiny_pairs(tiny_model_dir, lima_source):
    loaded = load_model(tiny_model_dir, device="cpu", use_process_cache=False)
    groups = build_ranking_groups(lima_source, negatives=3)
    # 160 tokens: prompts exceed gemma3's 8-token sliding window, and long responses are truncated
    return loaded, encode_groups(loaded.tokenizer, "tulu", lima_source, groups, max_length=160)


def test_fast_scores_equal_the_paper_loop(tiny_pairs):
    loaded, enc = tiny_pairs
    assert any(any(g.truncated) for g in enc) and len({len(g.prompt_ids) for g in enc}) > 1
    ref = paper_scores(loaded.model, enc)
    for budget in (300, 100_000):  # many small batches (heavy padding) and one big one
        fast = score_groups(PairForward(loaded, max_batch_tokens=budget), enc)
        assert np.abs(fast.mean() - ref.mean()).max() <= 1e-5
        assert np.abs(fast.totals[OUTPUT] - ref.totals[OUTPUT]).max() <= 1e-3
        assert (fast.n_tokens == ref.n_tokens).all()


def test_lens_scores_equal_hf_hidden_states(tiny_pairs):
    loaded, enc = tiny_pairs
    forward = PairForward(loaded, max_batch_tokens=400)
    top = forward.n_layers
    layered = score_groups(forward, enc, layers=list(range(top + 1)))
    output = score_groups(forward, enc)
    assert np.abs(layered.totals[top] - output.totals[OUTPUT]).max() <= 1e-4  # the last layer is the output
    lens = LogitLens(loaded.model)
    for gi, g in enumerate(enc[:3]):
        for ci, resp in enumerate(g.responses):
            ids = torch.tensor([list(g.prompt_ids) + list(resp)])
            with torch.no_grad():
                hs = loaded.model(ids, output_hidden_states=True).hidden_states  # HF: hs[L] is after the final norm
            start = len(g.prompt_ids) - 1
            positions = slice(start, start + len(resp))
            for layer in range(top + 1):
                want = lens.token_logprobs(hs[layer][0, positions], torch.tensor(resp), normed=layer == top).double().sum()
                assert abs(float(want) - layered.totals[layer][gi, ci]) <= 1e-4


def test_prompt_longer_than_max_length_skips_the_instruction(tiny_model_dir, lima_source):
    loaded = load_model(tiny_model_dir, device="cpu", use_process_cache=False)
    groups = build_ranking_groups(lima_source, negatives=1)
    shortest = min(len(loaded.tokenizer(i)["input_ids"]) for i in lima_source.instructions)
    enc = encode_groups(loaded.tokenizer, "tulu", lima_source, groups, max_length=shortest + 12)
    assert 0 < len(enc) < len(groups)


def test_ranking_probe_results_and_files(tiny_llama_dir, lima_source, tmp_path):
    loaded = load_model(tiny_llama_dir, device="cpu", use_process_cache=False)
    groups = build_ranking_groups(lima_source, negatives=2)
    run = RankingProbe(lima_source, groups, max_length=96, layers="all", n_boot=200).run(loaded, label="tiny")
    ranking = run.ranking()
    assert [e["score"] for e in ranking.entries] == ["mean_logprob", "total_logprob"]
    manual = (run.output.mean()[:, :1] > run.output.mean()[:, 1:]).mean()
    assert ranking.entries[0]["accuracy"] == pytest.approx(manual)
    lw = run.layerwise()
    assert [layer["layer"] for layer in lw.entries[0]["layers"]] == [0, 1, 2]
    assert lw.entries[0]["layers"][-1]["accuracy"] == pytest.approx(manual)
    paths = ranking.merge(ranking).save(tmp_path)
    assert {p.name for p in paths} == {"ranking.json", "ranking.parquet", "ranking.png"}
    assert len(json.loads((tmp_path / "ranking.json").read_text())["results"]) == 4
    frame = run.pairs_frame()
    assert len(frame) == 3 * len(run.encoded) and frame["is_real"].sum() == len(run.encoded)


# --------------------------------------------------------------------------- linear probes


def test_probe_finds_a_planted_direction_and_the_control_does_not():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    y = np.tile([1, 0], n // 2)
    groups = np.repeat(np.arange(n // 2), 2)
    x = rng.normal(size=(n, d))
    x[:, 3] += 2.5 * (2 * y - 1)
    assert cross_validated_accuracy(x, y, groups).mean() > 0.9
    assert abs(cross_validated_accuracy(x, rng.permutation(y), groups).mean() - 0.5) < 0.15


def test_pooled_activations_match_hf_hidden_states(tiny_llama_dir, lima_source, tmp_path):
    loaded = load_model(tiny_llama_dir, device="cpu", use_process_cache=False)
    groups = [g.__class__(g.instruction_index, g.candidates[:2]) for g in build_ranking_groups(lima_source, negatives=1)]
    enc = encode_groups(loaded.tokenizer, "tulu", lima_source, groups, max_length=96)
    store = ActivationStore(tmp_path, [0, 1])
    rows = []

    def consume(batch):
        for pool in ("mean", "last"):
            store.append(pool, np.stack([pool_batch(batch, layer)[pool].numpy() for layer in (0, 1)], axis=1))
        rows.extend(batch.rows)

    PairForward(loaded, max_batch_tokens=200).run(enc, consume, layers=[0, 1])
    assert len(list((tmp_path / "mean").glob("shard_*.npy"))) > 1  # several batches -> several shards
    by_group = {g.group_index: g for g in enc}
    for layer in (0, 1):  # HF hidden_states[0] = embeddings, [1] = residual after block 1 (before any final norm)
        mean, last = store.layer("mean", layer), store.layer("last", layer)
        assert mean.shape == (len(rows), loaded.model.config.hidden_size)
        for r, (gi, ci) in enumerate(rows[:4]):
            g = by_group[gi]
            ids = torch.tensor([list(g.prompt_ids) + list(g.responses[ci])])
            with torch.no_grad():
                hs = loaded.model(ids, output_hidden_states=True).hidden_states[layer][0]
            np.testing.assert_allclose(last[r], hs[-1].numpy(), atol=1e-5)
            np.testing.assert_allclose(mean[r], hs[len(g.prompt_ids) :].mean(0).numpy(), atol=1e-5)


def test_linear_probe_run(tiny_llama_dir, lima_source, tmp_path):
    loaded = load_model(tiny_llama_dir, device="cpu", use_process_cache=False)
    run = LinearProbe(lima_source, activation_dir=tmp_path / "act", max_length=400, folds=2).run(loaded, label="tiny")
    e = run.result.entries
    assert run.n_examples == 2 * e[0]["n_instructions"] and e[0]["n_instructions"] >= 4 and e[0]["n_instructions"] % 2 == 0
    assert [x["pool"] for x in e] == ["mean", "last"] and [layer["layer"] for layer in e[0]["layers"]] == [0, 1, 2]
    assert all(0 <= layer[k] <= 1 for x in e for layer in x["layers"] for k in ("accuracy", "control_accuracy"))
    frame = run.result.to_frame()
    assert len(frame) == 6 and {"accuracy", "std", "control_accuracy", "control_std"} <= set(frame.columns)


def test_swap_pairs_make_response_only_features_exactly_chance(tiny_llama_dir, tmp_path):
    """Embeddings of the response (layer 0) know nothing of the instruction: in the swap design
    each response is a match once and a mismatch once in the same CV block, so accuracy is 1/2."""
    path = tmp_path / "qa.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": str(i),
                    "messages": [
                        {"role": "user", "content": f"Question {i}: name a number."},
                        {"role": "assistant", "content": f"The number {i * 7}."},
                    ],
                }
            )
            + "\n"
            for i in range(20)
        )
    )
    source = read_ranking_source(path)
    groups, blocks = swap_pair_groups(source, seed=1)
    assert sorted(g.instruction_index for g in groups) == list(range(20)) and len(set(blocks)) == 10
    loaded = load_model(tiny_llama_dir, device="cpu", use_process_cache=False)
    run = LinearProbe(source, activation_dir=tmp_path / "act", layers="0", folds=5, seed=1).run(loaded)
    for entry in run.result.entries:  # mean over response tokens, and the last token (always EOS)
        assert entry["layers"][0]["accuracy"] == pytest.approx(0.5)
