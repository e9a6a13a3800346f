"""`recycle-hf bench speed|quality`: the benchmarks of `recycle_hf.bench` (also `benchmarks/speed.py`, `quality.py`)."""

from __future__ import annotations

import argparse

from ..bench import add_quality_arguments, add_speed_arguments, run_quality_command, run_speed_command


HELP = (
    "Benchmark recycle decoding: 'speed' times every mode against transformers' generate (JSON, markdown, PNG); "
    "'quality' measures the module's agreement, alternating-schedule perplexity and verify-mode tokens per forward."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    speed = benchmarks.add_parser("speed", help="tokens/s of every decoding mode and batch size, with ratios")
    add_speed_arguments(speed)
    speed.set_defaults(run_benchmark=run_speed_command)
    quality = benchmarks.add_parser("quality", help="module agreement, perplexity, verify-mode tokens per forward")
    add_quality_arguments(quality)
    quality.set_defaults(run_benchmark=run_quality_command)


def run(args: argparse.Namespace) -> int:
    return args.run_benchmark(args)
