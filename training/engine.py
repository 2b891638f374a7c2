"""Train one variant with HF ``Trainer``: one process on a laptop, or many under ``accelerate launch``.

Distribution is accelerate's (DDP, FSDP or DeepSpeed ZeRO-3, chosen by the ``--config_file`` given
to ``accelerate launch``); this module only sets the per-device batch so the *effective* batch is
the config's on any number of processes. What we add around ``Trainer``:

* the paper's masked data (:mod:`.variants`) and a collator that never learns padding;
* an output directory that is an HF model directory (``load_model(out)`` works), with
  ``train_manifest.json``, ``loss.png`` and a model card (``README.md``, :mod:`.card`); for LoRA also ``adapter/``, merged by default;
* checkpoints every ``training.save_steps`` optimizer steps, ``resume=True`` to continue a killed
  run from its newest *complete* checkpoint (:mod:`.checkpoints`; Trainer restores weights,
  optimizer, scheduler, RNG and the data position), and refusal to silently overwrite a finished
  or unfinished run; ``overwrite`` deletes only a directory that is recognisably a run of ours;
* one process per output directory (``OUT/.iit.lock``, :mod:`implicit_it.locks`);
* training logs (``training.report_to``): transformers' own TensorBoard or W&B callback, writing under ``OUT/logs/``
  (W&B in offline mode: nothing leaves the machine until ``wandb sync``); the manifest points to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from implicit_it.errors import UserError
from implicit_it.io import atomic_write_json, remove_temp_litter
from implicit_it.locks import LOCK_NAME, directory_lock
from implicit_it.manifest import build_manifest
from implicit_it.paths import check_writable, is_step_directory

from .card import write_model_card
from .checkpoints import (
    CHECKPOINT_DIR,
    COMPLETE_MARKER,
    TRAINER_STATE,
    checkpoints,
    completion_callback,
    discard_incomplete,
    latest_complete_checkpoint,
    remove_checkpoints,
)
from .config import TrainingExperiment
from .curves import loss_curve, write_loss_plot
from .validation import heldout_response_nll, response_nll
from .variants import EncodedDataset, MaskedLMCollator, Variant, VariantData, build_variant_data

MANIFEST_NAME = "train_manifest.json"
FINAL_TMP = ".final-tmp"
LOGS_DIR = "logs"


def log_callbacks(report_to: str, out_dir: Path) -> list[Any]:
    """transformers' callback for ``report_to``, writing under ``out_dir/logs/<report_to>`` (not under checkpoints/,
    which a finished run removes)."""
    if report_to == "none":
        return []
    target = out_dir / LOGS_DIR / report_to
    target.mkdir(parents=True, exist_ok=True)
    if report_to == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        callback.logging_dir = str(target)
        return [callback]
    from transformers.integrations import WandbCallback

    return [WandbCallback()]


@contextlib.contextmanager
def wandb_offline(report_to: str, out_dir: Path, run_name: str) -> Iterator[None]:
    """W&B's environment for one run: offline, quiet, its files in ``out_dir/logs/wandb`` (restored afterwards)."""
    if report_to != "wandb":
        yield
        return
    settings = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(out_dir / LOGS_DIR / "wandb"),
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": os.environ.get("WANDB_PROJECT", "implicit-it"),
        "WANDB_NAME": run_name,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def log_files(report_to: str, out_dir: Path) -> dict[str, Any] | None:
    """What the manifest records about the logs: the directory and its files, relative to the run."""
    if report_to == "none":
        return None
    root = out_dir / LOGS_DIR / report_to
    files = sorted(str(p.relative_to(out_dir)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return {"report_to": report_to, "directory": str(root.relative_to(out_dir)), "files": files}


@dataclass
class TrainResult:
    out_dir: Path
    variant: Variant
    manifest: dict[str, Any]

    @property
    def results(self) -> dict[str, Any]:
        return self.manifest["results"]

    @property
    def final_loss(self) -> float:
        return self.results["final_loss"]


def default_out_dir(config: TrainingExperiment, variant: Variant) -> Path:
    return Path("runs") / config.name / variant.name


def world_size() -> int:
    """Processes in this run (set by ``accelerate launch``/``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def gradient_accumulation_steps(effective_batch_size: int, per_device_batch_size: int, n_processes: int) -> int:
    """Steps to accumulate so that per-device batch x processes x steps = the effective batch."""
    per_step = per_device_batch_size * n_processes
    if effective_batch_size % per_step:
        raise UserError(
            f"effective_batch_size={effective_batch_size} is not a multiple of per_device_batch_size="
            f"{per_device_batch_size} x {n_processes} process(es)"
        )
    return effective_batch_size // per_step


def check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a finished run needs ``overwrite``; an unfinished one ``resume`` or ``overwrite``.

    Only complete checkpoints count; ``resume`` with nothing but half-written ones starts over (see :func:`train_variant`)."""
    finished = (out_dir / MANIFEST_NAME).is_file()
    has_checkpoints = latest_complete_checkpoint(out_dir) is not None
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume and not has_checkpoints and not checkpoints(out_dir):
        raise UserError(f"{out_dir}: nothing to resume (no {CHECKPOINT_DIR}/checkpoint-*)")
    if overwrite:
        check_overwritable(out_dir)
        return
    if finished and not resume:
        raise UserError(f"{out_dir}: already holds a finished run ({MANIFEST_NAME}); pass --overwrite to train it again")
    if has_checkpoints and not resume:
        raise UserError(f"{out_dir}: holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite to start over")


def run_evidence(out_dir: Path) -> list[str]:
    """What makes ``out_dir`` recognisably a training run of implicit-it (empty: nothing does)."""
    found = []
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "results" in data and "command" in data:
            found.append(MANIFEST_NAME)
    if any((p / TRAINER_STATE).is_file() or (p / COMPLETE_MARKER).is_file() for _, p in checkpoints(out_dir)):
        found.append(f"{CHECKPOINT_DIR}/checkpoint-*")
    if (out_dir / FINAL_TMP).is_dir():
        found.append(FINAL_TMP)
    if is_step_directory(out_dir):  # a pipeline training step's folder (its record names this folder)
        found.append("step.json/pending.json of this step")
    return found


def check_overwritable(out_dir: Path) -> None:
    """``--overwrite`` deletes ``out_dir``: only when it is empty or recognisably a run of ours, never a folder of the user's."""
    try:
        entries = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UserError(f"{out_dir}: not a directory; --overwrite deletes only an earlier training run") from None
    if not entries or run_evidence(out_dir):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise UserError(
        f"{out_dir}: not an implicit-it training run (no {MANIFEST_NAME}, no {CHECKPOINT_DIR}/checkpoint-*), so --overwrite "
        f"will not delete it; it holds {shown}. Choose another --out, or empty it yourself"
    )


def _clear_run_dir(out_dir: Path) -> None:
    """Delete an earlier run (checked by :func:`check_overwritable`), keeping our own lock file."""
    if not out_dir.is_dir():
        return
    for entry in out_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def training_arguments(
    config: TrainingExperiment, out_dir: Path, seed: int, show_progress: bool, variant_name: str, **overrides: Any
) -> Any:
    """``TrainingArguments`` from the config; ``overrides`` replace single arguments (the GPU check: ``save_strategy="no"``)."""
    import torch
    from transformers import TrainingArguments

    t = config.training
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir / CHECKPOINT_DIR),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(t.effective_batch_size, t.per_device_batch_size, world_size()),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs_for(variant_name),
        max_steps=t.max_steps or -1,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a fraction of all steps
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        bf16=t.bf16,
        **_activation_checkpointing(t.gradient_checkpointing),
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # lets processes launched on a CPU-only machine form a gloo group
        disable_tqdm=not show_progress,
        # example reduction divides by a fixed per-process example count; Trainer must not rescale it by the process count
        average_tokens_across_devices=t.loss_reduction == "token",
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def example_mean_loss(examples_per_step: int):
    """``compute_loss_func`` for ``training.loss_reduction: example``: the paper's reduction.

    The paper trains with micro-batch 1 and ``reduce_loss='mean'``: each example's loss is the
    mean over its labelled tokens, and accelerate divides it by the accumulation steps, so an
    optimizer step follows the mean over its examples. Here a micro-batch of any size gives the
    same value: the sum of per-example means divided by the examples one process contributes
    to a step (per-device batch x accumulation steps, as the paper's fixed divisor, also on a
    short last step); data-parallel gradient averaging then takes the mean over processes."""
    import torch.nn.functional as F

    from implicit_it.formats import IGNORE_INDEX

    def loss_fn(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs.logits[:, :-1].float()
        target = labels[:, 1:].to(logits.device)
        token_loss = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        mask = target != IGNORE_INDEX
        per_example = token_loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_example.sum() / examples_per_step

    return loss_fn


def open_instruct_schedule(
    optimizer: Any,
    *,
    n_examples: int,
    per_device_batch_size: int,
    accumulation_steps: int,
    n_processes: int,
    epochs: float,
    warmup_ratio: float,
    kind: str,
) -> Any:
    """The LR schedule as the paper's ``finetune.py`` steps it under ``accelerate``.

    It plans ``epochs x ceil(ceil(N / batch) / accumulation)`` steps from the single-process
    dataloader, warms up for ``int(ratio x planned)`` of them, and accelerate's scheduler wrapper
    advances it once per process at every optimizer step. On 2 GPUs the schedule therefore runs
    twice as fast as the real steps and sits at 0 for the run's last ~3%; on one process it
    differs from Trainer's only in rounding the warmup down."""
    import math

    from torch.optim.lr_scheduler import LambdaLR

    planned = math.ceil(epochs * math.ceil(math.ceil(n_examples / per_device_batch_size) / accumulation_steps))
    warmup = int(planned * warmup_ratio)

    def factor(step: int) -> float:
        s = step * n_processes  # scheduler steps taken after `step` optimizer steps
        if s < warmup:
            return s / max(1, warmup)
        progress = (s - warmup) / max(1, planned - warmup)
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
        return max(0.0, (planned - s) / max(1, planned - warmup))

    return LambdaLR(optimizer, factor)


def make_trainer(config: TrainingExperiment, *, n_examples: int, epochs: float, **kwargs: Any) -> Any:
    """HF ``Trainer`` with the config's loss reduction and LR-schedule counting."""
    from transformers import Trainer

    t = config.training

    class _Trainer(Trainer):
        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if t.schedule_counting == "trainer" or t.max_steps:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                self.lr_scheduler = open_instruct_schedule(
                    self.optimizer if optimizer is None else optimizer,
                    n_examples=n_examples,
                    per_device_batch_size=t.per_device_batch_size,
                    accumulation_steps=self.args.gradient_accumulation_steps,
                    n_processes=self.args.world_size,
                    epochs=epochs,
                    warmup_ratio=t.warmup_ratio,
                    kind=t.lr_scheduler,
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

    if t.loss_reduction == "example":
        args = kwargs["args"]
        kwargs["compute_loss_func"] = example_mean_loss(t.per_device_batch_size * args.gradient_accumulation_steps)
    return _Trainer(**kwargs)


def _activation_checkpointing(enabled: bool) -> dict[str, Any]:
    """Trainer's recompute-activations switch (renamed ``activation_checkpointing`` in transformers 5)."""
    if not enabled:
        return {}
    import inspect

    from transformers import TrainingArguments

    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _prepare_model(config: TrainingExperiment, seed: int) -> Any:
    """The base model in fp32 (master weights; ``training.bf16`` autocasts), or in bf16 under fp32 LoRA adapters
    (``training.weights_dtype``), made trainable."""
    from transformers import set_seed

    from implicit_it.models import load_model

    loaded = load_model(
        config.model.spec,
        dtype=config.training.weights_dtype,
        device="cpu",
        device_map=None,
        attn_implementation=config.model.attn_implementation,
        use_process_cache=False,
    )
    set_seed(seed)  # LoRA's random init must follow the seed too
    return loaded, make_trainable(loaded.model, config.training)


def make_trainable(model: Any, training: Any) -> Any:
    """The model as ``training.method`` trains it: wrapped in a LoRA adapter (peft), or with the input
    embeddings frozen (``freeze_embeddings``; for tied models that is the LM head too), or as is; in train mode."""
    model.config.use_cache = False
    t = training
    if t.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=t.lora.r,
                lora_alpha=t.lora.alpha,
                lora_dropout=t.lora.dropout,
                target_modules=list(t.lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    elif t.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    return model


def _move_into(src: Path, dst: Path) -> None:
    """Move every file of ``src`` into ``dst`` (each an atomic rename), then drop ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    src.rmdir()


def _merge_lora(config: TrainingExperiment, adapter_dir: Path, out_dir: Path) -> None:
    """Base + adapter -> one dense HF directory, so analyses load a single model."""
    from peft import PeftModel

    from implicit_it.models import load_model

    base = load_model(
        config.model.spec, dtype="float32", device="cpu", attn_implementation=config.model.attn_implementation, use_process_cache=False
    )
    merged = PeftModel.from_pretrained(base.model, adapter_dir).merge_and_unload()
    tmp = out_dir / ".merged-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    base.tokenizer.save_pretrained(tmp)
    _move_into(tmp, out_dir)


def train_variant(
    config: TrainingExperiment,
    variant: Variant,
    *,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    show_progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train ``variant`` of ``config`` into ``out_dir`` (default ``runs/<name>/<variant>``).

    The main process holds ``out_dir/.iit.lock`` throughout: a second run on the same directory
    stops at once with a message naming this one."""
    seed = config.seed if seed is None else seed
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config, variant)
    if not is_main_process():  # the other processes of a distributed run follow the main one
        return _train_variant(config, variant, out_dir, seed, resume, overwrite, callbacks, show_progress, command)
    check_writable(out_dir, directory=True)  # a full or read-only disk is one error now, not at the first checkpoint
    with directory_lock(out_dir, what="training run"):
        remove_temp_litter(out_dir)  # temp files of a killed earlier write: ours, and no write of ours is in flight
        return _train_variant(config, variant, out_dir, seed, resume, overwrite, callbacks, show_progress, command)


def _train_variant(
    config: TrainingExperiment,
    variant: Variant,
    out_dir: Path,
    seed: int,
    resume: bool,
    overwrite: bool,
    callbacks: Sequence[Any],
    show_progress: bool,
    command: str | None,
) -> TrainResult:
    check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    if overwrite and is_main_process():
        _clear_run_dir(out_dir)
    if is_main_process():
        discard_incomplete(out_dir)  # half-written by a kill or a full disk: Trainer would pick it and fail on every retry
    start_from = latest_complete_checkpoint(out_dir) if resume else None
    if resume and start_from is None:  # only half-written checkpoints: nothing finished to lose, start over
        print(f"{out_dir}: no complete checkpoint to resume from; training from the start", file=sys.stderr)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    loaded, model = _prepare_model(config, seed)
    base_model = loaded.describe()
    timings["load_model"] = time.perf_counter() - t0
    data = build_variant_data(config, variant, loaded.tokenizer)

    trainer = make_trainer(
        config,
        n_examples=len(data.examples),
        epochs=config.training.epochs_for(variant.name),
        model=model,
        args=training_arguments(config, out_dir, seed, show_progress, variant.name),
        train_dataset=EncodedDataset(data.examples),
        data_collator=MaskedLMCollator(loaded.tokenizer.pad_token_id),
        processing_class=loaded.tokenizer,
        callbacks=[completion_callback(), *log_callbacks(config.training.report_to, out_dir), *callbacks],
    )
    if not show_progress:  # Trainer prints each log line when its progress bar is off
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    with wandb_offline(config.training.report_to, out_dir, f"{config.name}/{variant.name}/seed{seed}"):
        output = trainer.train(resume_from_checkpoint=str(start_from) if start_from is not None else None)
        if config.training.report_to == "wandb" and trainer.is_world_process_zero():
            import wandb

            wandb.finish()  # flush the offline run before the manifest lists its files
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    trainer.model.config.use_cache = True  # off while training; the saved model generates with a KV cache
    tmp = out_dir / FINAL_TMP
    trainer.save_model(str(tmp))  # every process takes part (FSDP/ZeRO-3 gather); the main one writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return TrainResult(out_dir, variant, {})
    if config.training.method == "lora":
        adapter_dir = out_dir / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
        if config.training.merge_lora:
            _merge_lora(config, adapter_dir, out_dir)
    else:
        _move_into(tmp, out_dir)
    timings["save"] = time.perf_counter() - t0

    heldout: dict[str, Any] = {}
    if data.heldout or config.data.validation:
        t0 = time.perf_counter()
        heldout = _score_heldout(config, data, trainer, out_dir)
        timings["heldout_nll"] = time.perf_counter() - t0

    curve = loss_curve(trainer.state.log_history)
    write_loss_plot(out_dir / "loss.png", curve, title=f"{config.name} / {variant.name} ({loaded.source.display_name})")
    manifest = _manifest(
        config, variant, seed, base_model, data, trainer, output, curve, heldout, timings, start_from is not None, command, out_dir
    )
    write_model_card(out_dir, manifest)  # README.md: the Hub's model card, with what training measured
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)  # written last: its presence marks a finished run
    if not config.training.keep_checkpoints:
        remove_checkpoints(out_dir)  # only our checkpoint-N folders, never other files under checkpoints/
    return TrainResult(out_dir, variant, manifest)


def _score_heldout(config: TrainingExperiment, data: VariantData, trainer: Any, out_dir: Path) -> dict[str, Any]:
    """Held-out NLL (``data.heldout_examples``) and validation NLL (``data.validation``) of the trained model."""
    if world_size() == 1:
        model = trainer.model  # the trained weights, still in memory (a PeftModel for LoRA)
    else:  # sharded across processes: score the saved model on this one
        from implicit_it.models import load_model

        model = load_model(out_dir, use_process_cache=False).model
    kw = dict(max_length=config.training.max_length, batch_size=config.training.eval_batch_size, strip=config.data.strip_whitespace)
    out: dict[str, Any] = {}
    if data.heldout:
        out.update(heldout_response_nll(model, trainer.processing_class, data.heldout, config.format, **kw))
    if config.data.validation:
        from implicit_it.data import read_instructions

        val = read_instructions(config.data.validation)
        out.update(response_nll(model, trainer.processing_class, val, config.format, prefix="val", **kw))
    return out


def _manifest(
    config, variant, seed, base_model, data, trainer, output, curve, heldout, timings, resumed, command, out_dir
) -> dict[str, Any]:
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tokens_seen = int(trainer.state.num_input_tokens_seen)
    results = {
        "variant": variant.name,
        "data": data.describe(),
        "method": config.training.method,
        "trainable_parameters": n_trainable,
        "world_size": world_size(),
        "distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],  # NO, MULTI_GPU, FSDP, DEEPSPEED...
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "optimizer_steps": trainer.state.global_step,
        "epochs": config.training.epochs_for(variant.name),
        "loss_reduction": config.training.loss_reduction,
        "schedule_counting": config.training.schedule_counting,
        "final_loss": curve[-1]["loss"] if curve else None,
        "mean_train_loss": output.training_loss,
        "tokens_seen": tokens_seen,  # non-padding input tokens, all processes
        "tokens_per_second": round(tokens_seen / timings["train"], 2) if timings["train"] else None,
        "resumed": resumed,
        "logs": log_files(config.training.report_to, out_dir),
        "loss_curve": curve,
        **heldout,
    }
    cfg = config.model_dump(mode="json")
    cfg["seed"] = seed
    return build_manifest(
        command=command or " ".join(["iit"] + sys.argv[1:]),
        config=cfg,
        seed=seed,
        model=base_model,
        data_files=[config.data.train, *data.data_files, *([config.data.validation] if config.data.validation else [])],
        results=results,
        timings={k: round(v, 2) for k, v in timings.items()},
    )
