"""vLLM on this machine: tokens/s without a draft, with the exported recycle module (k swept), with vLLM's n-gram
drafter, at several batch sizes, on the held-out prompts; and the acceptance counters. Run it with the vLLM
environment's interpreter (`.ci/setup-vllm`):

    .venv-vllm/bin/python benchmarks/vllm_speed.py --draft DRAFT_DIR --output benchmarks/results/DIR

Each configuration is one engine (started once, warmed up on the same batch, then timed `--repeats` times; medians).
Batch 1 decodes the prompts one request at a time; batch B sends B prompts at once. EOS is ignored so that every
configuration decodes the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from transformers import AutoTokenizer

from recycle_hf.defaults import dequantized_base_dir
from recycle_hf.integrations.vllm_engine import run_in_subprocess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(dequantized_base_dir()), help="the target folder")
    parser.add_argument("--draft", required=True, help="the exported draft folder (recycle-hf export vllm)")
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--num-draft-tokens", default="1,2,3", help="k values swept for the module")
    parser.add_argument("--ngram-k", type=int, default=3)
    parser.add_argument("--batch1-prompts", type=int, default=4, help="prompts decoded one at a time at batch 1")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=None, help="subset, e.g. none,module_k3,ngram")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    texts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]) for text in texts]
    batch_sizes = [int(part) for part in args.batch_sizes.split(",")]
    configs = {"none": {}}
    configs.update({f"module_k{k}": {"draft": args.draft, "num_speculative_tokens": int(k)}
                    for k in args.num_draft_tokens.split(",")})
    configs["ngram"] = {"draft": "ngram", "num_speculative_tokens": args.ngram_k}
    if args.configs:
        configs = {name: value for name, value in configs.items() if name in args.configs.split(",")}

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    records = []
    for name, draft in configs.items():
        batches = [dict(name=f"batch{batch}", sequential=batch == 1, warmup=1, repeats=args.repeats,
                        prompt_token_ids=prompts[: args.batch1_prompts] if batch == 1 else prompts[:batch])
                   for batch in batch_sizes]
        result = run_in_subprocess(dict(model=args.base, max_tokens=args.max_new_tokens, ignore_eos=True,
                                        max_num_seqs=max(batch_sizes), batches=batches, **draft), timeout=3600)
        for batch in batch_sizes:
            timed = result["batches"][f"batch{batch}"]
            seconds = statistics.median(timed["seconds"])
            counters = timed["spec_decode"]
            drafts = counters.get("spec_decode_num_drafts")
            record = {"config": name, "batch_size": batch, "tokens": timed["new_tokens"], "seconds": seconds,
                      "tokens_per_second": timed["new_tokens"] / seconds,
                      "spread": (max(timed["seconds"]) - min(timed["seconds"])) / seconds,
                      "mean_accepted_length": 1 + counters["spec_decode_num_accepted_tokens"] / drafts
                      if drafts else None,
                      "start_seconds": result["start_seconds"],
                      "same_tokens_every_round": timed["same_tokens_every_round"], "token_ids": timed["token_ids"]}
            records.append(record)
            print(json.dumps({key: value for key, value in record.items() if key != "token_ids"}), flush=True)
    environment = {"cpu_count": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                   "python": sys.version.split()[0]}
    (output / "vllm_speed.json").write_text(json.dumps({"records": records, "environment": environment,
                                                        "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
