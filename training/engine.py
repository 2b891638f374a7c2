"""Train one variant with HF ``Trainer``: one process on a laptop, or many under ``accelerate launch``.

Distribution is accelerate's (DDP, FSDP or DeepSpeed ZeRO-3, chosen by the ``--config_file`` given
to ``accelerate launch``); this module only sets the per-device batch so the *effective* batch is
the config's on any number of processes. What we add around ``Trainer``:

* the paper's masked data (:mod:`.variants`) and a collator that never learns padding;
* an output directory that is an HF model directory (``load_model(out)`` works), with
  ``train_manifest.json`` and ``loss.png``; for LoRA also ``adapter/``, merged by default;
* checkpoints every ``training.save_steps`` optimizer steps, ``resume=True`` to continue a killed
  run (Trainer restores weights, optimizer, scheduler, RNG and the data position), and refusal to
  silently overwrite a finished or unfinished run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from implicit_it.config import ExperimentConfig
from implicit_it.io import atomic_write_json
from implicit_it.manifest import build_manifest

from .curves import loss_curve, write_loss_plot
from .validation import heldout_response_nll
from .variants import EncodedDataset, MaskedLMCollator, Variant, VariantData, build_variant_data

MANIFEST_NAME = "train_manifest.json"
CHECKPOINT_DIR = "checkpoints"


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


def default_out_dir(config: ExperimentConfig, variant: Variant) -> Path:
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
        raise ValueError(
            f"effective_batch_size={effective_batch_size} is not a multiple of per_device_batch_size="
            f"{per_device_batch_size} x {n_processes} process(es)"
        )
    return effective_batch_size // per_step


def check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a finished run needs ``overwrite``; an unfinished one ``resume`` or ``overwrite``."""
    finished = (out_dir / MANIFEST_NAME).is_file()
    has_checkpoints = any((out_dir / CHECKPOINT_DIR).glob("checkpoint-*"))
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if resume and not has_checkpoints:
        raise ValueError(f"{out_dir}: nothing to resume (no {CHECKPOINT_DIR}/checkpoint-*)")
    if overwrite:
        return
    if finished and not resume:
        raise ValueError(f"{out_dir}: already holds a finished run ({MANIFEST_NAME}); pass --overwrite to train it again")
    if has_checkpoints and not resume:
        raise ValueError(f"{out_dir}: holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite to start over")


def _training_arguments(config: ExperimentConfig, out_dir: Path, seed: int, show_progress: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    t = config.training
    return TrainingArguments(
        output_dir=str(out_dir / CHECKPOINT_DIR),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(t.effective_batch_size, t.per_device_batch_size, world_size()),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
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
    )


def _activation_checkpointing(enabled: bool) -> dict[str, Any]:
    """Trainer's recompute-activations switch (renamed ``activation_checkpointing`` in transformers 5)."""
    if not enabled:
        return {}
    import inspect

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def _prepare_model(config: ExperimentConfig, seed: int) -> Any:
    """The base model in fp32 (master weights; ``training.bf16`` autocasts), made trainable."""
    from transformers import set_seed

    from implicit_it.models import load_model

    loaded = load_model(config.model.spec, dtype="float32", device="cpu", device_map=None,
                        attn_implementation=config.model.attn_implementation, use_process_cache=False)
    model = loaded.model
    model.config.use_cache = False
    t = config.training
    set_seed(seed)  # LoRA's random init must follow the seed too
    if t.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                                 target_modules=list(t.lora.target_modules), task_type="CAUSAL_LM"))
    elif t.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    return loaded, model


def _move_into(src: Path, dst: Path) -> None:
    """Move every file of ``src`` into ``dst`` (each an atomic rename), then drop ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    src.rmdir()


def _merge_lora(config: ExperimentConfig, adapter_dir: Path, out_dir: Path) -> None:
    """Base + adapter -> one dense HF directory, so analyses load a single model."""
    from peft import PeftModel

    from implicit_it.models import load_model

    base = load_model(config.model.spec, dtype="float32", device="cpu", attn_implementation=config.model.attn_implementation,
                      use_process_cache=False)
    merged = PeftModel.from_pretrained(base.model, adapter_dir).merge_and_unload()
    tmp = out_dir / ".merged-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    base.tokenizer.save_pretrained(tmp)
    _move_into(tmp, out_dir)


def train_variant(
    config: ExperimentConfig,
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
    """Train ``variant`` of ``config`` into ``out_dir`` (default ``runs/<name>/<variant>``)."""
    from transformers import Trainer

    seed = config.seed if seed is None else seed
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config, variant)
    check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    if overwrite and is_main_process() and out_dir.exists():
        shutil.rmtree(out_dir)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    loaded, model = _prepare_model(config, seed)
    base_model = loaded.describe()
    timings["load_model"] = time.perf_counter() - t0
    data = build_variant_data(config, variant, loaded.tokenizer)

    trainer = Trainer(
        model=model, args=_training_arguments(config, out_dir, seed, show_progress),
        train_dataset=EncodedDataset(data.examples), data_collator=MaskedLMCollator(loaded.tokenizer.pad_token_id),
        processing_class=loaded.tokenizer, callbacks=list(callbacks),
    )
    if not show_progress:  # Trainer prints each log line when its progress bar is off
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    trainer.model.config.use_cache = True  # off while training; the saved model generates with a KV cache
    tmp = out_dir / ".final-tmp"
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
    if data.heldout:
        t0 = time.perf_counter()
        heldout = _score_heldout(config, data, trainer, out_dir)
        timings["heldout_nll"] = time.perf_counter() - t0

    curve = loss_curve(trainer.state.log_history)
    write_loss_plot(out_dir / "loss.png", curve, title=f"{config.name} / {variant.name} ({loaded.source.display_name})")
    manifest = _manifest(config, variant, seed, base_model, data, trainer, output, curve, heldout, timings, resume, command)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)  # written last: its presence marks a finished run
    if not config.training.keep_checkpoints:
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    return TrainResult(out_dir, variant, manifest)


def _score_heldout(config: ExperimentConfig, data: VariantData, trainer: Any, out_dir: Path) -> dict[str, Any]:
    if world_size() == 1:
        model = trainer.model  # the trained weights, still in memory (a PeftModel for LoRA)
    else:  # sharded across processes: score the saved model on this one
        from implicit_it.models import load_model

        model = load_model(out_dir, use_process_cache=False).model
    return heldout_response_nll(model, trainer.processing_class, data.heldout, config.format,
                                max_length=config.training.max_length, batch_size=config.training.eval_batch_size)


def _manifest(config, variant, seed, base_model, data, trainer, output, curve, heldout, timings, resumed, command) -> dict[str, Any]:
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
        "epochs": config.training.epochs,
        "final_loss": curve[-1]["loss"] if curve else None,
        "mean_train_loss": output.training_loss,
        "tokens_seen": tokens_seen,  # non-padding input tokens, all processes
        "tokens_per_second": round(tokens_seen / timings["train"], 2) if timings["train"] else None,
        "resumed": resumed,
        "loss_curve": curve,
        **heldout,
    }
    cfg = config.model_dump(mode="json")
    cfg["seed"] = seed
    return build_manifest(
        command=command or " ".join(["iit"] + sys.argv[1:]), config=cfg, seed=seed, model=base_model,
        data_files=[config.data.train, *data.data_files], results=results,
        timings={k: round(v, 2) for k, v in timings.items()},
    )
