"""``iit eval``: AlpacaEval with a pluggable judge, the judge-free IF suite, behaviour metrics,
and the paper's similarity analysis. Each subcommand writes ``DIR/<name>.json`` (+ .parquet,
.png) and ``DIR/manifest.json``, atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from implicit_it.config import MAX_SEED, GenerateConfig, IfsuiteGenerateConfig
from implicit_it.errors import UserError
from implicit_it.evaluation.config import IfevalCommandConfig, JudgeConfig
from implicit_it.paths import check_writable

from .common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORMAT_OPTION,
    OUT_DIR_OPTION,
    QUIET_OPTION,
    RULES_CONFIG_OPTION,
    RULES_OPTION,
    command_line,
    console,
    user_errors,
)
from .generating import ModelRequest
from .options import stage_options

eval_app = typer.Typer(
    help="Evaluate instruction following: AlpacaEval (judged), IF suite and behaviour (judge-free), similarity.", no_args_is_help=True
)


def _save_behaviour(out: Path, outputs, label: str) -> dict:
    from implicit_it.evaluation import write_behaviour

    return write_behaviour(out, [o.output for o in outputs], [o.ended_with_eos for o in outputs], label)


def _behaviour_line(m: dict) -> str:
    eos = "unknown" if m["eos_fraction"] is None else f"{m['eos_fraction']:.1%}"
    return (
        f"behaviour: EOS {eos}, template echo {m['template_echo_rate']:.1%}, repetition(3-gram) "
        f"{(m['repetition_3gram'] or 0):.3f}, mean {m['mean_length_words']:.0f} words"
    )


@eval_app.command("alpaca")
@user_errors
@stage_options(JudgeConfig)
def alpaca(
    cfg: JudgeConfig,
    out: Path = OUT_DIR_OPTION,
    outputs: Optional[Path] = typer.Option(None, "--outputs", help="Model outputs, AlpacaEval JSON list (what `iit generate` writes)."),
    reference: Optional[str] = typer.Option(
        None,
        "--reference",
        help="Reference outputs (AlpacaEval JSON list), or 'alpaca_eval' for the library's own from the hub. Output_1 of every comparison.",
    ),
    annotations: Optional[Path] = typer.Option(
        None,
        "--annotations",
        help="Score stored alpaca_eval annotations instead (no judge called), e.g. a leaderboard model's annotations.json.",
    ),
    eval_set: Optional[Path] = typer.Option(
        None, "--eval-set", help="AlpacaEval's 805-instruction set (JSON list), to place instructions for LC (default: --reference)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N model outputs (a subset: see LC notes)."),
    generator: Optional[str] = typer.Option(None, "--generator", help="Name of the evaluated model (default: from the outputs)."),
) -> None:
    """AlpacaEval 2 win rate (and length-controlled win rate where alpaca_eval's LC data is available)."""
    from implicit_it.evaluation import (
        alpaca_scores,
        alpaca_stage,
        annotations_frame,
        find_lc_data,
        generator_name,
        parse_judge,
        read_model_outputs,
    )
    from implicit_it.manifest import build_manifest, write_manifest

    t0 = time.perf_counter()
    check_writable(out, directory=True)  # before the judge is called
    data_files: list[Path] = []
    judge, judge_model, lc_data = cfg.judge, cfg.judge_model, cfg.lc_data
    lc = find_lc_data(lc_data)
    if annotations is not None:
        if outputs is not None:
            raise UserError("give --outputs (to judge) or --annotations (already judged), not both")
        frame = annotations_frame(annotations)
        frame = frame.iloc[:limit] if limit is not None else frame
        judge_name = (
            str(frame["annotator"].dropna().iloc[0]) if "annotator" in frame.columns and frame["annotator"].notna().any() else "stored"
        )
        eval_instructions = None
        ref_path = eval_set or (Path(reference) if reference and reference != "alpaca_eval" else None)
        if ref_path is not None:
            eval_instructions = [r.instruction for r in read_model_outputs(ref_path)]
            data_files.append(ref_path)
        data_files.append(annotations)
        judge_info = {"name": judge_name, "kind": "stored annotations"}
        stage = alpaca_scores(frame, out, judge_name=judge_name, lc=lc, eval_set=eval_instructions)
    else:
        if outputs is None or reference is None:
            raise UserError("--outputs and --reference are required (or --annotations to score stored judgements)")
        if judge is None:
            raise UserError("--judge: name the judge (gpt4_turbo, an OpenAI-compatible server URL, local:SPEC or metric:NAME)")
        judge_obj = parse_judge(judge, judge_model)
        judge_obj.preflight()  # before any work: no key / server down / no model is one clear error
        name = generator or generator_name(read_model_outputs(outputs, limit=limit), outputs.stem)
        eval_instructions = [r.instruction for r in read_model_outputs(eval_set)] if eval_set else None
        data_files += [p for p in (outputs, Path(reference), eval_set) if p is not None]
        console.print(f"judging with {judge_obj.name} (cached in {out / 'judge_cache.json'})", highlight=False)
        stage = alpaca_stage(
            outputs,
            reference,
            out,
            judge=judge_obj,
            generator=name,
            cache_path=out / "judge_cache.json",
            gold_answers_path=eval_set,
            lc=lc,
            eval_set=eval_instructions,
            limit=limit,
        )
        judge_name, judge_info = judge_obj.name, judge_obj.describe()
    metrics = stage.result.entries[0]
    write_manifest(
        out,
        build_manifest(
            command=command_line(),
            seed=None,
            data_files=data_files + [p for p in lc.files.values()],
            config={
                "outputs": str(outputs) if outputs else None,
                "reference": reference,
                "annotations": str(annotations) if annotations else None,
                "judge": judge_info,
                "lc_data": {k: str(v) for k, v in lc.files.items()},
                "eval_set": str(eval_set) if eval_set else None,
                "limit": limit,
                "metric_functions": ["alpaca_eval.metrics.get_winrate", "alpaca_eval.metrics.get_length_controlled_winrate"],
            },
            results=dict(metrics),
            timings={"total": round(time.perf_counter() - t0, 2)},
        ),
    )
    lc_text = (
        f"LC {metrics['lc_win_rate']:.2f} ± {metrics['lc_standard_error']:.2f} ({metrics['lc_scope']})"
        if metrics["lc_win_rate"] is not None
        else metrics["lc_note"]
    )
    console.print(
        f"win rate {metrics['win_rate']:.2f} ± {metrics['standard_error']:.2f} (n={metrics['n']}, judge {judge_name}); {lc_text}",
        highlight=False,
    )
    console.print(f"wrote {out}/alpaca_eval.json (+ .parquet, .png), annotations.json, manifest.json", highlight=False)


def _model_or_outputs(model: str | None, outputs: Path | None, out: Path) -> None:
    """A scoring command either generates (``--model``) or scores given responses (``--outputs``); either way its output
    folder must be writable before any work."""
    if (model is None) == (outputs is None):
        raise UserError("give --model (generate, then score) or --outputs (score given responses)")
    check_writable(out, directory=True)


def decoding(cfg: GenerateConfig) -> GenerateConfig:
    """The decoding fields of a command's config (which may hold more, e.g. which prompts), as a GenerateConfig."""
    return GenerateConfig.model_validate(cfg.model_dump(include=set(GenerateConfig.model_fields)))


def _generate_outputs(out: Path, instructions: list[str], dataset: str, request: ModelRequest, cfg: GenerateConfig):
    """Greedy responses of the requested model (optionally with the rule adapter), written to ``out/outputs.json`` first.

    Returns (outputs, label, model description, generation config) for the caller's scoring and manifest."""
    from implicit_it.evaluation import ModelOutput
    from implicit_it.generation import alpaca_eval_records
    from implicit_it.io import atomic_write_json

    gen = request.generate(instructions, cfg)
    atomic_write_json(Path(out) / "outputs.json", alpaca_eval_records(gen.results, gen.label, dataset))
    outputs = [ModelOutput(r.instruction, r.output, gen.label, dataset, r.stopped) for r in gen.results]
    return outputs, gen.label, gen.model, gen.config(cfg)


@eval_app.command("ifeval")
@user_errors
@stage_options(IfevalCommandConfig)
def ifeval(
    cfg: IfevalCommandConfig,
    out: Path = OUT_DIR_OPTION,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model SPEC to generate with (greedy, KV-cached)."),
    outputs: Optional[Path] = typer.Option(
        None,
        "--outputs",
        help="Score these responses instead of generating: IFEval's "
        "{prompt, response} JSONL, or AlpacaEval-format outputs (what `iit generate` writes).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the stratified subset and of the bootstrap."),
    fmt: str = FORMAT_OPTION,
    rules: Optional[str] = RULES_OPTION,
    rules_config: Optional[Path] = RULES_CONFIG_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """IFEval (Zhou et al. 2023): the official verifiers, prompt- and instruction-level accuracy, strict and loose, with 95% CIs."""
    from implicit_it.evaluation import ifeval_stage
    from implicit_it.evaluation.ifeval import METRICS, load_ifeval, read_ifeval_responses
    from implicit_it.manifest import build_manifest, write_manifest

    t0 = time.perf_counter()
    described, gen_config = None, None
    _model_or_outputs(model, outputs, out)
    data, limit = cfg.ifeval_data, cfg.ifeval_prompts
    prompts = load_ifeval(data, limit=limit, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    if outputs is not None:
        stage = ifeval_stage(prompts, read_ifeval_responses(outputs), out, model=outputs.stem, seed=seed)
    else:
        request = ModelRequest(model, fmt, rules, rules_config, dtype, device, quiet)
        scored, label, described, gen_config = _generate_outputs(out, [p.prompt for p in prompts], "ifeval", request, decoding(cfg))
        texts = [o.output for o in scored]
        stage = ifeval_stage(prompts, texts, out, model=label, seed=seed, outputs=(texts, [o.ended_with_eos for o in scored]))
    summary = stage.result.entries[0]
    metrics = {k: summary[k] for k in METRICS}
    write_manifest(
        out,
        build_manifest(
            command=command_line(),
            seed=seed,
            model=described,
            data_files=[p for p in (None if data.startswith("hub:") else data, outputs) if p is not None],
            config={"model": model, "outputs": str(outputs) if outputs else None, "data": data, "limit": limit, "generation": gen_config},
            results=stage.summary,
            timings={"total": round(time.perf_counter() - t0, 2)},
        ),
    )
    name = summary["model"]
    console.print(f"{name}: IFEval on {summary['n_prompts']} prompts ({summary['n_instructions']} instructions)", highlight=False)
    for k, v in metrics.items():
        console.print(f"  {k.replace('_', ' '):<20} {v['accuracy']:.2%}  [{v['ci_low']:.1%}, {v['ci_high']:.1%}]", highlight=False)
    if summary["n_matched_by_position"]:
        console.print(f"  {summary['n_matched_by_position']} response(s) matched by position (prompt text differs)", highlight=False)
    console.print(f"wrote {out}/ifeval.json (+ .parquet, .png), manifest.json", highlight=False)


@eval_app.command("ifsuite")
@user_errors
@stage_options(IfsuiteGenerateConfig)
def ifsuite(
    cfg: IfsuiteGenerateConfig,
    out: Path = OUT_DIR_OPTION,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model SPEC to generate with (greedy, KV-cached)."),
    outputs: Optional[Path] = typer.Option(None, "--outputs", help="Score these AlpacaEval-format outputs instead of generating."),
    fmt: str = FORMAT_OPTION,
    rules: Optional[str] = RULES_OPTION,
    rules_config: Optional[Path] = RULES_CONFIG_OPTION,
    suite: Optional[Path] = typer.Option(None, "--suite", help="Prompts JSONL (default: the packaged suite)."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Judge-free instruction following: verifiable constraints (counts, casing, JSON, ...), strict and loose accuracy."""
    from implicit_it.evaluation import generator_name, ifsuite_stage, load_suite, read_model_outputs
    from implicit_it.manifest import build_manifest, write_manifest

    t0 = time.perf_counter()
    described, gen_config = None, None
    _model_or_outputs(model, outputs, out)
    limit = cfg.ifsuite_prompts
    prompts = load_suite(suite, limit=limit)
    if outputs is not None:
        given = read_model_outputs(outputs)
        by_instruction = {o.instruction: o for o in given}
        label = generator_name(given, outputs.stem)
        responses = {k: v.output for k, v in by_instruction.items()}
        scored = [by_instruction[p.instruction] for p in prompts if p.instruction in by_instruction]
    else:
        request = ModelRequest(model, fmt, rules, rules_config, dtype, device, quiet)
        scored, label, described, gen_config = _generate_outputs(out, [p.instruction for p in prompts], "ifsuite", request, decoding(cfg))
        responses = [o.output for o in scored]
    stage = ifsuite_stage(prompts, responses, out, model=label, outputs=([o.output for o in scored], [o.ended_with_eos for o in scored]))
    behaviour = stage.behaviour
    summary = stage.result.entries[0]
    write_manifest(
        out,
        build_manifest(
            command=command_line(),
            seed=None,
            model=described,
            data_files=[p for p in (suite, outputs) if p is not None],
            config={
                "model": model,
                "outputs": str(outputs) if outputs else None,
                "suite": str(suite) if suite else "packaged",
                "limit": limit,
                "generation": gen_config,
            },
            results={**stage.summary, "behaviour": behaviour},
            timings={"total": round(time.perf_counter() - t0, 2)},
        ),
    )
    console.print(
        f"{label}: strict {summary['strict_accuracy']:.1%}, loose {summary['loose_accuracy']:.1%} over {summary['n']} prompts",
        highlight=False,
    )
    for cat, row in summary["per_category"].items():
        console.print(
            f"  {cat:<20} strict {row['strict_accuracy']:.0%}  loose {row['loose_accuracy']:.0%}  (n={row['n']})", highlight=False
        )
    gate = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["not_an_answer"].items() if v)
    if gate:
        console.print(f"  not an answer (fail every check): {gate}", highlight=False)
    console.print(_behaviour_line(behaviour), highlight=False)
    console.print(f"wrote {out}/ifsuite.json (+ .parquet, .png), behaviour.json, manifest.json", highlight=False)


@eval_app.command("behaviour")
@user_errors
def behaviour(
    outputs: Path = typer.Option(..., "--outputs", help="AlpacaEval-format outputs (JSON list)."),
    out: Path = OUT_DIR_OPTION,
) -> None:
    """EOS-terminated fraction, repetition (distinct n-grams), template echo and length of any outputs."""
    from implicit_it.evaluation import read_model_outputs
    from implicit_it.manifest import build_manifest, write_manifest

    check_writable(out, directory=True)
    given = read_model_outputs(outputs)
    metrics = _save_behaviour(out, given, outputs.stem)
    write_manifest(
        out, build_manifest(command=command_line(), seed=None, data_files=[outputs], config={"outputs": str(outputs)}, results=metrics)
    )
    console.print(_behaviour_line(metrics), highlight=False)


@eval_app.command("similarity")
@user_errors
def similarity(
    outputs: Path = typer.Option(..., "--outputs", help="The model's outputs on general instructions (AlpacaEval JSON list)."),
    domain: Path = typer.Option(..., "--domain", help="The finetuning domain's data (chat JSONL, e.g. gsm8k/train_1k.jsonl)."),
    general: Path = typer.Option(..., "--general", help="General instruction data (chat JSONL, e.g. lima/train.jsonl)."),
    out: Path = OUT_DIR_OPTION,
    embedder: str = typer.Option(
        "all-minilm-l6-v2",
        "--embedder",
        help="sentence-transformers model: all-minilm-l6-v2 (installed from PyPI) or a model path / hub id.",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=3, help="Only the first N outputs."),
    domain_limit: Optional[int] = typer.Option(None, "--domain-limit", min=1, help="Only the first N domain examples."),
    general_limit: Optional[int] = typer.Option(None, "--general-limit", min=1, help="Only the first N general examples."),
    device: str = typer.Option("cpu", "--device", help="Embedder device."),
) -> None:
    """Paper Fig. 5: instruction similarity to the finetuning domain vs the response's domain − general similarity."""
    from implicit_it.evaluation import DomainSimilarity, Embedder, SimilarityConfig, generator_name, load_examples, read_model_outputs
    from implicit_it.manifest import build_manifest, write_manifest

    t0 = time.perf_counter()
    check_writable(out, directory=True)  # before the embedder runs
    given = read_model_outputs(outputs, limit=limit)
    analysis = DomainSimilarity(
        load_examples(domain, limit=domain_limit),
        load_examples(general, limit=general_limit),
        SimilarityConfig(domain_name=domain.parent.name or domain.stem, general_name=general.parent.name or general.stem),
    )
    emb = Embedder(embedder, device=device)
    result = analysis.run(emb, [o.instruction for o in given], [o.output for o in given], model=generator_name(given, outputs.stem))
    result.save(out)
    entry = result.entries[0]
    write_manifest(
        out,
        build_manifest(
            command=command_line(),
            seed=None,
            data_files=[outputs, domain, general],
            model={"embedder": embedder, "path": emb.path},
            config={
                "outputs": str(outputs),
                "domain": str(domain),
                "general": str(general),
                "limit": limit,
                "domain_limit": domain_limit,
                "general_limit": general_limit,
            },
            results={k: v for k, v in entry.items() if k != "points"},
            timings={"total": round(time.perf_counter() - t0, 2)},
        ),
    )
    t = entry["trend"]
    console.print(
        f"{entry['model']} vs {entry['domain']}: slope {t['slope']:.3f} ± {t['slope_stderr']:.3f}, r = {t['pearson_r']:.3f} "
        f"(p = {t['p_value']:.2g}, n = {entry['n']}); {entry['share_closer_to_domain']:.0%} of responses closer to "
        f"{entry['domain']} than to {entry['general']}",
        highlight=False,
    )
    console.print(f"wrote {out}/similarity.json (+ .parquet, .png), manifest.json", highlight=False)


@eval_app.command("paired")
@user_errors
def paired(
    samples_a: Path = typer.Argument(..., help="System A's lm-eval samples file (samples_<task>_<time>.jsonl, from --log_samples)."),
    samples_b: Path = typer.Argument(..., help="System B's samples file for the same task."),
    metric: Optional[list[str]] = typer.Option(
        None, "--metric", help="Only this metric (repeatable; default: every metric both logs carry)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write paired.json and manifest.json here."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the bootstrap and of the sign flips."),
) -> None:
    """Paired tests of two systems on the same lm-eval task, from their per-sample logs (exact McNemar; clustered)."""
    from implicit_it.evaluation.paired import paired_tests, read_sample_log
    from implicit_it.io import atomic_write_json
    from implicit_it.manifest import build_manifest, write_manifest

    if out is not None:
        check_writable(out, directory=True)
    a, b = read_sample_log(samples_a), read_sample_log(samples_b)
    results = paired_tests(a, b, metrics=metric, seed=seed)
    console.print(f"A = {samples_a}\nB = {samples_b}", highlight=False, soft_wrap=True)
    for r in results:
        console.print(
            f"  {r.metric:<26} {r.filter:<8} A {r.value_a:.3f}  B {r.value_b:.3f}  A-B {r.difference:+.3f} "
            f"[{r.ci[0]:+.3f}, {r.ci[1]:+.3f}]  p = {r.p_value:.3g}  (n = {r.n_docs} docs; {r.kind})",
            highlight=False,
            soft_wrap=True,
        )
    if out is not None:
        rows = [r.to_json() for r in results]
        atomic_write_json(out / "paired.json", {"a": str(samples_a), "b": str(samples_b), "tests": rows})
        config = {"a": str(samples_a), "b": str(samples_b), "metrics": metric}
        write_manifest(
            out,
            build_manifest(command=command_line(), seed=seed, data_files=[samples_a, samples_b], config=config, results={"tests": rows}),
        )
        console.print(f"wrote {out}/paired.json, manifest.json", highlight=False)


@eval_app.command("judge-agreement")
@user_errors
def judge_agreement(
    judged: Path = typer.Option(
        ..., "--judged", help="Folder of judged outputs: <system>.json.gz, leaderboard.csv, eval_set.json in it or beside it."
    ),
    metric: Optional[list[str]] = typer.Option(
        None, "--metric", help="A metric to validate (repeatable; default: all). The length baselines always run."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Also write judge_agreement.json/.md/.parquet/.png and manifest.json here."
    ),
    eval_set: Optional[Path] = typer.Option(
        None, "--eval-set", help="Instructions and reference outputs (default: JUDGED/eval_set.json, else beside it)."
    ),
    instructions: Optional[int] = typer.Option(None, "--instructions", min=2, help="Only the first N instructions (a quick look)."),
    adversarial: Optional[list[str]] = typer.Option(
        None, "--adversarial", help="Systems built to fool the judge, kept out of the tests and reported apart (default: NullModel)."
    ),
    margin: float = typer.Option(0.5, "--margin", min=0.0, max=0.99, help="Item level: GPT-4 preferences must differ by more than this."),
    length_tolerance: float = typer.Option(
        0.2, "--length-tolerance", min=0.0, max=0.99, help="Length-matched pairs: lengths within this fraction."
    ),
    length_control: bool = typer.Option(
        True, "--length-control/--no-length-control", help="Also each metric with its per-system length term removed (<metric>+lc)."
    ),
    embedder: str = typer.Option("all-minilm-l6-v2", "--embedder", help="sentence-transformers model for the embedding metrics."),
    embed_dtype: str = typer.Option(
        "bfloat16", "--embed-dtype", help="float32 or bfloat16 (autocast; 4x faster here, cosines within 3e-5)."
    ),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep the embeddings in the cache directory ($IIT_CACHE_DIR/embeddings)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap draws for every CI."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the bootstraps."),
) -> None:
    """Validate judge-free metrics against GPT-4's AlpacaEval judgments: system-level Spearman with the LC and raw win
    rates, item-level agreement on decided and length-matched pairs, where NullModel and length-gamed variants land."""
    from implicit_it.embedding import Embedder
    from implicit_it.evaluation.judge_agreement import (
        ADVERSARIAL,
        AgreementConfig,
        JudgeAgreement,
        build_metrics,
        embedding_function,
        load_judged,
    )
    from implicit_it.io import atomic_write_text
    from implicit_it.manifest import build_manifest, write_manifest

    t0 = time.perf_counter()
    if out is not None:
        check_writable(out, directory=True)
    config = AgreementConfig(
        margin=margin,
        length_tolerance=length_tolerance,
        length_control=length_control,
        adversarial=tuple(adversarial or ADVERSARIAL),
        n_boot=bootstrap,
        seed=seed,
    )
    analysis = JudgeAgreement(config)
    data = load_judged(judged, eval_set=eval_set, instructions=instructions)
    loaded: dict[str, Embedder] = {}

    def make_embed():
        embed, loaded["embedder"] = embedding_function(embedder, dtype=embed_dtype, cache=cache)
        return embed

    metrics = build_metrics(metric, make_embed)
    console.print(
        f"{len(data.systems)} systems × {len(data.instructions)} instructions from {judged}; metrics: {', '.join(m.name for m in metrics)}",
        highlight=False,
    )
    result = analysis.run(data, metrics, progress=lambda msg: console.print(f"  {msg}", highlight=False))
    table = result.to_markdown()
    console.print(table, highlight=False, markup=False, soft_wrap=True)
    if out is not None:
        result.save(out)
        atomic_write_text(out / "judge_agreement.md", f"# Judge-free metrics against GPT-4's AlpacaEval judgments\n\n{table}")
        emb = loaded.get("embedder")
        write_manifest(
            out,
            build_manifest(
                command=command_line(),
                seed=seed,
                data_files=data.files,
                model={"embedder": embedder, "path": emb.path, "dtype": embed_dtype} if emb else None,
                config={
                    "judged": str(judged),
                    "eval_set": str(data.eval_set),
                    "instructions": instructions,
                    "metrics": [m.name for m in metrics],
                    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
                },
                results={e["metric"]: {k: v for k, v in e.items() if k in ("spearman", "items", "fit")} for e in result.entries},
                timings={"total": round(time.perf_counter() - t0, 2)},
            ),
        )
        console.print(f"wrote {out}/judge_agreement.json (+ .md, .parquet, .png), manifest.json", highlight=False)
