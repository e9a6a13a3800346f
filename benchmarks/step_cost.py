"""Step cost curve: where trees pay. Times (eager, medians of interleaved rounds) the base forward over n verified
tokens and whole fast-path steps of chains and trees, at each batch size, and reports the module's measured
acceptance by depth and rank with the expected tokens per step and per second of each shape.

python benchmarks/step_cost.py --base default --threads 2 --batch-sizes 1,4,16 \
    --output benchmarks/results/cpu-step-cost/step_cost.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from recycle_hf.bench.prompts import prompt_texts
from recycle_hf.checkpoint_code.draft_choice_recyclegpt import paired_ratio
from recycle_hf.checkpoint_code.draft_length_recyclegpt import (
    TREE_NODE_BUDGETS,
    calibration_decoder,
    measure_acceptance_by_rank,
    timed_rounds,
)
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape, best_draft_tree
from recycle_hf.checkpoint_code.few_row_products_recyclegpt import describe_machine, few_row_products
from recycle_hf.loading import load_recycle_model


VERIFIED_TOKENS = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33)
ROUNDS = 9


def base_forward_seconds(model, input_ids, attention_mask) -> dict[int, float]:
    """Median seconds of one base forward over n new tokens (the verify forward of n - 1 drafts), per n."""
    decoder = calibration_decoder(model, input_ids, attention_mask, DraftShape.chain(1))
    state = decoder.prefill().state
    samples: dict[int, list[float]] = {n: [] for n in VERIFIED_TOKENS}
    tokens = {n: state.newest_tokens.unsqueeze(1).repeat(1, n) for n in VERIFIED_TOKENS}
    for round_index in range(ROUNDS + 1):
        for n in VERIFIED_TOKENS:
            started = time.perf_counter()
            decoder.base_states(tokens[n], state.base_lengths)
            if round_index:  # the first round warms up every shape
                samples[n].append(time.perf_counter() - started)
    return {n: statistics.median(times) for n, times in samples.items()}


@torch.no_grad()
def measure(model, tokenizer, batch_size: int, texts: list[str]) -> dict:
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True) for text in texts[:batch_size]]
    encoded = tokenizer(chat, return_tensors="pt", padding=True)
    input_ids, attention_mask = encoded.input_ids, encoded.attention_mask
    with few_row_products(model, input_ids.device):
        by_rank = measure_acceptance_by_rank(model, input_ids, attention_mask)
    shapes = {f"chain{k}": DraftShape.chain(k) for k in range(1, 6)}
    for budget in TREE_NODE_BUDGETS + (24, 32):
        tree = best_draft_tree(by_rank, budget)
        if tree is not None and not tree.is_chain:
            shapes[f"tree{budget}"] = tree
    step_samples, plain_samples = timed_rounds(model, input_ids, attention_mask, shapes, rounds=ROUNDS)
    with few_row_products(model, input_ids.device):
        forwards = base_forward_seconds(model, input_ids, attention_mask)
    plain_seconds = statistics.median(plain_samples)
    rows = {}
    for name, tree in shapes.items():
        expected = tree.expected_tokens(by_rank)
        step = statistics.median(step_samples[name])
        # Speed over plain decoding per token, paired by round (as auto decides), with its noise interval.
        speedup = paired_ratio([seconds / expected for seconds in step_samples[name]], plain_samples).inverted()
        rows[name] = dict(paths=[list(path) for path in tree.paths], nodes=tree.num_nodes, depth=tree.depth,
                          step_ms=step * 1e3,
                          expected_tokens_per_step=expected, expected_tokens_per_second=batch_size * expected / step,
                          paired_speedup=[speedup.median, speedup.low, speedup.high])
    return dict(batch_size=batch_size, acceptance_by_rank=by_rank, plain_ms_per_token=plain_seconds * 1e3,
                plain_tokens_per_second=batch_size / plain_seconds,
                base_forward_ms={n: seconds * 1e3 for n, seconds in forwards.items()}, shapes=rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--adapter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_recycle_model(base=args.base, adapter=args.adapter)
    tokenizer.padding_side = "left"
    texts, _ = prompt_texts(args.prompts_file)
    results = [measure(model, tokenizer, int(size), texts) for size in args.batch_sizes.split(",")]
    print(describe_machine())
    for result in results:
        print(f"batch {result['batch_size']}: plain {result['plain_ms_per_token']:.1f} ms/token; base forward ms by "
              f"tokens " + ", ".join(f"{n}: {ms:.1f}" for n, ms in result["base_forward_ms"].items()))
        by_rank = [[round(p, 2) for p in ranks] for ranks in result["acceptance_by_rank"]]
        print("  acceptance by depth and rank", by_rank)
        for name, row in result["shapes"].items():
            print(f"  {name:7s} nodes {row['nodes']:2d} depth {row['depth']} step {row['step_ms']:6.1f} ms  "
                  f"E {row['expected_tokens_per_step']:.2f}  {row['expected_tokens_per_second']:.1f} tokens/s  "
                  f"paired {row['paired_speedup'][0]:.2f}x [{row['paired_speedup'][1]:.2f}, "
                  f"{row['paired_speedup'][2]:.2f}]  "
                  f"{row['paths']}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(threads=args.threads, machine=describe_machine(), results=results),
                                             indent=1))
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
