"""What the paper's pipeline does to turn judge annotations into a win rate (a port, for the fidelity tests).

The paper (john-hewitt/implicit-ins, e.g. ``scripts/iclr2025/expt1_llama/res/finetune_seed1.sh``) runs

    alpaca_eval --model_outputs <variant seed s outputs> --reference_outputs <instruction-tuned seed s outputs>

with every other option at alpaca_eval's default (0.6.x, AlpacaEval 2 mode): the annotator
``weighted_alpaca_eval_gpt4_turbo`` and the metric function ``get_length_controlled_winrate``.
In ``alpaca_eval.main.evaluate`` the annotator compares output_1 = the reference with output_2 =
the model, and the leaderboard row is ``{"avg_length": mean characters of the model's outputs}``
updated with ``fn_metric(annotations)``: the annotation records exactly as annotated (every row,
those the judge gave no preference included), indexed 0..n-1 in the order of the model outputs,
which for the paper's runs is AlpacaEval's 805-instruction order. The paper's README reads
``leaderboard.csv`` (``win_rate`` and ``length_controlled_winrate`` columns) from that row.

This port redoes those last two steps on given annotations. The only departure is
``save_weights_dir=None``: the CLI's ``"auto"`` writes the GLM weights into alpaca_eval's package
folder, which changes no number.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence
from unittest import mock


@contextlib.contextmanager
def local_df_gamed(path: Path) -> Iterator[None]:
    """alpaca_eval's GLM downloads ``df_gamed.csv`` from the hub; point that download at a local file."""
    from alpaca_eval.metrics import glm_winrate

    with mock.patch.object(glm_winrate, "hf_hub_download", lambda *a, **k: str(path)):
        yield


def paper_leaderboard_row(annotations: Sequence[dict[str, Any]], *, df_gamed: Path | None = None) -> dict[str, Any]:
    """The leaderboard row ``alpaca_eval --model_outputs X --reference_outputs Y`` writes for these annotations
    (in model-output order). Without ``df_gamed`` only the plain metrics (``get_winrate``), as alpaca_eval 1 mode."""
    import sklearn
    from alpaca_eval.metrics import get_length_controlled_winrate, get_winrate

    records = [dict(a) for a in annotations]
    row: dict[str, Any] = {"avg_length": int(sum(len(a["output_2"]) for a in records) / len(records))}
    if df_gamed is None:
        row.update(get_winrate(records))
        return row
    with local_df_gamed(df_gamed), sklearn.config_context():
        row.update(get_length_controlled_winrate(records, save_weights_dir=None))
    return row
