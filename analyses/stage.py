"""The diff and mech stages: what ``iit diff`` / ``iit mech`` and the pipeline's diff / mech steps call.

:func:`diff_runner` checks a :class:`~implicit_it.analyses.config.DiffConfig` before any model loads and builds the
:class:`~.layer_diff.LayerDiff`; :func:`diff` compares the base with one variant, saves every analysis result
(merged with earlier variants', side by side) and the texts the logit analyses read. :func:`mech` runs the causal
analyses (:mod:`.mechanism`) of one variant and saves them the same way. Manifests are the caller's."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from implicit_it.analysis import AnalysisResult, merge_by_name
from implicit_it.data import read_ranking_source
from implicit_it.errors import UserError
from implicit_it.io import atomic_write_jsonl
from implicit_it.lens import parse_layers
from implicit_it.rules import RuleConfig, load_rule_config

from .config import DiffConfig, MechConfig
from .delta_pass import DeltaPassConfig, DiffText, texts_from_source
from .layer_diff import LayerDiff, VariantDiff, merge_results, parse_analyses
from .mechanism import Mechanism
from .patching import Behaviour
from .rule_comparison import parse_vocab


@dataclass
class DiffStage:
    """One variant's diff and every result saved so far (this variant's merged with the earlier ones')."""

    diff: VariantDiff
    merged: dict[str, AnalysisResult]

    def summary(self) -> dict[str, Any]:
        """This variant's headline numbers (a pipeline step's record)."""
        results = self.diff.results
        out: dict[str, Any] = {"counts": self.diff.counts}
        if "rules" in results:
            rules = results["rules"].entries[0]
            out |= {k: rules[k] for k in ("variance_explained_rules", "variance_explained_rule_family", "emergence_layer")}
        if "logits" in results:
            out["kl_output"] = results["logits"].entries[0]["kl_output"]
        return out

    def merged_summary(self) -> dict[str, Any]:
        """The headline numbers of every variant so far, per analysis (a multi-variant manifest's results)."""
        merged, out = self.merged, {}
        keys = {
            "rules": (
                "variant",
                "variance_explained_rules",
                "variance_explained_rule_family",
                "emergence_layer",
                "fitted_seen_coefficient",
                "fitted_eos_slope",
            ),
            "shift": ("variant", "unshifted", "marginal", "shifted", "rule_token_share_of_moved"),
            "logits": ("variant", "kl_output", "kl_emergence_layer"),
            "weights": ("variant", "n_tensors_changed", "unembedding_rule_rows"),
        }
        for name, wanted in keys.items():
            if name in merged:
                out[name] = [{k: e[k] for k in wanted} for e in merged[name].entries]
        return out

    def lines(self) -> list[str]:
        """One line per variant and analysis, for a terminal."""
        merged, lines = self.merged, []
        for e in getattr(merged.get("rules"), "entries", []):
            lines.append(
                f"{e['variant']}: variance explained by the paper's rules {e['variance_explained_rules']:.3f}, by the fitted rule "
                f"family {e['variance_explained_rule_family']:.3f}; emergence layer {e['emergence_layer']}"
            )
        for e in getattr(merged.get("logits"), "entries", []):
            lines.append(
                f"{e['variant']}: KL(variant || base) at the output {e['kl_output']:.4f} nats; "
                f"reaches half of it at layer {e['kl_emergence_layer']}"
            )
        for e in getattr(merged.get("shift"), "entries", []):
            lines.append(
                f"{e['variant']}: greedy tokens unshifted {e['unshifted']:.3f} / marginal {e['marginal']:.3f} / shifted {e['shifted']:.3f}"
            )
        for e in getattr(merged.get("weights"), "entries", []):
            moved = max(e["tensors"], key=lambda t: t["relative_delta"] if t["relative_delta"] == t["relative_delta"] else -1)
            lines.append(
                f"{e['variant']}: {e['n_tensors_changed']} of {len(e['tensors'])} tensors changed; largest relative change "
                f"{moved['relative_delta']:.2e} in {moved['tensor']}"
            )
        return lines


def stage_texts(cfg: DiffConfig | MechConfig) -> list[DiffText]:
    """The texts the logit and causal analyses read: the first ``cfg.limit`` instructions of ``cfg.data``, each with its
    own response."""
    return texts_from_source(read_ranking_source(cfg.data, limit=cfg.limit))


def diff_runner(cfg: DiffConfig, *, fmt: str, seed: int = 0) -> LayerDiff:
    """The configured :class:`LayerDiff`; a bad layer spec, vocabulary, rules file or analysis option is an error now,
    before any model loads."""
    names = parse_analyses(",".join(cfg.analyses))  # 'all': every registered analysis, resolved now
    parse_layers(cfg.layers, 1_000_000)  # syntax only; the range is checked against the model
    parse_vocab(cfg.vocab)
    runner = LayerDiff(
        analyses=names,
        texts=list(cfg.texts),
        vocab=cfg.vocab,
        max_new_tokens=cfg.max_new_tokens,
        spectrum=cfg.spectrum,
        rule_config=load_rule_config(cfg.rules_config) if cfg.rules_config else RuleConfig(),
        pass_config=DeltaPassConfig(fmt=fmt, layers=cfg.layers, max_length=cfg.max_length, seed=seed),
        analysis_options=cfg.analysis_options,
    )
    runner.check_options()
    return runner


def needs_models(runner: LayerDiff) -> bool:
    """Weight deltas stream from the checkpoints; every other analysis needs both models loaded."""
    return list(runner.analyses) != ["weights"]


def diff(
    base: Any,
    variant: Any,
    cfg: DiffConfig,
    out_dir: str | Path,
    *,
    fmt: str,
    base_spec: str,
    variant_spec: str,
    seed: int = 0,
    label: str | None = None,
    runner: LayerDiff | None = None,
    data_texts: Sequence[DiffText],
    texts_file: str = "texts.jsonl",
    earlier: Sequence[VariantDiff] = (),
    progress: Callable[[str, int], Any] | None = None,
) -> DiffStage:
    """Compare ``base`` with ``variant`` (loaded models; None when only weights are diffed) and save into ``out_dir``:
    ``<analysis>.json`` (+ .parquet, .png) for every result, and ``texts_file`` with the texts the logit analyses read.
    ``data_texts``: the data file's texts (:func:`~.delta_pass.texts_from_source`); ``label`` names the variant in the
    entries (default: ``variant_spec``)."""
    out_dir = Path(out_dir)
    runner = runner if runner is not None else diff_runner(cfg, fmt=fmt, seed=seed)
    result = runner.run(base, variant, data_texts, base_spec=base_spec, variant_spec=variant_spec, progress=progress)
    if label is not None:
        for res in result.results.values():
            for entry in res.entries:
                entry["variant"] = label
    if result.texts:
        atomic_write_jsonl(
            out_dir / texts_file,
            [
                {"instruction": t.instruction, "response": t.response, "origin": t.origin, "instruction_index": t.instruction_index}
                for t in result.texts
            ],
        )
    merged = merge_results([*earlier, result])
    for res in merged.values():
        res.save(out_dir)
    return DiffStage(result, merged)


@dataclass
class MechStage:
    """One variant's causal results, those merged with earlier variants' (what was saved), and a summary."""

    results: dict[str, AnalysisResult]
    merged: dict[str, AnalysisResult]
    summary: dict[str, Any]

    def lines(self) -> list[str]:
        """One line per variant so far: the ``mechanism`` result's sentence (the smallest patch that recovers the
        threshold; it names the variant)."""
        return [str(e["sentence"]) for e in getattr(self.merged.get("mechanism"), "entries", [])]


def behaviour_generates(cfg: MechConfig) -> bool:
    """Whether the analyses generate on behaviour prompts (steering does, when ``behaviour_prompts`` > 0)."""
    return "steering" in cfg.analyses and cfg.behaviour_prompts > 0


def mech_data_files(cfg: MechConfig) -> list[str]:
    """The local files a mech run reads (its key and manifest hash them): the texts and, when steering generates on it, IFEval."""
    files = [cfg.data]
    if behaviour_generates(cfg) and cfg.behaviour_data is not None:
        files.append(cfg.behaviour_data)
    return [f for f in files if not f.startswith("hub:")]


def mech_runner(cfg: MechConfig, *, fmt: str, seed: int = 0, rules_config: str | None = None) -> Mechanism:
    """The configured :class:`Mechanism`; a bad layer or block spec is an error now, before any model loads."""
    for field_name in ("blocks", "layers"):
        try:
            parse_layers(getattr(cfg, field_name), 1_000_000)
        except ValueError as exc:
            raise UserError(f"{field_name}: {exc}") from None
    shared = {f.name for f in fields(Mechanism)} & set(MechConfig.model_fields)  # the options both name alike
    return Mechanism(
        **{name: getattr(cfg, name) for name in shared},
        fmt=fmt,
        seed=seed,
        rule_config=load_rule_config(rules_config) if rules_config else RuleConfig(),
    )


def mech_runner_check(cfg: MechConfig) -> None:
    """Raise ValueError naming the field for what can be checked before models load."""
    mech_runner(cfg, fmt="tulu")


def mech(
    base: Any,
    variant: Any,
    cfg: MechConfig,
    out_dir: str | Path,
    *,
    fmt: str,
    base_spec: str,
    variant_spec: str,
    label: str | None = None,
    seed: int = 0,
    data_texts: Sequence[DiffText],
    behaviour: Behaviour | None = None,
    earlier: Sequence[MechStage] = (),
    progress: Callable[[str, int], Any] | None = None,
) -> MechStage:
    """The causal analyses of ``variant`` against ``base`` (both loaded; the base's weights are swapped in place
    and restored exactly), saved into ``out_dir`` beside ``earlier`` variants' as ``<name>.json`` (+ .parquet, .png)."""
    runner = mech_runner(cfg, fmt=fmt, seed=seed)
    results, timings = runner.run(
        base, variant, data_texts, base_spec=base_spec, variant_spec=variant_spec, label=label, behaviour=behaviour, progress=progress
    )
    merged = merge_by_name([*(stage.results for stage in earlier), results])
    for res in merged.values():
        res.save(out_dir)
    summary = dict(results["mechanism"].entries[0])
    summary["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return MechStage(results, merged, summary)
