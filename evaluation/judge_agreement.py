"""Can a judge-free metric stand in for GPT-4's AlpacaEval judgments? Measure it against them.

Offline there is no GPT-4, so the study needs a CPU metric whose verdicts agree with the judge AlpacaEval 2 is built on.
A folder of judged outputs (the format of ``../shared/data/alpaca_eval/judged/``: one ``<system>.json.gz`` per system of
``{"index", "instruction", "output", "preference"}`` records, ``preference`` = 1 + P(the system beats the reference),
a ``leaderboard.csv`` with AlpacaEval 2's win rates, the instructions and references in ``eval_set.json``) gives two
tests of any metric (a :class:`ResponseMetric`: one score per output, higher is better):

* **system level**: Spearman's rho of the metric's mean score per system with the leaderboard's length-controlled (LC)
  and raw win rates, with a bootstrap CI that resamples instructions and systems together;
* **item level**: for two systems on the same instruction whose GPT-4 preferences differ by more than ``margin``, how
  often the metric orders them as GPT-4 does (a metric tie counts half), over all such pairs and over *length-matched*
  pairs (lengths within ``length_tolerance``), with a cluster-bootstrap CI by instruction.

Adversarial systems (``NullModel``: a constant output built to fool the judge) are kept out of both tests and reported
apart, by where the metric ranks them. The baselines are the length of the output (at the item level: "pick the
longer") and "longer than the reference". A metric is *fit* for the study only if its rho with LC beats every
baseline's (the paired bootstrap CI of the difference above 0) and its length-matched agreement beats chance (CI above
0.5).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from implicit_it.analysis import AnalysisResult, new_figure, register_result
from implicit_it.errors import DataFormatError, UserError
from implicit_it.stats import cluster_ratio_with_ci

from .behaviour import echoes_template, words

if TYPE_CHECKING:
    from implicit_it.embedding import Embedder

ADVERSARIAL = ("NullModel",)
LEADERBOARD_FILE = "leaderboard.csv"
EVAL_SET_FILE = "eval_set.json"
_LC_COLUMN, _WR_COLUMN, _LENGTH_COLUMN = "length_controlled_winrate_leaderboard", "win_rate_leaderboard", "avg_length"
_VARIANT_SUFFIX = re.compile(r"_(concise|verbose)$")


# ------------------------------------------------------------------------------------------------ the judged folder


@dataclass
class JudgedSet:
    """Every system's outputs and GPT-4 preferences on one instruction set, aligned by instruction (NaN / None = no
    record), and the leaderboard's numbers per system."""

    directory: Path
    eval_set: Path
    instructions: list[str]
    references: list[str]
    systems: list[str]
    outputs: list[list[str | None]]  # [system][instruction]
    preference: np.ndarray  # (systems, instructions), NaN where a system has no record
    leaderboard: dict[str, dict[str, float]]  # system -> {"lc", "win_rate", "avg_length"}
    files: list[Path] = field(default_factory=list)

    def lengths(self) -> np.ndarray:
        """Characters of each output (AlpacaEval's ``avg_length`` unit), NaN where absent."""
        return np.array([[len(o) if o is not None else np.nan for o in row] for row in self.outputs], dtype=np.float64)

    def column(self, key: str) -> np.ndarray:
        return np.array([self.leaderboard[s][key] for s in self.systems], dtype=np.float64)


def _system_files(directory: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        for suffix in (".json.gz", ".json"):
            if path.name.endswith(suffix) and path.is_file() and path.name != EVAL_SET_FILE:
                name = path.name[: -len(suffix)]
                if name in files:
                    raise DataFormatError(path, None, f"system {name!r} has two files ({files[name].name} and {path.name})")
                files[name] = path
    return files


def _read_json(path: Path) -> Any:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return json.load(fh)
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, None, f"cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"not valid JSON: {exc.msg}") from exc


def _read_leaderboard(path: Path) -> dict[str, dict[str, float]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot be read: {exc}") from exc
    board: dict[str, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get("model") or "").strip()
        if not name:
            raise DataFormatError(path, line, "no model name (column 'model')")
        values = {}
        for key, column in (("lc", _LC_COLUMN), ("win_rate", _WR_COLUMN), ("avg_length", _LENGTH_COLUMN)):
            try:
                values[key] = float(row[column])
            except (KeyError, TypeError, ValueError):
                raise DataFormatError(path, line, f"{name}: column {column!r} must be a number, got {row.get(column)!r}") from None
        board[name] = values
    return board


def _find_eval_set(directory: Path, eval_set: str | Path | None) -> Path:
    if eval_set is not None:
        return Path(eval_set)
    for candidate in (directory / EVAL_SET_FILE, directory.parent / EVAL_SET_FILE):
        if candidate.is_file():
            return candidate
    raise DataFormatError(directory, None, f"no {EVAL_SET_FILE} in it or beside it; pass the instructions and references with --eval-set")


def load_judged(directory: str | Path, *, eval_set: str | Path | None = None, instructions: int | None = None) -> JudgedSet:
    """Read a judged folder; every record is checked (index in range, the instruction the eval set has there, an output
    string, a preference in [1, 2]). ``instructions``: only the first N of the eval set (a quick look)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFormatError(directory, None, "not a directory of judged outputs")
    eval_path = _find_eval_set(directory, eval_set)
    all_records = _read_json(eval_path)
    if not isinstance(all_records, list) or not all_records:
        raise DataFormatError(eval_path, None, "must be a non-empty JSON list of {instruction, output} records")
    for k, r in enumerate(all_records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise DataFormatError(eval_path, None, f"record {k}: needs string fields 'instruction' and 'output' (the reference)")
    records = all_records[:instructions] if instructions else all_records
    n = len(records)
    board_path = directory / LEADERBOARD_FILE
    if not board_path.is_file():
        raise DataFormatError(board_path, None, "missing: the leaderboard's win rates per system are needed")
    board = _read_leaderboard(board_path)
    files = _system_files(directory)
    if len(files) < 3:
        raise DataFormatError(directory, None, f"needs judged outputs of at least 3 systems (<system>.json.gz), found {len(files)}")
    systems = sorted(files)
    missing = [s for s in systems if s not in board]
    if missing:
        raise DataFormatError(board_path, None, f"no row for system(s) {', '.join(missing)} (each judged file needs one)")
    outputs: list[list[str | None]] = []
    preference = np.full((len(systems), n), np.nan)
    for i, name in enumerate(systems):
        path = files[name]
        data = _read_json(path)
        if not isinstance(data, list):
            raise DataFormatError(path, None, "must be a JSON list of {index, instruction, output, preference} records")
        row: list[str | None] = [None] * n
        for k, r in enumerate(data):
            where = f"record {k}"
            if not isinstance(r, dict):
                raise DataFormatError(path, None, f"{where}: not an object")
            index = r.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(all_records):
                raise DataFormatError(path, None, f"{where}: 'index' must be an integer position in {eval_path.name}, got {index!r}")
            if index >= n:
                continue  # beyond --instructions
            pref = r.get("preference")
            if not isinstance(pref, (int, float)) or isinstance(pref, bool) or not 1.0 <= float(pref) <= 2.0:
                raise DataFormatError(path, None, f"{where} (index {index}): 'preference' must be a number in [1, 2], got {pref!r}")
            if not isinstance(r.get("output"), str):
                raise DataFormatError(path, None, f"{where} (index {index}): 'output' must be a string")
            if not isinstance(r.get("instruction"), str) or r["instruction"].strip() != all_records[index]["instruction"].strip():
                raise DataFormatError(path, None, f"{where} (index {index}): its instruction differs from {eval_path.name}'s at that index")
            if row[index] is not None:
                raise DataFormatError(path, None, f"{where}: index {index} appears twice")
            row[index] = r["output"]
            preference[i, index] = float(pref)
        outputs.append(row)
    return JudgedSet(
        directory=directory,
        eval_set=eval_path,
        instructions=[r["instruction"] for r in records],
        references=[r["output"] for r in records],
        systems=systems,
        outputs=outputs,
        preference=preference,
        leaderboard={s: board[s] for s in systems},
        files=[board_path, eval_path, *(files[s] for s in systems)],
    )


# ------------------------------------------------------------------------------------------------ the metrics

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> unit-norm rows


def echoes_instruction(instruction: str, output: str, *, prefix_words: int = 8) -> bool:
    """The output repeats the instruction instead of answering it: it starts with the instruction's first words (all of
    them when it has fewer than ``prefix_words``)."""
    ins, out = words(instruction), words(output)
    head = ins[:prefix_words]
    return bool(head) and out[: len(head)] == head


def is_answer(instruction: str, output: str) -> bool:
    """Not empty, not a continuation of a chat template, not an echo of the instruction."""
    return bool(output.strip()) and not echoes_template(output) and not echoes_instruction(instruction, output)


class ResponseMetric(ABC):
    """One score per (instruction, output, reference), higher = better. A system's score is the mean over its outputs;
    two outputs for one instruction are ordered by their scores (the metric as a pairwise judge)."""

    name: ClassVar[str]
    description: ClassVar[str]
    baseline: ClassVar[bool] = False
    needs_embedder: ClassVar[bool] = False

    def __init__(self, embed: Embed | None = None):
        if self.needs_embedder and embed is None:
            raise ValueError(f"metric {self.name!r} needs an embedder")
        self.embed = embed

    @abstractmethod
    def score(self, instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str]) -> np.ndarray: ...


class OutputLength(ResponseMetric):
    name = "length"
    description = "characters of the output (baseline; as a pairwise judge: pick the longer)"
    baseline = True

    def score(self, instructions, outputs, references):
        return np.array([len(o) for o in outputs], dtype=np.float64)


class LongerThanReference(ResponseMetric):
    name = "longer_than_reference"
    description = "1 if the output is longer than the reference, else 0 (baseline: a length judge's win rate)"
    baseline = True

    def score(self, instructions, outputs, references):
        return np.array([float(len(o) > len(r)) for o, r in zip(outputs, references, strict=True)])


class ReferenceSimilarity(ResponseMetric):
    name = "reference_similarity"
    description = "cosine similarity of the output to the reference answer (MiniLM; the paper's Fig. 5 embedding idea)"
    needs_embedder = True

    def score(self, instructions, outputs, references):
        assert self.embed is not None
        return np.einsum("ij,ij->i", self.embed(outputs), self.embed(references))


class InstructionSimilarity(ResponseMetric):
    name = "instruction_similarity"
    description = "cosine similarity of the output to the instruction (reference-free relevance)"
    needs_embedder = True

    def score(self, instructions, outputs, references):
        assert self.embed is not None
        return np.einsum("ij,ij->i", self.embed(outputs), self.embed(instructions))


class ReferenceUnigramF1(ResponseMetric):
    name = "reference_f1"
    description = "unigram F1 of the output's words against the reference's (lexical overlap)"

    def score(self, instructions, outputs, references):
        from collections import Counter

        values = []
        for o, r in zip(outputs, references, strict=True):
            a, b = Counter(words(o)), Counter(words(r))
            common = sum((a & b).values())
            values.append(0.0 if common == 0 else 2 * common / (sum(a.values()) + sum(b.values())))
        return np.array(values, dtype=np.float64)


class GatedReferenceSimilarity(ReferenceSimilarity):
    name = "gated_reference_similarity"
    description = "reference similarity, −1 where the output is no answer (empty, a template continuation, an echo)"

    def score(self, instructions, outputs, references):
        sims = super().score(instructions, outputs, references)
        gate = np.array([is_answer(i, o) for i, o in zip(instructions, outputs, strict=True)])
        return np.where(gate, sims, -1.0)


METRICS: dict[str, type[ResponseMetric]] = {
    cls.name: cls
    for cls in (OutputLength, LongerThanReference, ReferenceSimilarity, GatedReferenceSimilarity, InstructionSimilarity, ReferenceUnigramF1)
}


def build_metrics(names: Sequence[str] | None, embedder: Callable[[], Embed] | None = None) -> list[ResponseMetric]:
    """The named metrics (default: all), the baselines always first. ``embedder`` makes the embedding function, called
    once and only if a named metric needs one (loading MiniLM costs seconds)."""
    chosen = list(dict.fromkeys(names or METRICS))
    unknown = [n for n in chosen if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    chosen = [n for n in METRICS if METRICS[n].baseline] + [n for n in chosen if not METRICS[n].baseline]
    embed = embedder() if embedder is not None and any(METRICS[n].needs_embedder for n in chosen) else None
    return [METRICS[n](embed if METRICS[n].needs_embedder else None) for n in chosen]


# ------------------------------------------------------------------------------------------------ the statistics


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``a`` with the same row of ``b`` (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)


def _ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def _item_agreement(
    scores: np.ndarray, preference: np.ndarray, lengths: np.ndarray, *, margin: float, tolerance: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per instruction: the summed agreement and the number of pairs, over all decided pairs and length-matched ones."""
    n = preference.shape[1]
    sums = {"all": np.zeros(n), "length_matched": np.zeros(n)}
    counts = {"all": np.zeros(n), "length_matched": np.zeros(n)}
    upper = None
    for j in range(n):
        present = np.isfinite(preference[:, j]) & np.isfinite(scores[:, j])
        p, s, ln = preference[present, j], scores[present, j], lengths[present, j]
        if upper is None or upper.shape[0] != len(p):
            upper = np.triu(np.ones((len(p), len(p)), dtype=bool), k=1)
        dp = p[:, None] - p[None, :]
        decided = upper & (np.abs(dp) > margin)
        ds = s[:, None] - s[None, :]
        agree = np.where(ds == 0, 0.5, (np.sign(ds) == np.sign(dp)).astype(np.float64))
        longer = np.maximum(ln[:, None], ln[None, :])
        matched = decided & (np.abs(ln[:, None] - ln[None, :]) <= tolerance * longer)
        for key, mask in (("all", decided), ("length_matched", matched)):
            sums[key][j] = agree[mask].sum()
            counts[key][j] = mask.sum()
    return {k: (sums[k], counts[k]) for k in sums}


def length_controlled(scores: np.ndarray, lengths: np.ndarray, reference_lengths: np.ndarray) -> np.ndarray:
    """Scores with each system's length term removed, as AlpacaEval 2's LC win rate removes the judge's: per system
    (row), the OLS fit ``score ≈ a + b · tanh((length − reference length) / σ)`` (σ: the std of that difference over all
    outputs), and ``score − b · tanh(...)``. A system's mean adjusted score is then ``a``, its predicted score at the
    reference's length; pairs are ordered by adjusted scores."""
    diff = lengths - reference_lengths[None, :]
    sigma = float(np.nanstd(diff)) or 1.0
    x = np.tanh(diff / sigma)
    out = np.full_like(scores, np.nan)
    for i in range(scores.shape[0]):
        ok = np.isfinite(scores[i]) & np.isfinite(x[i])
        if not ok.any():
            continue
        xi, yi = x[i, ok], scores[i, ok]
        var = float(np.var(xi))
        slope = float(np.mean((xi - xi.mean()) * (yi - yi.mean())) / var) if var > 0 else 0.0
        out[i, ok] = yi - slope * xi
    return out


def _families(systems: Sequence[str]) -> dict[str, list[str]]:
    """Systems that are length-gamed variants of one model (``x``, ``x_concise``, ``x_verbose``), two or more present."""
    groups: dict[str, list[str]] = {}
    for s in systems:
        groups.setdefault(_VARIANT_SUFFIX.sub("", s), []).append(s)
    return {k: v for k, v in groups.items() if len(v) >= 2}


@dataclass(frozen=True)
class AgreementConfig:
    margin: float = 0.5  # GPT-4 preferences must differ by more than this for a pair to count as decided
    length_tolerance: float = 0.2  # length-matched: |len a − len b| ≤ tolerance × the longer
    length_control: bool = True  # also each candidate with its length term removed (``<metric>+lc``)
    adversarial: tuple[str, ...] = ADVERSARIAL
    n_boot: int = 2000
    seed: int = 0


class JudgeAgreement:
    """Each metric's agreement with GPT-4's judgments on a judged folder (see the module docstring)."""

    name: ClassVar[str] = "judge_agreement"

    def __init__(self, config: AgreementConfig | None = None):
        self.config = config or AgreementConfig()
        c = self.config
        if not 0 <= c.margin < 1 or not 0 <= c.length_tolerance < 1 or c.n_boot < 100:
            raise UserError(f"margin and length_tolerance must lie in [0, 1) and n_boot ≥ 100, got {c}")

    def run(
        self, judged: JudgedSet, metrics: Sequence[ResponseMetric], *, progress: Callable[[str], None] | None = None
    ) -> "JudgeAgreementResult":
        c = self.config
        systems = judged.systems
        honest = np.array([s not in c.adversarial for s in systems])
        if honest.sum() < 3:
            raise UserError(f"needs at least 3 non-adversarial systems, got {int(honest.sum())}")
        lengths = judged.lengths()
        lc, wr, avg_length = judged.column("lc"), judged.column("win_rate"), judged.column("avg_length")
        flat = [(i, j) for i, row in enumerate(judged.outputs) for j, o in enumerate(row) if o is not None]
        ins = [judged.instructions[j] for _, j in flat]
        outs = [judged.outputs[i][j] or "" for i, j in flat]
        refs = [judged.references[j] for _, j in flat]
        rows, cols = np.array([i for i, _ in flat]), np.array([j for _, j in flat])
        scores: dict[str, np.ndarray] = {}
        described: dict[str, tuple[str, bool]] = {}  # name -> (description, baseline)
        reference_lengths = np.array([len(r) for r in judged.references], dtype=np.float64)
        for metric in metrics:
            if progress:
                progress(f"scoring {len(flat)} outputs with {metric.name}")
            m = np.full(judged.preference.shape, np.nan)
            m[rows, cols] = metric.score(ins, outs, refs)
            scores[metric.name] = m
            described[metric.name] = (metric.description, metric.baseline)
            if c.length_control and not metric.baseline:
                scores[f"{metric.name}+lc"] = length_controlled(m, lengths, reference_lengths)
                described[f"{metric.name}+lc"] = (f"{metric.description}; length-controlled as AlpacaEval 2 (see length_controlled)", False)
        # the joint bootstrap: instructions and systems resampled together, the same draws for every metric (paired)
        rng = np.random.default_rng(c.seed)
        n_sys, n_ins = judged.preference.shape
        honest_idx = np.flatnonzero(honest)
        draw_ins = rng.integers(0, n_ins, size=(c.n_boot, n_ins))
        draw_sys = honest_idx[rng.integers(0, len(honest_idx), size=(c.n_boot, len(honest_idx)))]
        boot_rho: dict[str, dict[str, np.ndarray]] = {}
        system_scores: dict[str, np.ndarray] = {}
        for name, m in scores.items():
            system_scores[name] = np.nanmean(m, axis=1)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a system absent from every drawn instruction: NaN, dropped
                boot_means = np.stack([np.nanmean(m[:, d], axis=1) for d in draw_ins])  # (n_boot, n_sys)
            picked = np.take_along_axis(boot_means, draw_sys, axis=1)
            boot_rho[name] = {"lc": _spearman_rows(picked, lc[draw_sys]), "win_rate": _spearman_rows(picked, wr[draw_sys])}
        baselines = [name for name, (_, baseline) in described.items() if baseline]
        entries = []
        for name, (description, baseline) in described.items():
            sm = system_scores[name]
            rho = {
                "lc": float(_spearman_rows(sm[honest], lc[honest])),
                "win_rate": float(_spearman_rows(sm[honest], wr[honest])),
                "avg_length": float(_spearman_rows(sm[honest], avg_length[honest])),
                "lc_with_adversarial": float(_spearman_rows(sm, lc)),
            }
            items = _item_agreement(
                scores[name][honest], judged.preference[honest], lengths[honest], margin=c.margin, tolerance=c.length_tolerance
            )
            item_stats = {}
            for key, (sums, counts) in items.items():
                if counts.sum() == 0:
                    item_stats[key] = {"agreement": None, "ci": [None, None], "pairs": 0}
                    continue
                value, (lo, hi) = cluster_ratio_with_ci(sums, counts, n_boot=c.n_boot, seed=c.seed)
                item_stats[key] = {"agreement": value, "ci": [lo, hi], "pairs": int(counts.sum())}
            versus = {
                b: {
                    "difference": rho["lc"] - float(_spearman_rows(system_scores[b][honest], lc[honest])),
                    "ci": _ci(boot_rho[name]["lc"] - boot_rho[b]["lc"]),
                }
                for b in baselines
                if b != name
            }
            order = np.argsort(-sm, kind="stable")
            place = {s: int(np.flatnonzero(order == k)[0]) + 1 for k, s in enumerate(systems)}
            families = []
            for family, members in _families(systems).items():
                by_lc = sorted(members, key=lambda s: judged.leaderboard[s]["lc"])
                pairs = [(a, b) for k, a in enumerate(by_lc) for b in by_lc[k + 1 :]]
                families.append(
                    {
                        "family": family,
                        "members_by_lc": by_lc,
                        "lc": [judged.leaderboard[s]["lc"] for s in by_lc],
                        "scores": [float(sm[systems.index(s)]) for s in by_lc],
                        "pairs_ordered_as_lc": int(sum(sm[systems.index(b)] > sm[systems.index(a)] for a, b in pairs)),
                        "pairs": len(pairs),
                    }
                )
            fit_reasons = []
            if not baseline:
                for b, v in versus.items():
                    if not v["ci"][0] > 0:
                        fit_reasons.append(f"rho with LC does not beat {b} (difference CI {v['ci'][0]:+.2f}..{v['ci'][1]:+.2f})")
                lm = item_stats["length_matched"]
                if lm["agreement"] is None or not lm["ci"][0] > 0.5:
                    fit_reasons.append("length-matched agreement does not beat chance")
            entries.append(
                {
                    "metric": name,
                    "description": description,
                    "baseline": baseline,
                    "spearman": rho,
                    "spearman_ci": {k: _ci(v) for k, v in boot_rho[name].items()},
                    "versus_baselines": versus,
                    "items": item_stats,
                    "adversarial": {s: {"rank": place[s], "of": n_sys} for s in systems if s in c.adversarial},
                    "families": families,
                    "fit": None if baseline else not fit_reasons,
                    "not_fit_because": fit_reasons,
                    "system_scores": {s: float(v) for s, v in zip(systems, sm, strict=True)},
                    "n_systems": int(honest.sum()),
                    "n_instructions": n_ins,
                    "config": {
                        "margin": c.margin,
                        "length_tolerance": c.length_tolerance,
                        "length_control": c.length_control,
                        "adversarial": list(c.adversarial),
                        "n_boot": c.n_boot,
                        "seed": c.seed,
                    },
                }
            )
        leaderboard = {s: judged.leaderboard[s] for s in systems}
        for e in entries:
            e["leaderboard"] = leaderboard
        return JudgeAgreementResult(entries)


def _fmt_ci(value: float | None, ci: Sequence[float | None], digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.1f}% [{100 * (ci[0] or 0):.1f}, {100 * (ci[1] or 0):.1f}]"
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


@register_result
class JudgeAgreementResult(AnalysisResult):
    """One entry per metric (baselines first)."""

    name: ClassVar[str] = "judge_agreement"

    def to_frame(self) -> Any:
        import pandas as pd

        rows = []
        for e in self.entries:
            for s, v in e["system_scores"].items():
                board = e["leaderboard"][s]
                rows.append({"metric": e["metric"], "system": s, "score": v, **board})
        return pd.DataFrame(rows)

    def headline(self) -> list[dict[str, Any]]:
        """One row per metric: the numbers the table shows."""
        return [
            {
                "metric": e["metric"],
                "baseline": e["baseline"],
                "rho_lc": e["spearman"]["lc"],
                "rho_lc_ci": e["spearman_ci"]["lc"],
                "rho_win_rate": e["spearman"]["win_rate"],
                "rho_win_rate_ci": e["spearman_ci"]["win_rate"],
                "rho_avg_length": e["spearman"]["avg_length"],
                "items": e["items"]["all"],
                "length_matched": e["items"]["length_matched"],
                "adversarial": e["adversarial"],
                "fit": e["fit"],
            }
            for e in self.entries
        ]

    def to_markdown(self) -> str:
        """The table docs/ publishes (every number from this result)."""
        e0 = self.entries[0]
        c = e0["config"]
        lines = [
            f"{e0['n_systems']} systems (adversarial kept apart: {', '.join(c['adversarial']) or 'none'}), "
            f"{e0['n_instructions']} instructions; pairs decided when GPT-4's preferences differ by > {c['margin']}; "
            f"length-matched: lengths within {c['length_tolerance']:.0%}; 95% bootstrap CIs ({c['n_boot']} draws, seed {c['seed']}).",
            "",
            "| metric | ρ with LC win rate | ρ with raw win rate | ρ with length | item agreement (pairs) | "
            "length-matched agreement (pairs) | adversarial rank | fit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in self.entries:
            items, matched = e["items"]["all"], e["items"]["length_matched"]
            adv = ", ".join(f"{s} {v['rank']}/{v['of']}" for s, v in e["adversarial"].items()) or "–"
            fit = "baseline" if e["baseline"] else ("**yes**" if e["fit"] else "no")
            lines.append(
                f"| `{e['metric']}` | {_fmt_ci(e['spearman']['lc'], e['spearman_ci']['lc'])} "
                f"| {_fmt_ci(e['spearman']['win_rate'], e['spearman_ci']['win_rate'])} | {e['spearman']['avg_length']:+.2f} "
                f"| {_fmt_ci(items['agreement'], items['ci'], pct=True)} ({items['pairs']}) "
                f"| {_fmt_ci(matched['agreement'], matched['ci'], pct=True)} ({matched['pairs']}) | {adv} | {fit} |"
            )
        lines += ["", "ρ with LC, minus each baseline's (paired bootstrap 95% CI):", ""]
        for e in self.entries:
            if e["baseline"]:
                continue
            parts = [f"{b}: {_fmt_ci(v['difference'], v['ci'])}" for b, v in e["versus_baselines"].items()]
            lines.append(f"- `{e['metric']}`: " + "; ".join(parts))
        lines += ["", "Length-gamed variants of one model (members ordered by LC win rate; pairs the metric orders as LC does):", ""]
        for e in self.entries:
            fam = "; ".join(f"{f['family']} {f['pairs_ordered_as_lc']}/{f['pairs']}" for f in e["families"]) or "none in this folder"
            lines.append(f"- `{e['metric']}`: {fam}")
        not_fit = [e for e in self.entries if e["fit"] is False]
        if not_fit:
            lines += ["", "Why a metric is not fit:", ""]
            lines += [f"- `{e['metric']}`: " + "; ".join(e["not_fit_because"]) for e in not_fit]
        return "\n".join(lines) + "\n"

    def plot(self) -> Any:
        n = len(self.entries)
        cols = min(3, n)
        rows = math.ceil(n / cols)
        fig, axes = new_figure(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, e in zip(axes.flat, self.entries, strict=False):
            adversarial = set(e["adversarial"])
            for s, v in e["system_scores"].items():
                lc = e["leaderboard"][s]["lc"]
                ax.scatter(lc, v, s=14, color="tab:red" if s in adversarial else "tab:blue")
                if s in adversarial:
                    ax.annotate(s, (lc, v), fontsize=7, color="tab:red")
            ax.set_title(f"{e['metric']} (ρ = {e['spearman']['lc']:+.2f})", fontsize=9)
            ax.set_xlabel("AlpacaEval 2 LC win rate", fontsize=8)
            ax.set_ylabel("mean score", fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        fig.tight_layout()
        return fig


# ------------------------------------------------------------------------------------------------ a metric as a judge


def embedding_function(spec: str = "all-minilm-l6-v2", *, dtype: str = "bfloat16", cache: bool = True) -> tuple[Embed, "Embedder"]:
    """MiniLM (or ``spec``) in bf16, batches of 64, with the embedding cache (``$IIT_CACHE_DIR/embeddings``): what
    ``iit eval judge-agreement`` validated the metrics with. Returns the function and the embedder (for manifests)."""
    from implicit_it.embedding import Embedder, embed_unique
    from implicit_it.models import cache_root

    embedder = Embedder(spec, dtype=dtype, batch_size=64)
    cache_dir = cache_root() / "embeddings" if cache else None
    return (lambda texts: embed_unique(embedder, texts, cache_dir=cache_dir)), embedder


def default_embed() -> Embed:
    """The embedding the published table measured, so a ``metric:`` judge scores as validated."""
    return embedding_function()[0]


def gold_answers(judge: Any, path: str | Path | None) -> dict[str, str] | None:
    """Instruction -> gold answer from an AlpacaEval-style file (``eval_set.json``'s GPT-4 outputs), for a ``metric:``
    judge; None for any other judge or without a file."""
    if getattr(judge, "kind", None) != "metric" or not path:
        return None
    from .outputs import read_model_outputs

    return {o.instruction: o.output for o in read_model_outputs(path)}


def metric_annotations(
    pairs: Sequence[tuple[Any, Any]],
    metric_name: str,
    gold: Mapping[str, str] | None,
    *,
    generator: str,
    annotator: str,
    embed: Callable[[], Embed] = default_embed,
) -> list[dict[str, Any]]:
    """alpaca_eval-shaped annotations of (output_1, output_2) pairs (``ModelOutput`` objects, output_1 the reference
    system) judged by a metric against each instruction's gold answer: preference 2 when output_2 scores higher, 1 when
    lower, 1.5 on a tie."""
    if not gold:
        raise UserError(
            f"judge metric:{metric_name} needs gold answers (AlpacaEval's eval_set.json with its 'output' field): "
            "the instruction set of the run, or --eval-set"
        )
    missing = [o.instruction for _, o in pairs if o.instruction not in gold]
    if missing:
        raise UserError(f"judge metric:{metric_name}: {len(missing)} instruction(s) have no gold answer, e.g. {missing[0][:60]!r}")
    (metric,) = [m for m in build_metrics([metric_name], embed) if m.name == metric_name]
    instructions = [o.instruction for _, o in pairs]
    golds = [gold[i] for i in instructions]
    # one call for both sides, so identical outputs share one embedding and tie exactly (bf16 batches differ in padding)
    both = metric.score(instructions * 2, [r.output for r, _ in pairs] + [o.output for _, o in pairs], golds * 2)
    first, second = both[: len(pairs)], both[len(pairs) :]
    return [
        {
            "instruction": o.instruction,
            "output_1": r.output,
            "output_2": o.output,
            "generator_1": r.generator or "reference",
            "generator_2": generator,
            "dataset": o.dataset,
            "annotator": annotator,
            "preference": 1.5 if a == b else (2.0 if b > a else 1.0),
            "score_1": float(a),
            "score_2": float(b),
        }
        for (r, o), a, b in zip(pairs, first, second, strict=True)
    ]
