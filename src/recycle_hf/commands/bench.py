"""`recycle-hf bench speed|quality`: the benchmarks of `recycle_hf.bench` (also `benchmarks/speed.py`, `quality.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..bench.models import BENCHMARK_SHAPES, BenchmarkModel, load_benchmark_model
from ..bench.modes import DEFAULT_NUM_DRAFT_TOKENS_SWEEP
from ..bench.prompts import prompt_texts
from ..bench.quality import DEFAULT_QUALITY_NUM_DRAFT_TOKENS, QualitySettings, run_quality_benchmark
from ..bench.report import quality_markdown, speed_markdown, write_quality_results, write_speed_results
from ..bench.speed import DEFAULT_BATCH_SIZES, SpeedSettings, run_speed_benchmark
from ..loading import DTYPES
from . import draft_trees_option, num_draft_tokens_list, option_values


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


def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model (give one of --model, --base, --shape)")
    source.add_argument("--model", help="RecycleGPT checkpoint folder")
    source.add_argument("--base", help="base causal LM folder, or 'default' for the embedded SmolLM2-135M-Instruct")
    source.add_argument(
        "--adapter",
        help="recycle adapter folder for --base (default base: the shipped module; other bases: an untrained one)",
    )
    source.add_argument(
        "--shape", choices=sorted(BENCHMARK_SHAPES), help="random-initialised model shape (speed only)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 for --shape, float32 otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, see OMP_NUM_THREADS)")
    parser.add_argument("--output-dir", default="benchmark-results", help="folder for the JSON/markdown/PNG outputs")


def _benchmark_model_from_args(args: argparse.Namespace) -> BenchmarkModel:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    base = args.base
    if args.model is None and args.base is None and args.shape is None:
        base = "default"
    return load_benchmark_model(args.model, base, args.adapter, args.shape, args.dtype, args.device, args.seed)


def _print_report(markdown: str, paths: list[Path]) -> int:
    print(markdown)
    print("Wrote " + ", ".join(str(path) for path in paths))
    return 0


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `recycle-hf bench speed` and `benchmarks/speed.py`."""
    _add_model_arguments(parser)
    parser.add_argument("--batch-sizes", type=_positive_int_list, default=DEFAULT_BATCH_SIZES, help="e.g. 1,4,16")
    parser.add_argument(
        "--num-draft-tokens", type=num_draft_tokens_list, default=DEFAULT_NUM_DRAFT_TOKENS_SWEEP,
        help="verify-mode k values"
    )
    parser.add_argument(
        "--draft-trees", type=draft_trees_option, default=(),
        help="draft trees measured as modes verify_treeN, a JSON list of trees: '[[[0], [1], [0, 0]]]'",
    )
    parser.add_argument(
        "--modes",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        help="subset of modes, e.g. hf_generate,alternate,verify_k3 (default: all)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed runs per mode first (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument(
        "--static-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="measure transformers' static-cache compiled generate (auto: on CUDA only; compiling on the CPU is slow)",
    )
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens for --shape (random ids)")
    parser.add_argument("--prompts-file", help="prompts, one per line (default: the built-in BENCHMARK_PROMPTS)")
    parser.add_argument("--prompt-sets", type=int, default=1,
                        help="batches of different prompts each timed run decodes in turn (default 1)")
    parser.add_argument(
        "--acceptance-from", help="speed.json of the real model: project verify-mode speed with its acceptance"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot (no matplotlib needed)")


def run_speed_command(args: argparse.Namespace) -> int:
    settings = SpeedSettings(
        **option_values(args, "batch_sizes", "max_new_tokens", "repeats", "warmup", "prompt_length", "seed",
                        "acceptance_from", "prompt_sets", "prompts_file"),
        num_draft_tokens=args.num_draft_tokens,
        draft_trees=args.draft_trees,
        mode_names=args.modes,
        do_sample=args.sample,
        static_compile={"auto": None, "on": True, "off": False}[args.static_compile],
    )
    settings.validate()
    results = run_speed_benchmark(_benchmark_model_from_args(args), settings)
    return _print_report(speed_markdown(results), write_speed_results(results, args.output_dir, plot=not args.no_plot))


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `recycle-hf bench quality` and `benchmarks/quality.py`."""
    _add_model_arguments(parser)
    parser.add_argument(
        "--prompts-file", help="held-out prompts, one per line (default: the built-in BENCHMARK_PROMPTS)"
    )
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="continuation length per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--num-draft-tokens",
        type=num_draft_tokens_list,
        default=DEFAULT_QUALITY_NUM_DRAFT_TOKENS,
        help=f"verify-mode k values, e.g. 1,2,3,4 (default: {','.join(map(str, DEFAULT_QUALITY_NUM_DRAFT_TOKENS))})",
    )
    parser.add_argument(
        "--sample-continuations", action="store_true", help="score sampled (not greedy) base continuations"
    )


def run_quality_command(args: argparse.Namespace) -> int:
    if args.shape is not None:
        raise ValueError(
            "The quality benchmark needs a trained model: use --model or --base [--adapter], not --shape."
        )
    settings = QualitySettings(
        **option_values(args, "max_new_tokens", "batch_size", "sample_continuations", "seed"),
        num_draft_tokens=args.num_draft_tokens,
    )
    settings.validate()
    prompts, source = prompt_texts(args.prompts_file)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}.")
        prompts, source = prompts[: args.limit], f"{source} (first {args.limit})"
    results = run_quality_benchmark(_benchmark_model_from_args(args), prompts, settings, source)
    return _print_report(quality_markdown(results), write_quality_results(results, args.output_dir))
