#!/usr/bin/env bash
# Reproduces the shipped module src/recycle_hf/adapters/smollm2-135m-instruct-recycle (see docs/BENCHMARKS.md for
# the time it took and the machine). Run from the repository root inside the set-up environment (.ci/setup).
#
# 1. Prompts: 600 training prompts built from templates and topics written for this project
#    (examples/make_distill_prompts.py; disjoint from the 48 held-out prompts, never the benchmark data).
# 2. Self-distillation: SmolLM2-135M-Instruct answers each prompt itself (greedy, chat template, 160 new tokens).
# 3. Training: a 1-block module on the frozen base, identity init, 4 epochs of 256-token blocks, loss =
#    0.25 cross-entropy on the data + 0.75 KL to the base's own next-token distribution; the 8192 most frequent
#    training tokens form the draft vocabulary.
# 4. Export: the module weights stored as float16 inside the package.
set -euo pipefail
work=${WORK_DIR:-work/default-adapter}
mkdir -p "$work"
python examples/make_distill_prompts.py
recycle-hf distill --base default --prompts examples/data/train_prompts.txt --output "$work/smollm2_train.jsonl" \
    --max-new-tokens 160 --batch-size 16
recycle-hf train --base default --data "$work/smollm2_train.jsonl" --output "$work/adapter" --epochs 4 \
    --batch-size 8 --block-size 256 --distill-weight 0.75 --draft-vocab-size 8192 --seed 0
python examples/export_adapter.py "$work/adapter" src/recycle_hf/adapters/smollm2-135m-instruct-recycle --dtype float16
