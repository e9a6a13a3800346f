"""`recycle-hf init`: write a randomly initialised checkpoint of a named preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError
from ..loading import DTYPES
from ..presets import PRESETS, init_preset


HELP = "Write a randomly initialised RecycleGPT checkpoint of a preset shape (e.g. the paper's recyclegpt-1.3b)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model shape")
    parser.add_argument("--output", required=True, help="checkpoint folder to write")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if Path(args.output).is_file():
        raise InvalidInputError(f"--output {args.output} is a file; give a folder path for the checkpoint.")
    dtype = DTYPES[args.dtype] if args.dtype else None
    model = init_preset(args.preset, args.output, dtype=dtype, seed=args.seed)
    base = sum(p.numel() for p in model.base_lm.parameters())
    module = sum(p.numel() for p in model.recycle_module.parameters())
    print(f"Wrote {args.preset} to {args.output}: base {base / 1e6:.1f}M parameters, "
          f"recyclable module {module / 1e6:.1f}M (+{100 * module / base:.1f}%). It has random weights and no "
          "tokenizer: train it with `recycle-hf pretrain --model DIR`, or save a tokenizer of its vocabulary there.")
    return 0
