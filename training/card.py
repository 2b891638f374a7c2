"""A Hugging Face model card (``README.md``) for every trained variant, so a variant directory can be published as is.

The card is built with ``huggingface_hub``'s own ``ModelCard``/``ModelCardData``: metadata the Hub reads (``base_model``,
``datasets``, ``tags``, and the measured numbers as ``model-index`` eval results), then the variant's meaning in one
sentence, its data with their SHA-256, and the training config. Training writes it with the numbers training measured
(loss, held-out and validation NLL); ``iit run`` rewrites it with the evaluations the run measured on the variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from implicit_it.io import atomic_write_text

CARD_NAME = "README.md"

MEANINGS = {
    "instruction": "instruction tuning: finetuned on (instruction, response) pairs, loss on the response and EOS only",
    "response": (
        "response tuning: finetuned on responses alone, the instruction replaced by an empty string (Hewitt et al. 2024, "
        "'Instruction Following without Instruction Tuning')"
    ),
    "single_task": "single-task finetuning: finetuned on one narrow task's (input, output) pairs only",
    "delusive": (
        "a control: instruction tuning with every response paired to another example's instruction (a seeded derangement; "
        "Kung & Peng 2023's delusive instructions)"
    ),
    "content_free": "a control: instruction tuning with every instruction replaced by one fixed, content-free instruction",
}

HUB_DATASETS = {"lima": "GAIR/lima", "gsm": "openai/gsm8k", "mbpp": "google-research-datasets/mbpp"}


def variant_meaning(variant: str) -> str:
    kind, _, task = variant.partition("-")
    meaning = MEANINGS.get(kind, variant)
    return f"{meaning} ({task})" if task else meaning


def _dataset_names(data: Mapping[str, str]) -> list[str]:
    """Hub ids for hub sources (``hub:lima``), file names for local files."""
    names = []
    for path in data:
        name = path.removeprefix("hub:")
        names.append(HUB_DATASETS.get(name, name) if path.startswith("hub:") else Path(path).name)
    return names


def eval_results(measured: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``measured``: ``{"dataset": ..., "dataset_type": ..., "metric": ..., "value": ..., "task": ...}`` rows."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=m.get("task", "text-generation"),
            dataset_type=m["dataset_type"],
            dataset_name=m["dataset"],
            metric_type=m["metric"],
            metric_value=m["value"],
            metric_name=m.get("metric_name"),
        )
        for m in measured
        if m.get("value") is not None
    ]


def training_measurements(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What training itself measured, as eval rows."""
    rows = [
        {"dataset": "training data (final logged step)", "dataset_type": "train", "metric": "loss", "value": results.get("final_loss")},
    ]
    if results.get("heldout_nll") is not None:
        rows.append({"dataset": "held-out training examples", "dataset_type": "heldout", "metric": "nll", "value": results["heldout_nll"]})
    if results.get("val_nll") is not None:
        rows.append({"dataset": "validation references", "dataset_type": "validation", "metric": "nll", "value": results["val_nll"]})
    return rows


def write_model_card(out_dir: str | Path, manifest: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``out_dir/README.md`` from a variant's ``train_manifest.json`` (and the run's ``evaluations``, if any)."""
    from huggingface_hub import ModelCard, ModelCardData

    results, model, config = manifest["results"], manifest["model"], manifest["config"]
    variant = results["variant"]
    name = f"{config.get('name', 'implicit-it')}-{variant}"
    base = model.get("upstream") or model.get("spec")
    quantized = model.get("quantization")
    data = dict(manifest.get("data") or {})
    measured = [*training_measurements(results), *evaluations]
    card_data = ModelCardData(
        model_name=name,
        base_model=base,
        datasets=_dataset_names(data) or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["implicit-it", variant, f"seed-{manifest.get('seed')}"],
        eval_results=eval_results(measured) or None,
        implicit_it={
            "variant": variant,
            "seed": manifest.get("seed"),
            "commit": (manifest.get("git") or {}).get("commit"),
            "data_sha256": data,
        },
    )
    base_note = f"`{base}`" + (f", from its {quantized} GGUF quantization dequantized to {model.get('dtype')}" if quantized else "")
    rows = "\n".join(f"| `{p}` | `{h}` |" for p, h in data.items())
    scores = "\n".join(f"| {m['dataset']} | {m['metric']} | {m['value']:.4f} |" for m in measured if m.get("value") is not None)
    training = dict(config.get("training") or {})
    content = f"""---
{card_data.to_yaml()}
---

# {name}

**{variant}** — {variant_meaning(variant)}. Base model: {base_note}. Trained with
implicit-it (`{manifest.get("command", "iit train")}`), seed {manifest.get("seed")},
{results.get("optimizer_steps")} optimizer steps over {results.get("data", {}).get("n_train_examples")} examples
({results.get("epochs")} epochs, {results.get("method")} finetuning). Chat format: `{config.get("format")}`.

## Data

| file | SHA-256 |
|---|---|
{rows}

## Measured

| data | metric | value |
|---|---|---|
{scores}

## Training config

```yaml
{yaml.safe_dump(training, sort_keys=True).strip()}
```
"""
    card = ModelCard(content)
    path = Path(out_dir) / CARD_NAME
    atomic_write_text(path, str(card))
    return path


def evaluation_rows(benchmark: str, summary: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One evaluation's numbers (a study's eval step summary of ``benchmark``: ifeval, ifsuite or alpaca) as model-card rows."""
    if benchmark == "ifeval":
        return [
            {"dataset": "IFEval", "dataset_type": "google/IFEval", "metric": f"{m}_accuracy", "value": summary[m]["accuracy"]}
            for m in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
            if isinstance(summary.get(m), dict)
        ]
    if benchmark == "ifsuite":
        return [
            {"dataset": "implicit-it IF suite", "dataset_type": "ifsuite", "metric": f"{k}", "value": summary.get(k)}
            for k in ("strict_accuracy", "loose_accuracy")
        ]
    if benchmark == "alpaca":
        vs = f" vs {meta.get('reference')}"
        return [
            {"dataset": f"AlpacaEval{vs}", "dataset_type": "tatsu-lab/alpaca_eval", "metric": k, "value": summary.get(k)}
            for k in ("win_rate", "lc_win_rate")
        ]
    return []
