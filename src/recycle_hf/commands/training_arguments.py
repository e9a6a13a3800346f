"""The `TrainingArguments` that `recycle-hf train` and `recycle-hf pretrain` both take from their options."""

from __future__ import annotations

import argparse
from typing import Any

from ..training import loss_settings
from . import option_values


def common_training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """`TrainingArguments` fields (the loss settings among them) from the options both training commands have, under
    the same names; each command adds its own (epochs, scheduler, precision, device, ...)."""
    return {
        "output_dir": args.output,
        "per_device_train_batch_size": args.batch_size,
        "report_to": "none",
        **option_values(
            args, "gradient_accumulation_steps", "max_steps", "learning_rate", "warmup_steps", "weight_decay",
            "logging_steps", "save_steps", "save_total_limit", "seed",
        ),
        **loss_settings(args),
    }
