"""`recycle-hf generate`: stream an answer with recycle decoding; by default SmolLM2-135M plus the shipped module."""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CompileConfig, TextStreamer

from ..checkpoint_code.few_row_products_recyclegpt import describe_machine
from ..checkpoint_code.generation_recyclegpt import DEFAULT_NUM_DRAFT_TOKENS, resolve_recycle_mode
from ..distill import format_prompt
from ..loading import add_recycle_model_arguments, load_recycle_model_from_args
from . import bounded, num_draft_tokens_option, positive_float, positive_int


WARMUP_TOKENS = 16
HELP = "Generate text with recycle decoding (default: the embedded SmolLM2-135M-Instruct plus its trained module)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt (the chat template is applied when the model has one)")
    add_recycle_model_arguments(parser)
    parser.add_argument("--mode", choices=["verify", "alternate", "none"], default="verify",
                        help="verify: lossless draft-and-verify (default); alternate: the paper's lossy schedule; "
                             "none: plain decoding")
    parser.add_argument("--num-draft-tokens", type=num_draft_tokens_option, default=DEFAULT_NUM_DRAFT_TOKENS,
                        help="verify mode's drafts per base forward: auto, or an integer from 0 (plain decoding) to 16")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--compare", action="store_true", help="also run plain decoding and print the speed ratio")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decoding step (torch.compile; the first call pays tens of seconds on a CPU); "
                             "with --compare, plain decoding runs transformers' static-cache compiled path too")
    parser.add_argument("--no-chat-template", action="store_true")
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=positive_float, default=None)
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--top-p", type=bounded(float, 0, 1, exclusive_minimum=True), default=None)
    parser.add_argument("--seed", type=int, default=0)


def _sampling_arguments(args: argparse.Namespace) -> dict:
    if not args.do_sample:
        return {"do_sample": False}
    settings = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    return {name: value for name, value in settings.items() if value is not None}


def _compile_arguments(args: argparse.Namespace) -> dict:
    """What --compile asks of `generate`: transformers' own switches, including the one that compiles on the CPU."""
    if not args.compile:
        return {}
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": compile_config}


def _timed_generate(model, inputs, mode, streamer, args, max_new_tokens=None) -> tuple[torch.Tensor, dict, float]:
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    output = model.generate(
        **inputs,
        recycle_mode=mode,
        num_draft_tokens=args.num_draft_tokens,
        max_new_tokens=max_new_tokens or args.max_new_tokens,
        streamer=streamer,
        return_dict_in_generate=True,
        **_sampling_arguments(args),
        **_compile_arguments(args),
    )
    elapsed = time.perf_counter() - started
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1] :]
    stats = getattr(output, "recycle_stats", None) or {"base_forwards": len(new_tokens), "new_tokens": len(new_tokens)}
    return new_tokens, stats, elapsed


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_recycle_model_from_args(args)
    mode = resolve_recycle_mode(args.mode)
    text = format_prompt(tokenizer, args.prompt, use_chat_template=not args.no_chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=args.no_chat_template).to(model.device)
    # Short warm-up runs of every timed mode, so that one-time costs (first kernels, allocator growth, measuring
    # num_draft_tokens="auto", compiling) count against neither timed run.
    for warmup_mode in (mode, None) if args.compare and mode is not None else (mode,):
        _, _, warmup_seconds = _timed_generate(model, inputs, warmup_mode, None, args, WARMUP_TOKENS)
        if args.compile:
            print(f"[{warmup_mode or 'none'}] warm-up (compiles the step) took {warmup_seconds:.1f} s")

    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    new_tokens, stats, elapsed = _timed_generate(model, inputs, mode, streamer, args)
    count = len(new_tokens)
    per_forward = stats["new_tokens"] / max(1, stats["base_forwards"])
    drafts = f", k={stats['num_draft_tokens']}" if "num_draft_tokens" in stats else ""
    print(f"\n[{args.mode}] {count} tokens in {elapsed:.2f} s: {count / elapsed:.1f} tokens/s, "
          f"{per_forward:.2f} tokens per base forward{drafts} ({describe_machine()})")
    if "num_draft_tokens_source" in stats:
        print(f"draft shape: {stats['num_draft_tokens_source']}")

    if args.compare and mode is not None:
        plain_tokens, _, plain_elapsed = _timed_generate(model, inputs, None, None, args)
        same = torch.equal(plain_tokens, new_tokens)
        print(f"[none] {len(plain_tokens)} tokens in {plain_elapsed:.2f} s: "
              f"{len(plain_tokens) / plain_elapsed:.1f} tokens/s")
        ratio = (count / elapsed) / (len(plain_tokens) / plain_elapsed)
        verdict = "identical to" if same else "differs from"
        print(f"speed ratio {args.mode}/none: {ratio:.2f}x; output {verdict} plain decoding")
    return 0
