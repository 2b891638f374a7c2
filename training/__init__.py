"""``implicit_it.training``: the paper's variants (instruction, response, single-task tuning).

Built on the core's masked encoding (:func:`implicit_it.formats.encode_example`): loss on
response + EOS only, with the prompt exactly as the generator will later see it. Training runs
on HF ``Trainer``, so ``accelerate launch`` (DDP, FSDP, DeepSpeed ZeRO-3) distributes it.
"""

from .card import evaluation_rows, write_model_card
from .checkpoints import complete_checkpoints, latest_complete_checkpoint
from .engine import TrainResult, check_out_dir, default_out_dir, gradient_accumulation_steps, train_variant, training_arguments
from .stage import TrainStage, card_stage, train_stage
from .sweep import SweepPoint, run_sweep, select_best
from .validation import METRIC_DIRECTIONS, heldout_response_nll
from .variants import (
    EncodedDataset,
    MaskedLMCollator,
    Variant,
    VariantData,
    build_variant_data,
    config_variants,
    parse_variant,
    split_heldout,
    train_source,
)

__all__ = [
    "TrainStage",
    "card_stage",
    "evaluation_rows",
    "train_stage",
    "write_model_card",
    "complete_checkpoints",
    "latest_complete_checkpoint",
    "TrainResult",
    "check_out_dir",
    "default_out_dir",
    "gradient_accumulation_steps",
    "train_variant",
    "training_arguments",
    "SweepPoint",
    "run_sweep",
    "select_best",
    "METRIC_DIRECTIONS",
    "heldout_response_nll",
    "EncodedDataset",
    "MaskedLMCollator",
    "Variant",
    "VariantData",
    "build_variant_data",
    "config_variants",
    "parse_variant",
    "split_heldout",
    "train_source",
]
