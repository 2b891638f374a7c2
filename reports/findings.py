"""A finished study's headline numbers as one JSON document, and the README section written from that document alone.

:func:`study_findings` reads a run directory (through :mod:`.collect`) and computes what a findings section quotes: IFEval
accuracies with 95% CIs on each system's own prompts and on the subset every system shares, paired tests (exact McNemar,
paired bootstrap CI) of the comparisons the paper's Tables 1, 3 and 4 make, ranking accuracy with a paired test on the
same pairs, the rule comparison and the smallest causal patches. :func:`findings_markdown` turns that document into
Markdown and reads nothing else, so a README generated from a published ``findings.json`` cannot drift from it
(``scripts/publish_cpu_study.py --check``). Every statement is worded from its p-value: a difference is claimed only
where p < 0.05, otherwise the CI says what the data still allow.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from implicit_it.stats import paired_comparison, wilson_interval

from . import paper
from .collect import RunData, StepRecord

FORMAT = 1
ALPHA = 0.05
REFERENCE_PREFIX = "reference-"


CONTROLS = ("delusive", "content_free")  # training.variants that are controls of instruction tuning


# -- reading the run ----------------------------------------------------------------------------------------------------


def _per_prompt(record: StepRecord) -> list[dict[str, Any]]:
    entries = record.results("ifeval.json")
    return entries[0].get("per_prompt", []) if entries else []


def _ifeval_outcomes(run: RunData) -> dict[str, dict[int, bool]]:
    """system -> IFEval prompt key -> prompt-level loose pass (the paper-independent headline metric)."""
    return {r.system: {row["key"]: bool(row["loose"]) for row in _per_prompt(r)} for r in run.stage("eval", set_name="ifeval")}


def _eos(run: RunData) -> dict[str, dict[int, bool]]:
    """system -> prompt key -> whether its IFEval generation ended with EOS (generation and scoring share prompt order)."""
    out: dict[str, dict[int, bool]] = {}
    rows = {r.system: _per_prompt(r) for r in run.stage("eval", set_name="ifeval")}
    for g in run.stage("generate", set_name="ifeval"):
        outputs, scored = g.read("outputs.json") or [], rows.get(g.system, [])
        if len(outputs) == len(scored) and all(o["output"] == s["response"] for o, s in zip(outputs, scored, strict=True)):
            out[g.system] = {s["key"]: bool(o.get("ended_with_eos")) for o, s in zip(outputs, scored, strict=True)}
    return out


def _rate(outcomes: dict[int, bool], keys: list[int]) -> dict[str, Any]:
    k = sum(outcomes[key] for key in keys)
    lo, hi = wilson_interval(k, len(keys))
    return {"accuracy": k / len(keys), "ci": [lo, hi], "n": len(keys)}


def _compare(a: str, b: str, outcomes: dict[str, dict[int, bool]], table: str) -> dict[str, Any] | None:
    if a not in outcomes or b not in outcomes:
        return None
    keys = sorted(set(outcomes[a]) & set(outcomes[b]))
    if not keys:
        return None
    test = paired_comparison(np.array([outcomes[a][k] for k in keys]), np.array([outcomes[b][k] for k in keys]))
    return {"table": table, "a": a, "b": b, **test.to_json()}


def _ifeval(run: RunData) -> dict[str, Any]:
    outcomes = _ifeval_outcomes(run)
    if not outcomes:
        return {}
    meta = {r.system: r.meta for r in run.stage("eval", set_name="ifeval")}
    subset = sorted(min((set(v) for v in outcomes.values()), key=len))  # the draw every system shares
    eos = _eos(run)
    systems = {}
    for name, rows in outcomes.items():
        own = sorted(rows)
        entry = {"label": meta[name].get("label", name), "seed": meta[name].get("seed"), "own": _rate(rows, own)}
        if set(subset) <= set(rows):
            entry["subset"] = _rate(rows, subset)
            if name in eos:
                entry["subset_eos"] = _rate(eos[name], subset)
        systems[name] = entry
    variants = [n for n in outcomes if meta[n].get("kind") == "variant"]
    rules = [n for n in outcomes if meta[n].get("kind") == "rules"]
    first = {}
    for n in variants:
        first.setdefault(meta[n].get("label"), n)
    instruction = first.get("instruction")
    comparisons = []
    for n in variants:
        table = "3" if meta[n]["label"].startswith("single_task") else "controls" if meta[n]["label"] in CONTROLS else "1"
        comparisons.append(_compare(n, "base", outcomes, table))
        if instruction and n != instruction:
            comparisons.append(_compare(n, instruction, outcomes, table))
    for n in rules:
        comparisons.append(_compare(n, "base", outcomes, "4"))
        if n != "rules" and "rules" in outcomes:
            comparisons.append(_compare(n, "rules", outcomes, "4"))
        if instruction:
            comparisons.append(_compare(n, instruction, outcomes, "4"))
    return {
        "metric": "prompt-level loose accuracy",
        "subset_n": len(subset),
        "systems": systems,
        "comparisons": [c for c in comparisons if c is not None],
    }


def _rank_outcomes(record: StepRecord) -> dict[tuple[int, int], bool]:
    """(instruction, candidate) -> whether the instruction's own response scored higher (ties lose, as the paper)."""
    import pandas as pd

    path = record.dir / "ranking_pairs.parquet"
    if not path.is_file():
        return {}
    df = pd.read_parquet(path)
    real = df[df.is_real].set_index("instruction_index")["mean_logprob"]
    negatives = df[~df.is_real]
    return {
        (int(i), int(c)): bool(real[i] > s)
        for i, c, s in zip(negatives.instruction_index, negatives.candidate, negatives.mean_logprob, strict=True)
    }


def _ranking(run: RunData) -> dict[str, Any]:
    records = {r.system: r for r in run.stage("rank")}
    if not records:
        return {}
    systems, outcomes = {}, {}
    for name, r in records.items():
        lw = r.results("layerwise_ranking.json")
        ci = r.summary.get("ci95") or [None, None]
        systems[name] = {
            "label": r.label,
            "accuracy": r.summary.get("accuracy"),
            "ci": ci,
            "n_pairs": r.summary.get("n_pairs"),
            "data": r.config.get("data"),
            "instructions": r.config.get("instructions"),
            "negatives": r.config.get("negatives"),
            "layers": [{"layer": x["layer"], "accuracy": x["accuracy"]} for x in (lw[0]["layers"] if lw else [])],
            "first_layer_above_0.6": lw[0].get("first_layer_above_0.6") if lw else None,
        }
        outcomes[name] = _rank_outcomes(r)
    comparisons = [_compare(n, "base", outcomes, "2") for n in records if n != "base" and outcomes.get(n)]
    return {"systems": systems, "comparisons": [c for c in comparisons if c is not None]}


def _ifsuite(run: RunData) -> dict[str, Any]:
    return {
        r.system: {k: r.summary.get(k) for k in ("strict_accuracy", "loose_accuracy", "n", "eos_fraction", "template_echo_rate")}
        for r in run.stage("eval", set_name="ifsuite")
        if not r.system.startswith(REFERENCE_PREFIX)
    }


def _diff(run: RunData) -> dict[str, Any]:
    return {
        r.system: {
            "r2_rule_family": r.summary.get("variance_explained_rule_family"),
            "r2_rules": r.summary.get("variance_explained_rules"),
            "kl_output": r.summary.get("kl_output"),
        }
        for r in run.stage("diff")
    }


def _mech(run: RunData) -> dict[str, Any]:
    steering = {e["variant"]: e for r in run.stage("mech") for e in r.results("steering.json")}
    out = {}
    for r in run.stage("mech"):
        s = r.summary
        name = s.get("variant", r.system)
        rules = steering.get(name, {}).get("rules", {})
        out[name] = {
            "threshold": s.get("threshold"),
            "smallest": s.get("smallest", {}),
            "rules_recovered_heldout": rules.get("recovered_heldout"),
            "sentence": s.get("sentence"),
            "seconds": round(r.seconds, 1),
        }
    return out


def _train(run: RunData) -> dict[str, Any]:
    keys = ("optimizer_steps", "tokens_seen", "final_loss", "val_nll", "heldout_nll", "train_seconds")
    out = {}
    for r in run.stage("train"):
        data = ((r.read("train_manifest.json") or {}).get("results") or {}).get("data") or {}
        out[r.system] = {k: r.summary.get(k) for k in keys} | {
            "examples": data.get("n_train_examples"),
            "dropped_overlong": data.get("n_dropped_overlong"),  # read before the first `examples` that fit were found
        }
    return out


def _study(run: RunData) -> dict[str, Any]:
    m = run.manifest or {}
    stage_seconds: dict[str, float] = {}
    for s in run.steps:
        stage_seconds[s.stage] = stage_seconds.get(s.stage, 0.0) + s.seconds
    config = m.get("config", {})
    return {
        "name": config.get("name"),
        "command": m.get("command"),
        "git": m.get("git"),
        "hardware": m.get("hardware"),
        "packages": {k: (m.get("packages") or {}).get(k) for k in ("torch", "transformers", "nnsight", "transformer-lens")},
        "model": config.get("model", {}).get("spec"),
        "steps": len(run.steps),
        "compute_seconds": round(sum(stage_seconds.values()), 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "train_examples": config.get("data", {}).get("max_train_examples"),
        "max_length": config.get("training", {}).get("max_length"),
        "epochs": config.get("training", {}).get("epochs"),
    }


def study_findings(run: RunData, *, sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the README's findings section quotes, computed from a finished run (and the epoch sweep's sweep.json)."""
    return {
        "format": FORMAT,
        "study": _study(run),
        "sweep": sweep,
        "train": _train(run),
        "ifeval": _ifeval(run),
        "ifsuite": _ifsuite(run),
        "ranking": _ranking(run),
        "diff": _diff(run),
        "mech": _mech(run),
    }


# -- the power calculation behind the study's IFEval sizes ---------------------------------------------------------------
def mcnemar_sample_size(p_a_only: float, p_b_only: float, *, alpha: float = ALPHA, power: float = 0.8) -> int:
    """Pairs McNemar's test needs to detect discordant rates ``p_a_only`` vs ``p_b_only`` (Connor 1987's normal
    approximation, two-sided): the number the study's IFEval sizes were chosen from."""
    from statistics import NormalDist

    z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    disc, diff = p_a_only + p_b_only, abs(p_a_only - p_b_only)
    if diff == 0:
        raise ValueError("equal discordant rates: no difference to detect")
    return int(np.ceil((z_a * np.sqrt(disc) + z_b * np.sqrt(disc - diff**2)) ** 2 / diff**2))


def detectable_difference(n: int, discordant: float, *, alpha: float = ALPHA, power: float = 0.8) -> float | None:
    """The smallest accuracy difference ``n`` pairs detect at ``power`` when a share ``discordant`` of prompts disagree;
    None when not even a difference of the whole discordant share is detectable."""
    if mcnemar_sample_size(discordant, 0.0, alpha=alpha, power=power) > n:
        return None
    lo, hi = 1e-4, discordant
    for _ in range(60):
        mid = (lo + hi) / 2
        p_b = (discordant - mid) / 2
        if mcnemar_sample_size(p_b + mid, p_b, alpha=alpha, power=power) > n:
            lo = mid
        else:
            hi = mid
    return hi


# -- writing the section ------------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _ci(ci: list[float] | tuple[float, float] | None) -> str:
    return "" if not ci or ci[0] is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _delta(c: dict[str, Any]) -> str:
    return f"{100 * c['difference']:+.1f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}], {_p(c['p_value'])}"


def verdict(c: dict[str, Any], a: str, b: str, what: str = "IFEval loose accuracy") -> str:
    """One sentence, only as strong as the test: a difference where p < 0.05, else what the CI still allows."""
    n = c["n"]
    if c["p_value"] < ALPHA:
        word = "higher" if c["difference"] > 0 else "lower"
        return f"{a} scores {word} than {b} on {what} ({_delta(c)}; {n} paired items)."
    return (
        f"{a} and {b} are not distinguishable on {what} ({_delta(c)}; {n} paired items): the 95% CI of the difference "
        f"runs from {100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f} points."
    )


def _comparison(f: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    return next((c for c in f.get("comparisons", []) if c["a"] == a and c["b"] == b), None)


def _seed_names(systems: dict[str, Any], label: str) -> list[str]:
    return sorted(n for n, s in systems.items() if s["label"] == label)


def _subset_cell(systems: dict[str, Any], label: str) -> str:
    """Subset accuracy of a label: the value and CI for one seed; mean ± std over seeds (their CIs in the JSON) for several."""
    names = [n for n in _seed_names(systems, label) if "subset" in systems[n]]
    if not names:
        return "–"
    if len(names) == 1:
        s = systems[names[0]]["subset"]
        return f"{_pct(s['accuracy'])}{_ci(s['ci'])}"
    vals = [100 * systems[n]["subset"]["accuracy"] for n in names]
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f} ({len(names)} seeds)"


def _eos_cell(systems: dict[str, Any], label: str) -> str:
    names = [n for n in _seed_names(systems, label) if "subset_eos" in systems[n]]
    vals = [100 * systems[n]["subset_eos"]["accuracy"] for n in names]
    if not vals:
        return "–"
    return f"{vals[0]:.0f}" if len(vals) == 1 else f"{statistics.mean(vals):.0f} ± {statistics.stdev(vals):.0f}"


def _first(systems: dict[str, Any], label: str) -> str | None:
    names = _seed_names(systems, label)
    return names[0] if names else None


def _tests(f: dict[str, Any], pairs: list[tuple[str | None, str | None]]) -> list[str]:
    lines = []
    for a, b in pairs:
        c = _comparison(f, a, b) if a and b else None
        if c:
            lines.append(f"- {verdict(c, a, b)}")  # type: ignore[arg-type]
    return lines


def _if_table(f: dict[str, Any], labels: list[str], paper_table: dict[str, dict[str, str]], models: tuple[str, ...]) -> list[str]:
    systems, n = f["systems"], f["subset_n"]
    base = _first(systems, "base")
    head = [
        "system",
        f"IFEval loose % [95% CI], {n}-prompt subset",
        "IFEval, all prompts",
        f"Δ vs base, points [95% CI], McNemar p ({n} prompts unless all)",
        "ends with EOS %",
        *(f"paper {m}: AlpacaEval 2 LC win % vs instruction-tuned" for m in models),
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        name = _first(systems, label)
        if name is None:
            continue
        own = systems[name]["own"]
        full = f"{_pct(own['accuracy'])}{_ci(own['ci'])} ({own['n']})" if own["n"] > n else "–"
        c = _comparison(f, name, base) if base and name != base else None
        seeds = _seed_names(systems, label)
        shown = label if len(seeds) < 2 else f"{label} (seeds {', '.join(s.rsplit('.s', 1)[1] for s in seeds)})"
        rows.append(
            "| "
            + " | ".join(
                [
                    shown,
                    _subset_cell(systems, label),
                    full,
                    _delta(c) + ("" if c["n"] == n else f" ({c['n']} prompts)") if c else "–",
                    _eos_cell(systems, label),
                    *paper.paper_cells(paper_table, label, models),
                ]
            )
            + " |"
        )
    return rows


def _in_short(f: dict[str, Any], resp: str | None, inst: str | None) -> list[str]:
    """The headline verdicts, each worded from its own test."""
    ife, rk, lines = f["ifeval"], f["ranking"], []
    c = _comparison(ife, resp, "base") if resp else None
    if c:
        lines.append(f"- **Response tuning:** {verdict(c, resp, 'base')}")  # type: ignore[arg-type]
    c = _comparison(ife, inst, "base") if inst else None
    if c:
        lines.append(f"- **Instruction tuning:** {verdict(c, inst, 'base')}")  # type: ignore[arg-type]
    for c in rk.get("comparisons", []) if rk else []:
        if c["a"] == inst:
            lines.append(f"- **Ranking (base already ranks):** {verdict(c, c['a'], c['b'], 'response ranking accuracy')}")
    c = _comparison(ife, "rules", "base")
    if c:
        eos = ife["systems"]["rules"].get("subset_eos", {}).get("accuracy")
        base_eos = ife["systems"]["base"].get("subset_eos", {}).get("accuracy")
        extra = f" Its responses end with EOS {_pct(eos, 0)}% of the time (base {_pct(base_eos, 0)}%)." if eos is not None else ""
        lines.append(f"- **Rule adapter:** {verdict(c, 'rules', 'base')}{extra}")
    mech = f.get("mech") or {}
    if mech:
        ranks = [m["smallest"]["rank"] for m in mech.values() if m["smallest"].get("rank")]
        modules = [m["smallest"]["modules"] for m in mech.values() if m["smallest"].get("modules")]
        vectors = [m["smallest"]["vector"]["recovered"] for m in mech.values() if m["smallest"].get("vector")]
        rules = [m["rules_recovered_heldout"] for m in mech.values() if m["rules_recovered_heldout"] is not None]
        parts = []
        if modules:
            parts.append(
                "fewest modules reaching the threshold: "
                + ", ".join(f"{n} {m['smallest']['modules']['what']}" for n, m in mech.items() if m["smallest"].get("modules"))
            )
        if ranks:
            lo, hi = min(r["recovered"] for r in ranks), max(r["recovered"] for r in ranks)
            parts.append(f"lowest rank per matrix: {', '.join(r['what'] for r in ranks)} ({_pct(lo, 0)}–{_pct(hi, 0)}%)")
        if vectors:
            parts.append(f"one steering vector recovers {_pct(min(vectors), 0)}–{_pct(max(vectors), 0)}% on held-out texts")
        if rules:
            parts.append(f"the rule adapter {_pct(min(rules), 0)} to {_pct(max(rules), 0)}%")
        lines.append(f"- **Mechanism ({len(mech)} variants, one seed, {_mech_texts(f)}):** " + "; ".join(parts) + ".")
    return ["**In short** (each sentence as strong as its test: p < 0.05, exact McNemar, two-sided):", "", *lines, ""] if lines else []


def _mech_texts(f: dict[str, Any]) -> str:
    return "held-out LIMA validation texts"


def _sizes(f: dict[str, Any]) -> list[str]:
    """Why the IFEval sets have the sizes they have (the power calculation, from the demo run's outcomes)."""
    p = f.get("power")
    if not p:
        return []
    full = p["detectable_points_full"]
    subset = p["detectable_points_subset"]
    return [
        f"*Why these sizes:* in the demo run ({p['demo_prompts']} IFEval prompts) base and response-tuned passed "
        f"{_pct(p['demo_base_accuracy'], 0)}% and {_pct(p['demo_response_accuracy'], 0)}%, disagreeing on "
        f"{p['demo_base_only']} + {p['demo_response_only']} prompts. McNemar's test needs {p['prompts_needed']} prompts to "
        f"detect that gap with 80% power at α = 0.05, so the pair the study must decide (base, response-tuned seed 0) is "
        f"scored on all {p['study_full']} prompts"
        + (f" (detectable gap at the demo's discordance: {full:.1f} points)" if full is not None else "")
        + f"; every other system on a stratified {p['study_subset']}-prompt subset, which "
        + (
            f"detects gaps of {subset:.1f} points or more."
            if subset is not None
            else "cannot decide a gap of that size: its rows describe, they do not decide."
        ),
        "",
    ]


def findings_markdown(f: dict[str, Any]) -> str:
    """The README's "Findings on Gemma-3-270M" body, from :func:`study_findings`'s document alone."""
    st, ife, rk = f["study"], f["ifeval"], f["ranking"]
    systems = ife["systems"]
    minutes = st["compute_seconds"] / 60
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(st["stage_seconds"].items(), key=lambda kv: -kv[1]))
    hw = st.get("hardware") or {}
    sweep = f.get("sweep") or {}
    sweep_text = (
        "; epochs chosen by `iit sweep` on "
        + str(sweep.get("variant"))
        + " ("
        + ", ".join(f"{p['epochs']:g}: {sweep.get('metric')} {p[sweep.get('metric')]:.4f}" for p in sweep.get("points", []))
        + f" → {sweep.get('selected_epochs'):g})"
        if sweep
        else ""
    )
    git = st.get("git") or {}
    resp, inst = _first(systems, "response"), _first(systems, "instruction")
    out = _in_short(f, resp, inst) + [
        f"Measured by `iit run configs/cpu-study.yaml` ({st['steps']} steps, {minutes:.0f} min of compute on a "
        f"{hw.get('cpu_count', '?')}-core CPU, torch {st['packages'].get('torch')}, commit {str(git.get('commit', '?'))[:7]}"
        f"{' (dirty)' if git.get('dirty') else ''}) on google/gemma-3-270m as the **Q4_K_M GGUF dequantized to fp32**: "
        f"{st['train_examples']} training examples per variant that fit {st['max_length']} tokens whole, {st['epochs']:g} "
        f"epoch{'s' if st['epochs'] != 1 else ''}{sweep_text}. A small model and little data: read every row as "
        '"on this model, at this scale". The paper\'s numbers (Llama-2-7B and OLMo-7B, AlpacaEval 2 judged by GPT-4) sit '
        "beside ours for reference only; ours are IFEval (judge-free), a different metric. Every number below is in "
        "`docs/results/cpu-study/findings.json`; `python scripts/publish_cpu_study.py` regenerates this section from it "
        f"and a test checks they agree. Stage minutes: {stages}.",
        "",
        *_sizes(f),
        "**Table 1 — response tuning.**",
        "",
        *_if_table(ife, ["base", "instruction", "response"], paper.WIN_RATE_VS_INSTRUCTION, paper.MODELS),
        "",
    ]
    out += _tests(ife, [(resp, "base"), *[(s, "base") for s in _seed_names(systems, "response")[1:]], (inst, "base"), (resp, inst)])
    controls = [c for c in CONTROLS if _first(systems, c)]
    if controls:
        out += [
            "",
            "**Controls — does instruction tuning need the right instruction?** delusive: each response under another "
            "example's instruction; content_free: one fixed instruction everywhere (Kung & Peng 2023).",
            "",
            *_if_table(ife, ["base", "instruction", *controls], {}, ()),
            "",
        ]
        out += _tests(ife, [pair for c in controls for pair in ((_first(systems, c), inst), (_first(systems, c), "base"))])
    out += ["", "**Table 2 — response ranking** (an instruction's own response against another's, mean log-prob; ties lose).", ""]
    if rk:
        any_sys = next(iter(rk["systems"].values()))
        head = ["system", "accuracy % [95% CI]", "pairs", "lens: first layer ≥ 60%", "lens accuracy by layer %"]
        head += [f"paper {m} %" for m in paper.MODELS]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in rk["systems"].values():
            layers = ", ".join(f"L{x['layer']} {100 * x['accuracy']:.0f}" for x in s["layers"])
            first = s["first_layer_above_0.6"]
            out.append(
                f"| {s['label']} | {_pct(s['accuracy'])}{_ci(s['ci'])} | {s['n_pairs']} | {'–' if first is None else first} | "
                f"{layers or '–'} | " + " | ".join(paper.paper_cells(paper.RANKING, s["label"])) + " |"
            )
        out += [
            "",
            f"Data: {any_sys['data']}, the first {any_sys['instructions']} instructions × {any_sys['negatives']} other "
            "responses (the paper: the Alpaca training set). Paired on the same pairs:",
            "",
        ]
        out += [f"- {verdict(c, c['a'], c['b'], 'ranking accuracy')}" for c in rk["comparisons"]]
    out += ["", "**Table 3 — single-task finetuning** (general instructions after training on one narrow task).", ""]
    single = sorted({s["label"] for s in systems.values() if s["label"].startswith("single_task")})
    out += _if_table(ife, ["base", *single], paper.WIN_RATE_VS_INSTRUCTION, paper.MODELS)
    out += ["", *_tests(ife, [(_first(systems, lbl), "base") for lbl in single] + [(_first(systems, lbl), inst) for lbl in single])]
    out += ["", "**Table 4 — the rule-based adapter and its ablations** (no training).", ""]
    rules = [lbl for lbl in ("rules", "rules-no_eos", "rules-no_uniform", "rules-no_diversity") if _first(systems, lbl)]
    out += _if_table(ife, ["base", *rules], paper.RULES, ("Llama-2-7B",))
    out += ["", *_tests(ife, [("rules", "base"), *[(r, "rules") for r in rules[1:]], ("rules", inst)])]
    out += ["", "**Where the change lives, and how rule-like it is** (causal analyses on held-out LIMA texts).", ""]
    head = [
        "variant",
        "fewest modules",
        "lowest rank",
        "one steering vector (held-out)",
        "rule adapter (held-out)",
        "R² of Δ log p: rule family / paper's rules",
    ]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in f["mech"].items():
        cells = []
        for kind in ("modules", "rank", "vector"):
            s = m["smallest"].get(kind)
            cells.append(f"{s['what']}: {_pct(s['recovered'], 0)}%" if s else "–")
        d = f["diff"].get(name, {})
        r2 = "–" if d.get("r2_rule_family") is None else f"{d['r2_rule_family']:.3f} / {d['r2_rules']:.4f}"
        rules_cell = "–" if m["rules_recovered_heldout"] is None else f"{_pct(m['rules_recovered_heldout'], 0)}%"
        out.append(f"| {name} | " + " | ".join([*cells, rules_cell, r2]) + " |")
    threshold = next((m["threshold"] for m in f["mech"].values()), None)
    out += [
        "",
        "Recovered = 1 − KL(variant ‖ patched base) / KL(variant ‖ base) at response positions; each cell is the smallest "
        f"patch of its kind reaching {_pct(threshold, 0)}% (or the best one, when none does).",
    ]
    return "\n".join(out)


def read_sweep(path: str | Path) -> dict[str, Any] | None:
    from .collect import read_json

    p = Path(path)
    return read_json(p) if p.is_file() else None


__all__ = [
    "FORMAT",
    "study_findings",
    "findings_markdown",
    "verdict",
    "mcnemar_sample_size",
    "detectable_difference",
    "read_sweep",
]
