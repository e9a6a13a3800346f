"""`recycle-hf pretrain`: joint training of base and recyclable module (the paper's recipe), from a preset's random
initialisation or from an existing checkpoint, on a streamed corpus, with `Trainer` (so `accelerate launch` runs it
with DDP, FSDP or DeepSpeed)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..errors import InputNotFoundError, InvalidInputError
from ..graft import DEFAULT_GRAFT_INIT, GRAFT_INITS
from ..presets import PRESETS
from ..pretraining import (
    TRAINING_CONFIGS,
    JointTrainer,
    JointTrainingArguments,
    activation_memory,
    build_pretraining_model,
    check_block_size,
    count_parameters,
    load_pretraining_tokenizer,
    model_config_for_pretraining,
    model_state_memory,
    require_weights,
)
from ..streaming_data import DEFAULT_DOCUMENTS_PER_GROUP, resolve_corpus_files, stream_token_blocks
from ..training import LOSS_SETTINGS
from . import option_values
from .training_arguments import common_training_arguments


HELP = (
    "Train base and recyclable module jointly (LM loss + recycle_loss_weight x module loss), from a preset's random "
    "init or a checkpoint, on a streamed corpus; saves full checkpoints."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--preset", help=f"random init of a preset shape ({', '.join(sorted(PRESETS))})")
    start.add_argument(
        "--model",
        help="continue from a RecycleGPT checkpoint, or a plain causal LM ('default': the embedded SmolLM2) that "
        "gets a fresh module (or --adapter)",
    )
    parser.add_argument("--adapter", default=None, help="with a plain --model: a trained recycle adapter to start from")
    parser.add_argument("--num-layers", type=int, default=None, help="with a plain --model: blocks of a fresh module")
    parser.add_argument("--init", choices=GRAFT_INITS, default=DEFAULT_GRAFT_INIT, help="how a fresh module starts")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder or hub id (default: the model's; presets: byte-level)"
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", nargs="+", help=".jsonl/.json/.parquet/.txt/.md files, folders or globs (streamed)")
    data.add_argument("--dataset", default=None, help="a Hub dataset name, streamed (needs a connection)")
    parser.add_argument("--dataset-config", default=None, help="with --dataset: its configuration name")
    parser.add_argument("--dataset-split", default="train", help="with --dataset: the split (default train)")
    parser.add_argument("--text-column", default="text", help="the column holding the text (default 'text')")
    parser.add_argument("--output", help="folder for the model (checkpoints go in checkpoint-*)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train (required)")
    parser.add_argument("--block-size", type=int, default=256, help="tokens per training sequence (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per device per step (default 8)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    parser.add_argument("--warmup-steps", type=float, default=0.01, help="warmup steps, or a fraction if < 1")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--adam-beta2", type=float, default=0.95)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--lr-scheduler", default="cosine", help="transformers scheduler name (default cosine)")
    # The loss options are the fields of the training arguments, with their defaults and help.
    for name in ("recycle_loss_weight", *LOSS_SETTINGS):
        setting = JointTrainingArguments.__dataclass_fields__[name]
        kind = int if isinstance(setting.default, int) and not isinstance(setting.default, bool) else float
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=setting.default,
                            help=setting.metadata["help"])
    parser.add_argument("--shuffle-buffer", type=int, default=0, help="shuffle blocks within a buffer of N (0: off)")
    parser.add_argument(
        "--documents-per-group",
        type=int,
        default=DEFAULT_DOCUMENTS_PER_GROUP,
        help=f"documents tokenized and packed together (default {DEFAULT_DOCUMENTS_PER_GROUP})",
    )
    parser.add_argument("--dataloader-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast; fp32 master weights)")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute block activations in the backward pass"
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--resume", nargs="?", const=True, metavar="CHECKPOINT",
                        help="continue from the last checkpoint-* in --output, or from CHECKPOINT")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default 500)")
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--estimate-memory",
        type=int,
        metavar="NUM_GPUS",
        default=None,
        help="print the model-state memory per GPU under each shipped config for NUM_GPUS GPUs, and exit",
    )


def _print_memory_estimate(args: argparse.Namespace) -> None:
    config = model_config_for_pretraining(args.preset, args.model)
    if not hasattr(config, "base_config"):
        raise InvalidInputError("--estimate-memory needs --preset or a RecycleGPT checkpoint as --model.")
    counts = count_parameters(config)
    num_gpus = args.estimate_memory
    print(
        f"{counts['total'] / 1e9:.3f}B parameters (base {counts['base'] / 1e9:.3f}B, module "
        f"{counts['module'] / 1e9:.3f}B); bf16 mixed precision, AdamW; GiB per GPU on {num_gpus} GPU(s), computed:"
    )
    print("| config | parameters | gradients | optimizer states | total (model states) |")
    print("|---|---|---|---|---|")
    for name in TRAINING_CONFIGS:
        memory = model_state_memory(counts["total"], num_gpus, name)
        print(
            f"| {name} | {memory['parameters']:.1f} | {memory['gradients']:.1f} | {memory['optimizer']:.1f} | "
            f"{memory['total']:.1f} |"
        )
    for checkpointing in (False, True):
        activations = activation_memory(config, args.batch_size, args.block_size, checkpointing)
        print(
            f"Activations per GPU, micro-batch {args.batch_size} x {args.block_size} tokens, "
            f"{'with' if checkpointing else 'without'} --gradient-checkpointing (approximate): blocks "
            f"{activations['blocks']:.1f} + logits {activations['logits']:.1f} = {activations['total']:.1f} GiB."
        )


def _resume_checkpoint(args: argparse.Namespace) -> str | None:
    if args.resume is None:
        return None
    checkpoint = get_last_checkpoint(args.output) if args.resume is True and os.path.isdir(args.output) else None
    checkpoint = args.resume if args.resume is not True else checkpoint
    if checkpoint is None:
        raise ValueError(f"--resume: no checkpoint-* folder in {args.output}; train without --resume first.")
    require_weights(checkpoint)
    return checkpoint


def _training_arguments(args: argparse.Namespace) -> JointTrainingArguments:
    return JointTrainingArguments(
        **common_training_arguments(args),
        **option_values(args, "recycle_loss_weight", "adam_beta2", "max_grad_norm", "bf16"),
        lr_scheduler_type=args.lr_scheduler,
        activation_checkpointing=args.gradient_checkpointing,
        use_cpu=args.cpu,
        dataloader_num_workers=args.dataloader_workers,
    )


def run(args: argparse.Namespace) -> int:
    if args.estimate_memory is not None:
        _print_memory_estimate(args)
        return 0
    # Every input is checked, reading as little as possible, before a model is built or a step runs.
    try:
        if args.output is None or args.max_steps is None or (args.data is None and args.dataset is None):
            raise ValueError("--output, --max-steps and --data (or --dataset) are required.")
        if Path(args.output).is_file():
            raise ValueError(f"--output {args.output} is a file; give a folder path for the model.")
        if args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1 (a streamed corpus has no length), got {args.max_steps}.")
        if args.data is not None:
            resolve_corpus_files(args.data)
        config = model_config_for_pretraining(args.preset, args.model)
        check_block_size(config, args.block_size)
        resume = _resume_checkpoint(args)
        training_args = _training_arguments(args)
        tokenizer = load_pretraining_tokenizer(config, args.tokenizer, args.model)
        train_dataset = stream_token_blocks(
            tokenizer,
            args.block_size,
            data_files=args.data,
            dataset_name=args.dataset,
            dataset_config=args.dataset_config,
            split=args.dataset_split,
            text_column=args.text_column,
            documents_per_group=args.documents_per_group,
            shuffle_buffer=args.shuffle_buffer,
            seed=args.seed,
        )
        model = build_pretraining_model(
            args.preset, args.model, adapter=args.adapter, num_layers=args.num_layers, init=args.init, seed=args.seed
        )
    except ValueError as error:  # reported in one line with status 2, as every command's user errors
        raise error if isinstance(error, InvalidInputError) else InvalidInputError(str(error)) from error
    except OSError as error:
        raise error if isinstance(error, InputNotFoundError) else InputNotFoundError(str(error)) from error

    trainer = JointTrainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    if trainer.is_world_process_zero():
        logs = [log for log in trainer.state.log_history if "lm_loss" in log]
        runtime = result.metrics["train_runtime"]
        tokens = trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
        global_batch = args.batch_size * args.gradient_accumulation_steps * training_args.world_size
        print(
            f"Trained to step {result.global_step} in {runtime:.0f} s on {training_args.world_size} process(es), "
            f"{global_batch} x {args.block_size} tokens per step: {tokens / runtime:.0f} tokens/s."
        )
        if logs:
            first, last = logs[0], logs[-1]
            print(
                f"lm_loss {first['lm_loss']:.3f} -> {last['lm_loss']:.3f}, recycle_loss {first['recycle_loss']:.3f} "
                f"-> {last['recycle_loss']:.3f}, agreement with the base "
                f"{last.get('base_agreement', float('nan')):.3f} "
                f"(steps {first['step']} -> {last['step']})."
            )
        print(
            f"Model saved to {args.output}; load it with "
            f"AutoModelForCausalLM.from_pretrained('{args.output}', trust_remote_code=True)."
        )
    return 0
