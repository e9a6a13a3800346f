"""Where a fast-path step's time goes, per CPU kind: one eager step (and, with --compiled, one compiled step) of a
chain profiled at each batch size, broken down by phase (module drafting, base forward, LM head and acceptance,
commit and module catch-up) and, inside the base forward over k + 1 tokens and over 1 token, by kind of op (linear,
attention, norms and the rest). What no op accounts for is Python dispatch and bookkeeping. Each step's ops of most
self time are listed too (compiled: inductor's kernels by name).

python benchmarks/step_profile.py --base default --threads 2 --batch-sizes 1,4 --num-draft-tokens 1,2 \
    --output benchmarks/results/intel-step-profile/step_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile, record_function

from recycle_hf.bench.prompts import encode_chat_prompts, prompt_texts
from recycle_hf.checkpoint_code.draft_length_recyclegpt import calibration_decoder
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape
from recycle_hf.checkpoint_code.few_row_products_recyclegpt import describe_machine, few_row_products
from recycle_hf.checkpoint_code.generation_recyclegpt import CPU_INDUCTOR_OPTIONS
from recycle_hf.loading import load_recycle_model


PHASES = ("draft", "base_states", "accept", "finish_step")
ROUNDS = 9


def op_kind(name: str) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm"):
        return "linear"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in ("aten::pow", "aten::mean", "aten::rsqrt", "aten::layer_norm", "aten::native_layer_norm"):
        return "norms"
    return "other ops"


def _self_ms(events, predicate=lambda event: True) -> dict[str, float]:
    kinds: dict[str, float] = {}
    for event in events:
        if event.key.startswith("phase:") or not predicate(event):
            continue
        kind = op_kind(event.key)
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e3
    return kinds


def _top_ops(events, count: int = 12) -> dict[str, float]:
    """The ops (and, compiled, inductor's kernels) of most self time, ms."""
    ops = sorted(((event.key, event.self_cpu_time_total / 1e3) for event in events
                  if not event.key.startswith("phase:")), key=lambda item: -item[1])
    return {name: round(ms, 3) for name, ms in ops[:count]}


@contextlib.contextmanager
def labelled_phases(decoder):
    """Each phase method of `decoder` runs inside a profiler label named after it."""
    originals = {name: getattr(decoder, name) for name in PHASES}

    def labelled(name):
        def run(*args, **kwargs):
            with record_function(f"phase:{name}"):
                return originals[name](*args, **kwargs)
        return run

    for name in PHASES:
        setattr(decoder, name, labelled(name))
    try:
        yield
    finally:
        for name in PHASES:
            setattr(decoder, name, originals[name])


def wall_ms(function, rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


@torch.no_grad()
def profile_chain(model, batch, num_drafts: int, compiled: bool) -> dict:
    tree = DraftShape.chain(num_drafts)
    with few_row_products(model, batch.input_ids.device):
        decoder = calibration_decoder(model, batch.input_ids, batch.attention_mask, tree)
        output = decoder.prefill()
        state = output.state
        # Compiled as `generate` compiles the step on the CPU (with inductor's C++ wrapper).
        step = (torch.compile(decoder.step, fullgraph=True, dynamic=False, options=dict(CPU_INDUCTOR_OPTIONS))
                if compiled else decoder.step)
        for _ in range(2):
            step(state)  # warm-up (compiles when asked)
        step_ms = wall_ms(lambda: step(state))
        tokens = {n: state.newest_tokens.unsqueeze(1).repeat(1, n) for n in (1, num_drafts + 1)}
        forward_ms = {n: wall_ms(lambda n=n: decoder.base_states(tokens[n], state.base_lengths)) for n in tokens}
        result = dict(num_drafts=num_drafts, batch_size=batch.batch_size, compiled=compiled, step_ms=step_ms,
                      base_forward_ms={str(n): ms for n, ms in forward_ms.items()})
        if compiled:  # inductor's own kernels show under their names (`enable_kernel_profile`, set in `main`)
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                started = time.perf_counter()
                step(state)
                profiled_ms = (time.perf_counter() - started) * 1e3
            result.update(profiled_step_ms=profiled_ms, top_ops_ms=_top_ops(profiled.key_averages()))
            return result
        with labelled_phases(decoder), profile(activities=[ProfilerActivity.CPU]) as profiled:
            started = time.perf_counter()
            decoder.step(state)
            profiled_ms = (time.perf_counter() - started) * 1e3
        events = profiled.key_averages()
        phases = {event.key.removeprefix("phase:"): event.cpu_time_total / 1e3 for event in events
                  if event.key.startswith("phase:")}
        op_ms = sum(event.self_cpu_time_total for event in events if not event.key.startswith("phase:")) / 1e3
        base_ops = {}
        for n in tokens:
            with profile(activities=[ProfilerActivity.CPU]) as profiled_forward:
                decoder.base_states(tokens[n], state.base_lengths)
            base_ops[str(n)] = _self_ms(profiled_forward.key_averages())
        result.update(profiled_step_ms=profiled_ms, phases_ms=phases, ops_ms=op_ms, top_ops_ms=_top_ops(events),
                      dispatch_and_bookkeeping_ms=profiled_ms - op_ms, base_forward_ops_ms=base_ops)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--adapter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--num-draft-tokens", default="1,2")
    parser.add_argument("--compiled", action="store_true", help="also time compiled steps (a compile per shape)")
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compiled:
        inductor_config.cpp.enable_kernel_profile = True
    model, tokenizer = load_recycle_model(base=args.base, adapter=args.adapter)
    texts, _ = prompt_texts(args.prompts_file)
    results = []
    for size in (int(part) for part in args.batch_sizes.split(",")):
        batch = encode_chat_prompts(tokenizer, texts[:size], model.device)
        for num_drafts in (int(part) for part in args.num_draft_tokens.split(",")):
            for compiled in (False, True) if args.compiled else (False,):
                row = profile_chain(model, batch, num_drafts, compiled)
                results.append(row)
                print(json.dumps(row))
    machine = describe_machine()
    print(machine)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(machine=machine, results=results), indent=1))


if __name__ == "__main__":
    main()
