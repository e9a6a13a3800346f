"""How far two distillation files (`recycle-hf distill` with `--engine transformers` and `--engine vllm`, same
prompts, greedy) agree: the share of identical completions, and for the others how many leading tokens agree.

    python benchmarks/distill_agreement.py transformers.jsonl vllm.jsonl [--base default]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from recycle_hf.loading import load_base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--base", default="default", help="whose tokenizer counts the tokens")
    args = parser.parse_args()
    _, tokenizer = load_base(args.base)
    first = [json.loads(line) for line in Path(args.first).read_text().splitlines()]
    second = {record["prompt"]: record for record in map(json.loads, Path(args.second).read_text().splitlines())}
    identical, prefixes, tokens = 0, [], 0
    for record in first:
        a = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        b = tokenizer(second[record["prompt"]]["completion"], add_special_tokens=False)["input_ids"]
        tokens += len(a)
        if a == b:
            identical += 1
            continue
        prefixes.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    print(json.dumps({"prompts": len(first), "identical": identical, "share_identical": identical / len(first),
                      "tokens": tokens, "median_agreeing_prefix_of_the_others": statistics.median(prefixes)
                      if prefixes else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
