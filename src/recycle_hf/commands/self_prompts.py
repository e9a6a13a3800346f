"""`recycle-hf self-prompts`: user prompts written by the base model itself, for `recycle-hf distill`."""

from __future__ import annotations

import argparse
import time

from ..distill import read_prompts
from ..loading import add_base_arguments, load_base_from_args
from ..self_prompts import sample_user_prompts, write_prompts
from . import bounded, positive_float, positive_int


HELP = (
    "Sample user prompts from an instruction model's own chat template (Magpie), as JSON lines for "
    "`recycle-hf distill --prompts`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_arguments(parser)
    parser.add_argument("--count", type=positive_int, required=True, help="number of distinct prompts to keep")
    parser.add_argument("--output", required=True, help="JSON lines file to write ({'prompt': ...} per line)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64,
                        help="longest prompt, in tokens; a message that does not end its turn by then is dropped")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--top-p", type=bounded(float, 0, 1, exclusive_minimum=True), default=1.0)
    parser.add_argument("--exclude-terms", nargs="+", default=[],
                        help="drop prompts containing any of these words (case-insensitive), e.g. held-out topics")
    parser.add_argument("--exclude-prompts", nargs="+", default=[],
                        help=".txt or .jsonl prompt files whose prompts must not be repeated (e.g. held-out ones)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="stop after this many samples even if fewer prompts were kept (default 4 x --count)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    excluded = read_prompts(args.exclude_prompts) if args.exclude_prompts else []
    model, tokenizer = load_base_from_args(args)
    started = time.perf_counter()
    prompts = sample_user_prompts(
        model,
        tokenizer,
        args.count,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        exclude_terms=args.exclude_terms,
        exclude_prompts=excluded,
        max_samples=args.max_samples,
        seed=args.seed,
    )
    write_prompts(prompts, args.output)
    elapsed = time.perf_counter() - started
    print(f"Wrote {len(prompts)} prompts to {args.output} in {elapsed:.0f} s.")
    return 0
