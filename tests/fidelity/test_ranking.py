"""implicit-it's ranking (draws, scores, accuracy) equals the port of the paper's ratio_eval.py + plot_ratios.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from implicit_it.data import read_ranking_source
from implicit_it.models import load_model
from implicit_it.probes import OUTPUT, PairForward, build_ranking_groups, encode_groups, paper_scores, score_groups
from implicit_it.probes.config import RunRankConfig
from implicit_it.probes.ranking import ranking_wins
from implicit_it.probes.stats import accuracy_with_ci
from tests.conftest import save_tiny_model
from tests.fidelity import paper_ranking

N = 12  # pool of 12: 60 draws include several self-draws


@pytest.fixture(scope="module")
def setup(bytelevel_tokenizer, shared_data, tmp_path_factory):
    source = read_ranking_source(shared_data / "lima" / "val_reference_gpt35.json", limit=N)
    examples = [
        {"messages": [{"role": "user", "content": ins}, {"role": "assistant", "content": source.pool[own]}]}
        for ins, own in zip(source.instructions, source.own_response, strict=True)
    ]
    loaded = load_model(save_tiny_model("llama", bytelevel_tokenizer, tmp_path_factory.mktemp("fid-rank")), device="cpu")
    return source, examples, loaded


def test_defaults_are_the_papers_length():
    assert RunRankConfig().max_length == 1024  # --max_seq_length 1024 in do_preference_scripts.sh


def test_draws_equal_the_paper(setup):
    source, examples, _ = setup
    data = paper_ranking.get_ratios([(ex["pair"], 0.0) for ex in paper_ranking.shuffleify(examples)])
    groups = build_ranking_groups(source, negatives=5, seed=0, self_draws="drop")
    ours = {g.instruction_index: [c.response_index for c in g.negatives] for g in groups}
    assert ours == {i: [j for j, _ in others] for i, (_, others) in data.items()}
    assert sum(len(v) for v in ours.values()) < 5 * N  # some self-draws were dropped, as in plot_ratios.py
    tie = build_ranking_groups(source, negatives=5, seed=0, self_draws="tie")
    assert [len(g.negatives) for g in tie] == [5] * N  # same stream, self-draws kept
    redraw = build_ranking_groups(source, negatives=5, seed=0)
    assert all(c.response_index != source.own_response[g.instruction_index] for g in redraw for c in g.negatives)


@pytest.mark.parametrize("max_length", [1024, 200])
def test_scores_and_accuracy_equal_the_paper(setup, max_length):
    source, examples, loaded = setup
    tok = loaded.tokenizer
    data = paper_ranking.get_ratios(paper_ranking.scores(loaded.model, tok, paper_ranking.shuffleify(examples), max_length))
    groups = build_ranking_groups(source, negatives=5, seed=0, self_draws="drop")
    encoded = encode_groups(tok, "tulu", source, groups, max_length=max_length)
    # an instruction whose prompt alone exceeds max_length is skipped (the paper's loss would be NaN)
    kept = {e.group_index for e in encoded}
    assert len(kept) >= N - 1
    if max_length < 1024:
        assert any(any(e.truncated) for e in encoded)
    for scored in (paper_scores(loaded.model, encoded), score_groups(PairForward(loaded), encoded)):
        prob = np.exp(scored.mean(OUTPUT))  # the paper keeps exp(-mean loss)
        for gi, e in enumerate(encoded):
            real, others = data[e.group_index]
            assert prob[gi, 0] == pytest.approx(real, rel=1e-4)
            assert list(prob[gi, 1 : 1 + len(others)]) == pytest.approx([p for _, p in others], rel=1e-4)
            assert all(math.isnan(x) for x in prob[gi, 1 + len(others) :])  # dropped draws leave no candidate
        means = scored.mean(OUTPUT)
        acc, _ = accuracy_with_ci(ranking_wins(means), scored.n_tokens[:, 1:] > 0, n_boot=100)
        assert acc == pytest.approx(paper_ranking.accuracy({i: v for i, v in data.items() if i in kept}))
