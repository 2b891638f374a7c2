"""AlpacaEval numbers: implicit-it's metric call against the paper's (alpaca_eval's CLI, ported in paper_alpaca.py).

The paper scores every comparison with ``alpaca_eval --model_outputs X --reference_outputs Y`` (output_1 =
reference, output_2 = model; default annotator ``weighted_alpaca_eval_gpt4_turbo``; metric
``get_length_controlled_winrate``). Given the same annotations, ``evaluation.alpaca.alpaca_metrics`` must give
the same win rate, standard error, counts, average length and LC win rate, exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from implicit_it.evaluation import alpaca_metrics, find_lc_data

from .paper_alpaca import paper_leaderboard_row

PLAIN = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "discrete_win_rate", "avg_length")


@pytest.fixture(scope="module")
def eval_set(shared_data) -> list[str]:
    return [r["instruction"] for r in json.loads((shared_data / "alpaca_eval" / "eval_set.json").read_text())]


@pytest.fixture(scope="module")
def lc_dir(tmp_path_factory) -> Path:
    """A df_gamed.csv with alpaca_eval's columns (the real one is on the hub): the same file for both sides."""
    rng = np.random.default_rng(1)
    rows = [
        dict(
            model=m,
            index=i,
            preference=float(rng.uniform()),
            std_delta_len=float(rng.normal()),
            instruction_difficulty=float(rng.normal()),
            not_gamed_baseline=False,
        )
        for m in ("gamed_long", "gamed_short")
        for i in range(805)
    ]
    path = tmp_path_factory.mktemp("lc")
    pd.DataFrame(rows).to_csv(path / "df_gamed.csv", index=False)
    return path


def _synthetic(eval_set: list[str], seed: int, n_missing: int = 0) -> list[dict]:
    """Weighted preferences in [1, 2] that favour the longer output (so the GLM has a length effect to remove),
    in eval-set order, as the paper's CLI annotates the 805 outputs; ``n_missing`` judge failures (no preference)."""
    rng = np.random.default_rng(seed)
    out = []
    for ins in eval_set:
        l1, l2 = (int(x) for x in rng.integers(10, 900, size=2))
        pref = 1 + 1 / (1 + np.exp(-(0.3 + (l2 - l1) / 300 + rng.normal())))
        out.append(
            dict(
                instruction=ins,
                output_1="r" * l1,
                output_2="m" * l2,
                generator_1="instruction.s1",
                generator_2="response.s1",
                annotator="weighted_alpaca_eval_gpt4_turbo",
                preference=float(pref),
            )
        )
    for i in rng.choice(len(out), n_missing, replace=False):
        out[i]["preference"] = None
    out[0]["preference"] = 1.5  # a draw
    return out


def _same(ours: dict, paper: dict, lc: bool) -> None:
    for key in PLAIN:
        assert ours[key] == paper[key], key
    assert ours["n"] == paper["n_total"]
    if lc:
        assert ours["lc_win_rate"] == paper["length_controlled_winrate"]
        assert ours["lc_standard_error"] == paper["lc_standard_error"]
        assert ours["lc_scope"] == "full"


@pytest.mark.parametrize("n_missing", [0, 25])
def test_win_rate_and_lc_equal_alpaca_evals_cli_on_synthetic_annotations(eval_set, lc_dir, n_missing):
    annotations = _synthetic(eval_set, seed=n_missing, n_missing=n_missing)
    paper = paper_leaderboard_row(annotations, df_gamed=lc_dir / "df_gamed.csv")
    ours = alpaca_metrics(annotations, judge="weighted_alpaca_eval_gpt4_turbo", lc=find_lc_data(lc_dir), eval_set=eval_set)
    _same(ours, paper, lc=True)
    assert ours["n_missing_preference"] == n_missing and abs(ours["lc_win_rate"] - ours["win_rate"]) > 0.05  # the GLM did something
    # the CLI's GLM averages over every annotation, those without a preference included; dropping them changes LC
    if n_missing:
        scored = [a for a in annotations if a["preference"] is not None]
        from alpaca_eval.metrics import get_length_controlled_winrate

        from .paper_alpaca import local_df_gamed

        frame = pd.DataFrame(scored, index=[eval_set.index(a["instruction"]) for a in scored])
        import sklearn

        with local_df_gamed(lc_dir / "df_gamed.csv"), sklearn.config_context():
            dropped = get_length_controlled_winrate(frame, save_weights_dir=None, is_add_glm_preference_inplace=False)
        assert dropped["length_controlled_winrate"] != paper["length_controlled_winrate"]


def test_win_rate_equals_alpaca_evals_cli_on_the_stored_gpt4_turbo_annotations(shared_data, eval_set, lc_dir):
    """vicuna-7b-v1.5's real GPT-4-turbo annotations (805): the plain metrics exactly; LC with the stand-in df_gamed too."""
    annotations = json.loads((shared_data / "alpaca_eval" / "annotations_vicuna-7b-v1.5.json").read_text())
    plain = paper_leaderboard_row(annotations)
    ours = alpaca_metrics(annotations, judge="weighted_alpaca_eval_gpt4_turbo", lc=None, eval_set=eval_set)
    _same(ours, plain, lc=False)
    assert round(ours["win_rate"], 3) == 4.797 and ours["lc_win_rate"] is None
    with_lc = alpaca_metrics(annotations, judge="weighted_alpaca_eval_gpt4_turbo", lc=find_lc_data(lc_dir), eval_set=eval_set)
    _same(with_lc, paper_leaderboard_row(annotations, df_gamed=lc_dir / "df_gamed.csv"), lc=True)
