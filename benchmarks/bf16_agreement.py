"""How often reduced precision makes lossless verify mode differ from plain decoding, next to how often transformers'
own compiled path differs from its eager one, on the same prompts (greedy, bf16, CPU or GPU).

In fp32 a forward over k + 1 tokens and k + 1 one-token forwards round alike closely enough that greedy outputs are
identical on the tested prompts; in bf16 they round differently, and a near tie between two tokens can flip. This
script counts, per prompt, whether and where each pair of outputs first differs.

python benchmarks/bf16_agreement.py --prompts-file examples/data/heldout_prompts.txt --limit 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from transformers import CompileConfig

from recycle_hf.commands import num_draft_tokens_option
from recycle_hf.distill import format_prompt, read_prompts
from recycle_hf.loading import load_recycle_model


def first_difference(reference: torch.Tensor, candidate: torch.Tensor) -> int | None:
    width = min(reference.shape[-1], candidate.shape[-1])
    differs = (reference[..., :width] != candidate[..., :width]).nonzero()
    if len(differs):
        return int(differs[0, -1])
    return None if reference.shape[-1] == candidate.shape[-1] else width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-draft-tokens", type=num_draft_tokens_option, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_recycle_model(dtype="bfloat16", device=args.device)
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True
    prompts = read_prompts([args.prompts_file])[: args.limit]
    rows = []
    for prompt in prompts:
        text = format_prompt(tokenizer, prompt, use_chat_template=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(args.device)
        width = inputs["input_ids"].shape[1]
        settings = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
        plain = model.generate(**inputs, **settings)[0, width:]
        verify = model.generate(**inputs, recycle_mode="verify", num_draft_tokens=args.num_draft_tokens,
                                **settings)[0, width:]
        compiled = model.base_lm.generate(**inputs, cache_implementation="static", compile_config=compile_config,
                                          **settings)[0, width:]
        rows.append({
            "prompt": prompt,
            "verify_vs_plain": first_difference(plain, verify),
            "hf_compiled_vs_eager": first_difference(plain, compiled),
        })
        print(json.dumps(rows[-1]), flush=True)
    for key in ("verify_vs_plain", "hf_compiled_vs_eager"):
        differing = [row[key] for row in rows if row[key] is not None]
        print(f"{key}: {len(differing)} of {len(rows)} prompts differ within {args.max_new_tokens} tokens"
              f" (first differences at {sorted(differing)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
