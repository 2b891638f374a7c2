"""AlpacaEval 2 through the ``alpaca-eval`` library: its annotators, its cache, its metric functions.

Nothing here re-implements a metric. What this module adds is what alpaca_eval leaves to the
caller:

* **LC data offline.** alpaca_eval's length-controlled GLM downloads ``df_gamed.csv`` from the hub
  inside ``get_length_controlled_winrate``. We resolve it first (``--lc-data DIR``, else the HF
  cache, else a download when online) and hand alpaca_eval that file. When it cannot be had, the
  result says ``lc_win_rate: null`` and why: no LC is ever computed some other way.
* **Subsets.** The GLM looks up each annotation's instruction difficulty by the annotation's
  *row index*, which alpaca_eval assumes is the position in the 805-instruction set. For a
  subset (``--limit``, or any outputs covering part of the set) we set the index to each
  instruction's true position, so the right difficulty is used. LC on a subset is the GLM fitted
  on that subset's annotations: an estimate of the LC win rate on those instructions, with a wider
  error, not comparable to the leaderboard's 805-instruction number (``lc_scope`` says which).
  Instructions outside AlpacaEval's set have no difficulty: LC is unavailable there.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence
from unittest import mock

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.errors import DataFormatError, UserError
from implicit_it.io import read_input_bytes

from .judges import Judge
from .outputs import ModelOutput, read_model_outputs

LC_REPO = "tatsu-lab/alpaca_eval"
LC_FILES = ("df_gamed.csv", "instruction_difficulty.csv")
HUB_REFERENCE = "alpaca_eval"  # --reference value that means alpaca_eval's own reference outputs from the hub


@dataclass(frozen=True)
class LCData:
    """Where alpaca_eval's LC files are, or why they are not available."""

    files: dict[str, Path]
    reason: str | None = None

    @property
    def available(self) -> bool:
        return "df_gamed.csv" in self.files


def find_lc_data(lc_data_dir: str | Path | None = None, *, offline: bool | None = None) -> LCData:
    """``df_gamed.csv`` (needed) and ``instruction_difficulty.csv`` (kept when present) from
    ``lc_data_dir``, else from the Hugging Face cache, else downloaded when the hub is online."""
    if lc_data_dir is not None:
        d = Path(lc_data_dir)
        if not d.is_dir():
            raise DataFormatError(d, None, "--lc-data: not a directory")
        files = {f: d / f for f in LC_FILES if (d / f).is_file()}
        reason = None if "df_gamed.csv" in files else f"{d} has no df_gamed.csv"
        return LCData(files, reason)
    from huggingface_hub import hf_hub_download

    from implicit_it.models import hub_offline

    offline = hub_offline() if offline is None else offline
    files: dict[str, Path] = {}
    for name in LC_FILES:
        for cache_only in (True,) if offline else (True, False):  # the cache first; download only when online
            try:
                files[name] = Path(hf_hub_download(LC_REPO, name, repo_type="dataset", local_files_only=cache_only))
                break
            except Exception:  # noqa: BLE001 - any miss (offline, not cached, no network) means "not available"
                continue
    where = "the Hugging Face cache" if offline else f"the hub ({LC_REPO}) or the Hugging Face cache"
    return LCData(files, None if "df_gamed.csv" in files else f"df_gamed.csv is not in {where}; pass --lc-data DIR")


@contextlib.contextmanager
def _alpaca_eval_reads(lc: LCData) -> Iterator[None]:
    """Make alpaca_eval's GLM read our resolved files instead of downloading them."""
    from alpaca_eval.metrics import glm_winrate

    def local_download(*args: Any, filename: str | None = None, **kwargs: Any) -> str:
        name = filename or (args[1] if len(args) > 1 else None)
        if name not in lc.files:
            raise FileNotFoundError(f"alpaca_eval asked for {name}, which is not in the LC data ({sorted(lc.files)})")
        return str(lc.files[name])

    with mock.patch.object(glm_winrate, "hf_hub_download", local_download):
        yield


def instruction_positions(instructions: Sequence[str], eval_set: Sequence[str]) -> list[int] | None:
    """Each instruction's position in the full eval set, or None if any is not in it."""
    where = {ins: i for i, ins in enumerate(eval_set)}
    pos = [where.get(ins) for ins in instructions]
    return None if any(p is None for p in pos) else pos  # type: ignore[return-value]


def _clean(value: Any) -> Any:
    """numpy scalars -> Python; NaN -> None (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def annotations_frame(annotations: Any) -> Any:
    """alpaca_eval annotations (list of dicts, DataFrame or JSON path) with a float ``preference``."""
    import pandas as pd

    if isinstance(annotations, (str, Path)):
        path = Path(annotations)
        raw = read_input_bytes(path)  # a regular file, of bounded size
        try:
            df = pd.read_json(io.BytesIO(raw), dtype={"preference": float})
        except ValueError as exc:
            raise DataFormatError(path, None, f"not an alpaca_eval annotations JSON list: {exc}") from None
        where: Any = path
    else:
        df, where = pd.DataFrame(annotations).copy(), "annotations"
    missing = [c for c in ("instruction", "output_1", "output_2", "generator_1", "generator_2", "preference") if c not in df.columns]
    if missing:
        raise DataFormatError(where, None, f"annotations lack the field(s) {missing}")
    df["preference"] = pd.to_numeric(df["preference"], errors="coerce")
    return df.reset_index(drop=True)


def alpaca_metrics(annotations: Any, *, judge: str, lc: LCData | None = None, eval_set: Sequence[str] | None = None) -> dict[str, Any]:
    """Win rate and standard error from alpaca_eval's ``get_winrate``; LC from its
    ``get_length_controlled_winrate`` when the LC data is there and every instruction has a
    position in the eval set. Returns the ``alpaca_eval.json`` layout."""
    from alpaca_eval.metrics import get_length_controlled_winrate, get_winrate

    df = annotations_frame(annotations)
    scored = df[df["preference"].notna()].copy()
    if scored.empty:
        raise UserError("no annotation has a preference: the judge gave no usable answer")
    plain = {k: _clean(v) for k, v in get_winrate(scored).items()}
    result: dict[str, Any] = {
        "win_rate": plain["win_rate"],
        "standard_error": plain["standard_error"],
        "lc_win_rate": None,
        "lc_standard_error": None,
        "n": int(len(scored)),
        "judge": judge,
        "n_missing_preference": int(len(df) - len(scored)),
        "n_wins": plain["n_wins"],
        "n_wins_base": plain["n_wins_base"],
        "n_draws": plain["n_draws"],
        "discrete_win_rate": plain["discrete_win_rate"],
        "generator": _single(df["generator_2"]),
        "reference_generator": _single(df["generator_1"]),
        "avg_length": int(df["output_2"].str.len().mean()),
        "lc_scope": None,
        "lc_note": None,
    }
    # LC gets every annotation, as alpaca_eval's CLI passes them: the GLM trains on those with a preference but
    # averages its predictions (and normalises the length difference) over all (tests/fidelity/test_alpaca_metric.py)
    positions = instruction_positions(list(df["instruction"]), eval_set) if eval_set is not None else None
    reason = _lc_unavailable_reason(positions, lc, eval_set)
    if reason is not None:
        result["lc_note"] = f"length-controlled win rate unavailable: {reason}"
        return result
    assert lc is not None and eval_set is not None and positions is not None
    placed = df.copy()
    placed.index = positions  # alpaca_eval's GLM keys instruction difficulty by this index
    placed["annotator"] = placed.get("annotator", judge)
    import sklearn

    # alpaca_eval's GLM turns on sklearn's metadata routing globally (set_config), which breaks
    # every later sklearn call that passes `groups` (our probes); the context restores the config.
    with _alpaca_eval_reads(lc), sklearn.config_context():
        lc_metrics = get_length_controlled_winrate(placed, save_weights_dir=None, is_add_glm_preference_inplace=False)
    result["lc_win_rate"] = _clean(lc_metrics["length_controlled_winrate"])
    result["lc_standard_error"] = _clean(lc_metrics["lc_standard_error"])
    full = len(set(positions)) == len(eval_set)
    result["lc_scope"] = "full" if full else "subset"
    if not full:
        result["lc_note"] = (
            f"LC over {len(placed)} of the {len(eval_set)} AlpacaEval instructions (each with its own "
            "difficulty): an estimate for this subset, not comparable to the 805-instruction leaderboard LC"
        )
    return result


def _single(column: Any) -> str | None:
    values = column.dropna().unique().tolist()
    return str(values[0]) if len(values) == 1 else None


def _lc_unavailable_reason(positions: list[int] | None, lc: LCData | None, eval_set: Sequence[str] | None) -> str | None:
    if lc is None or not lc.available:
        return lc.reason if lc is not None else "no LC data given"
    if eval_set is None:
        return "no AlpacaEval instruction set to place the instructions in"
    import pandas as pd

    n_difficulties = pd.read_csv(lc.files["df_gamed.csv"], usecols=["index"])["index"].nunique()
    if len(eval_set) != n_difficulties:
        return (
            f"the eval set has {len(eval_set)} instructions but alpaca_eval's difficulties cover {n_difficulties}: "
            "not AlpacaEval's instruction set"
        )
    if positions is None:
        return "some instructions are not in AlpacaEval's instruction set, so they have no difficulty"
    return None


def load_reference(spec: str | Path) -> list[ModelOutput]:
    """Reference outputs from a file, or ``alpaca_eval`` for the library's own (from the hub)."""
    if str(spec) == HUB_REFERENCE:
        from alpaca_eval import constants

        try:
            frame = constants.ALPACAEVAL_REFERENCE_OUTPUTS()
        except Exception as exc:  # noqa: BLE001 - offline hub, missing dataset
            raise UserError(
                f"--reference alpaca_eval: cannot load AlpacaEval's reference outputs from the hub ({exc}); pass a local file"
            ) from None
        frame = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
        return [ModelOutput(r["instruction"], r["output"], r.get("generator"), r.get("dataset", "")) for r in frame.to_dict("records")]
    return read_model_outputs(spec)


def pair_with_reference(
    outputs: Sequence[ModelOutput], reference: Sequence[ModelOutput], *, outputs_path: Any = "outputs"
) -> list[tuple[ModelOutput, ModelOutput]]:
    """Match each model output to the reference output for the same instruction."""
    by_instruction = {r.instruction: r for r in reference}
    missing = [o.instruction for o in outputs if o.instruction not in by_instruction]
    if missing:
        shown = "; ".join(repr(m[:60]) for m in missing[:3])
        raise DataFormatError(outputs_path, None, f"{len(missing)} instruction(s) have no reference output, e.g. {shown}")
    seen: set[str] = set()
    dup = [o.instruction for o in outputs if o.instruction in seen or seen.add(o.instruction)]  # type: ignore[func-returns-value]
    if dup:
        raise DataFormatError(outputs_path, None, f"instruction repeated: {dup[0][:60]!r}")
    return [(by_instruction[o.instruction], o) for o in outputs]


def annotate(
    pairs: Sequence[tuple[ModelOutput, ModelOutput]],
    judge: Judge,
    judge_dir: str | Path,
    *,
    generator: str,
    cache_path: str | Path,
    gold: Mapping[str, str] | None = None,
) -> Any:
    """Run alpaca_eval's ``PairwiseAnnotator`` (output_1 = reference, output_2 = model). Annotations
    are cached in ``cache_path`` by alpaca_eval, so a re-run with the same outputs calls no judge.
    A ``metric:`` judge scores both outputs against ``gold`` (instruction -> gold answer) instead."""
    import pandas as pd
    from alpaca_eval.annotators import PairwiseAnnotator

    if judge.kind == "metric":
        from .judge_agreement import metric_annotations

        return pd.DataFrame(metric_annotations(pairs, judge.target, gold, generator=generator, annotator=judge.annotator_name))
    config = judge.write_config(judge_dir)
    ref = pd.DataFrame(
        [
            {"instruction": r.instruction, "output": r.output, "generator": r.generator or "reference", "dataset": r.dataset}
            for r, _ in pairs
        ]
    )
    model = pd.DataFrame(
        [{"instruction": o.instruction, "output": o.output, "generator": generator, "dataset": o.dataset} for _, o in pairs]
    )
    Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
    annotator = PairwiseAnnotator(annotators_config=config, caching_path=str(cache_path), **judge.annotator_kwargs())
    return pd.DataFrame(annotator.annotate_head2head(outputs_1=ref, outputs_2=model))


@register_result
class AlpacaEvalResult(AnalysisResult):
    """``alpaca_eval.json``: one model against the reference, judged."""

    name: ClassVar[str] = "alpaca_eval"

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in e.items() if not isinstance(v, (dict, list))} for e in self.entries])

    def plot(self) -> Any:
        import numpy as np

        fig, ax = new_figure(figsize=(1.6 + 1.4 * len(self.entries), 3.2))
        x = np.arange(len(self.entries))
        wr = [e["win_rate"] for e in self.entries]
        ax.bar(x - 0.2, wr, 0.4, yerr=[e["standard_error"] or 0 for e in self.entries], label="win rate", capsize=3)
        lc = [e["lc_win_rate"] if e["lc_win_rate"] is not None else np.nan for e in self.entries]
        ax.bar(x + 0.2, lc, 0.4, yerr=[e["lc_standard_error"] or 0 for e in self.entries], label="LC win rate", capsize=3)
        ax.set_xticks(x, [str(e.get("generator") or i) for i, e in enumerate(self.entries)], rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("% preferred over reference")
        ax.set_title(f"AlpacaEval ({self.entries[0]['judge']})", fontsize=8)
        ax.legend(fontsize=7)
        return fig
