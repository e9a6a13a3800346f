"""`recycle-hf train`: fine-tune a recyclable module on a frozen base (optionally with LoRA) and save an adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import set_seed

from ..adapter import add_base_lora, base_lora_config, load_recycle_adapter
from ..data import load_token_blocks
from ..draft_vocabulary import frequent_token_ids
from ..errors import InvalidInputError
from ..graft import DEFAULT_GRAFT_INIT, GRAFT_INITS, graft_recycle_module
from ..loading import add_base_arguments, base_model_name, load_base_from_args
from ..training import BaseStateDataset, RecycleTrainer, RecycleTrainingArguments
from . import bounded, fraction, non_negative_float, positive_float, positive_int
from .training_arguments import common_training_arguments


HELP = (
    "Fine-tune a recyclable module on a frozen base model (head-only, or jointly with LoRA on the base) and save it "
    "as a small adapter."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_arguments(parser)
    parser.add_argument("--data", nargs="+", required=True, help=".jsonl ('text' field) or .txt files, or globs")
    parser.add_argument("--output", required=True, help="folder for the adapter (checkpoints go in checkpoint-*)")
    parser.add_argument(
        "--block-size", type=bounded(int, 2), default=256, help="tokens per training sequence (default 256)"
    )
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="read at most this many tokens of --data")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="sequences per device per step (default 8)")
    parser.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    parser.add_argument("--epochs", type=positive_float, default=1.0, help="passes over the data (default 1)")
    parser.add_argument(
        "--max-steps", type=positive_int, default=-1, help="stop after this many steps (overrides --epochs)"
    )
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument(
        "--warmup-steps", type=non_negative_float, default=0.05, help="warmup steps, or a fraction if < 1"
    )
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--num-layers", type=positive_int, default=1, help="decoder blocks in the module (default 1)")
    parser.add_argument("--init", choices=GRAFT_INITS, default=DEFAULT_GRAFT_INIT, help="how the fresh module starts")
    parser.add_argument("--adapter", default=None, help="continue training this adapter instead of a fresh module")
    parser.add_argument(
        "--draft-vocab-size",
        type=positive_int,
        default=None,
        help="let verify mode draft only among the N most frequent tokens of --data (saved with the adapter)",
    )
    parser.add_argument(
        "--distill-weight",
        type=fraction,
        default=0.0,
        help="0..1: weight of the KL loss to the base's own next-token distribution (rest: cross-entropy on --data)",
    )
    parser.add_argument("--distill-temperature", type=positive_float, default=1.0)
    parser.add_argument(
        "--state-loss-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of a smooth-L1 loss pulling the module's states towards the base's (better chained drafts)",
    )
    parser.add_argument(
        "--draft-depth",
        type=positive_int,
        default=1,
        help="train up to N chained drafts per position, the module reading its own states as verify mode does "
        "(training-time test; costs about N module passes per step). Default 1",
    )
    parser.add_argument(
        "--draft-depth-decay", type=non_negative_float, default=0.8,
        help="loss weight of depth d is DECAY**(d-1) (default 0.8)"
    )
    parser.add_argument(
        "--precompute-base-states",
        action="store_true",
        help="run the frozen base over the data once and keep its states in memory (4 bytes x hidden size per "
        "token); every epoch then costs only the module. Not with --lora.",
    )
    parser.add_argument(
        "--base-states-cache",
        default=None,
        metavar="FOLDER",
        help="with --precompute-base-states: keep the states in FOLDER (train.safetensors, eval.safetensors) and "
        "reuse them in later runs over the same data and base (checked), so that trying several modules pays for "
        "the base once",
    )
    parser.add_argument(
        "--eval-data", nargs="+", default=None, help="held-out .jsonl/.txt files, evaluated at the end (and every "
        "--eval-steps)"
    )
    parser.add_argument(
        "--eval-steps", type=positive_int, default=None, help="evaluate every N steps (default: at the end)"
    )
    parser.add_argument("--lora", action="store_true", help="also train LoRA layers on the base (joint fine-tuning)")
    parser.add_argument("--lora-r", type=positive_int, default=16)
    parser.add_argument("--lora-alpha", type=positive_int, default=32)
    parser.add_argument("--lora-dropout", type=fraction, default=0.05)
    parser.add_argument(
        "--lora-target-modules", default=None, help="comma-separated module names (default: peft's for the base)"
    )
    parser.add_argument(
        "--lm-loss-weight", type=non_negative_float, default=1.0, help="with --lora: weight of the base's LM loss"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="resume from the last checkpoint in --output, or from the given checkpoint folder",
    )
    parser.add_argument("--logging-steps", type=positive_int, default=10)
    parser.add_argument("--save-steps", type=positive_int, default=200, help="checkpoint every N steps (default 200)")
    parser.add_argument("--save-total-limit", type=positive_int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--seed", type=int, default=0)


def _lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    target_modules = args.lora_target_modules.split(",") if args.lora_target_modules else None
    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=target_modules
    )


def run(args: argparse.Namespace) -> int:
    if args.precompute_base_states and args.lora:
        raise InvalidInputError("--precompute-base-states needs a frozen base; drop it or --lora.")
    if args.base_states_cache and not args.precompute_base_states:
        raise InvalidInputError("--base-states-cache keeps precomputed states; add --precompute-base-states.")
    # Seeded before grafting too, so that --seed fixes the fresh module's initial weights, not only the data order.
    set_seed(args.seed)
    base_model, tokenizer = load_base_from_args(args)
    train_dataset = load_token_blocks(args.data, tokenizer, block_size=args.block_size, max_tokens=args.max_tokens)
    eval_dataset = load_token_blocks(args.eval_data, tokenizer, block_size=args.block_size) if args.eval_data else None
    if args.adapter:
        model = load_recycle_adapter(base_model, args.adapter, is_trainable=True)
    else:
        model = graft_recycle_module(base_model, num_layers=args.num_layers, init=args.init)
    if args.lora and base_lora_config(model) is None:
        add_base_lora(model, _lora_config(args))
    if args.draft_vocab_size:
        vocab_size = model.get_output_embeddings().weight.shape[0]
        draft_ids = frequent_token_ids([train_dataset.token_ids().tolist()], args.draft_vocab_size, vocab_size)
        model.set_draft_vocabulary(draft_ids)
    if args.precompute_base_states:
        cache = Path(args.base_states_cache) if args.base_states_cache else None
        train_dataset = BaseStateDataset.compute(
            model, train_dataset, args.batch_size, cache_file=cache / "train.safetensors" if cache else None
        )
        if eval_dataset is not None:
            eval_dataset = BaseStateDataset.compute(
                model,
                eval_dataset,
                args.batch_size,
                desc="eval base states",
                cache_file=cache / "eval.safetensors" if cache else None,
            )
    training_args = RecycleTrainingArguments(
        **common_training_arguments(args),
        num_train_epochs=args.epochs,
        lr_scheduler_type="cosine",
        use_cpu=args.device == "cpu",
        eval_strategy="steps" if eval_dataset is not None and args.eval_steps else "no",
        eval_steps=args.eval_steps,
        per_device_eval_batch_size=args.batch_size,
    )
    trainer = RecycleTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        base_model_name_or_path=base_model_name(args.base),
    )
    result = trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model()
    evaluated_last_step = any(
        "eval_loss" in log and log["step"] == trainer.state.global_step for log in trainer.state.log_history
    )
    if eval_dataset is not None and not evaluated_last_step:
        trainer.evaluate()
    if trainer.is_world_process_zero():
        # Blocks are full except possibly the last one, so samples/s times the block size is the token rate.
        tokens_per_second = result.metrics["train_samples_per_second"] * args.block_size
        last_log = next((log for log in reversed(trainer.state.log_history) if "recycle_loss" in log), {})
        eval_log = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        if eval_log is not None:
            held_out = [
                f"recycle_loss {eval_log.get('eval_recycle_loss', float('nan')):.3f}",
                f"top-1 accuracy {eval_log.get('eval_recycle_accuracy', float('nan')):.3f}",
                f"agreement with the base {eval_log.get('eval_base_agreement', float('nan')):.3f}",
            ]
            if "eval_second_draft_agreement" in eval_log:
                held_out.append(f"second chained draft's agreement {eval_log['eval_second_draft_agreement']:.3f}")
            print("Held-out: " + ", ".join(held_out) + ".")
        if last_log:
            logged = (
                f"at step {last_log['step']}: recycle_loss {last_log['recycle_loss']:.3f}, "
                f"top-1 accuracy {last_log.get('recycle_accuracy', float('nan')):.3f}"
            )
        else:  # Trainer logs every --logging-steps steps: a shorter run logged nothing
            logged = f"no step logged (the run is shorter than --logging-steps {args.logging_steps})"
        print(
            f"Trained to step {result.global_step} in {result.metrics['train_runtime']:.0f} s "
            f"({tokens_per_second:.0f} tokens/s); last logged {logged}."
        )
        print(
            f"Adapter saved to {args.output}; load it with "
            f"recycle_hf.load_recycle_adapter(base_model, '{args.output}')."
        )
    return 0
