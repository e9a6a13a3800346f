#!/usr/bin/env bash
# Reproduces the shipped module src/recycle_hf/adapters/smollm2-135m-instruct-recycle (docs/BENCHMARKS.md has the
# sizes, the times and the machine). Run from the repository root inside the set-up environment (.ci/setup).
# Made on one NVIDIA H200 in 7 minutes (distillation 3 min, training 3 min); DEVICE=cpu runs the same commands,
# but on 2 CPU cores distillation alone would take about 6 hours (130 generated tokens/s).
#
# 1. Prompts: 9232 training prompts built from templates, topics and tasks written for this project
#    (examples/make_distill_prompts.py: every template x topic pair, 81 programming tasks, 26 writing tasks, 600
#    arithmetic word problems); disjoint from the 48 held-out prompts, never the benchmark data.
# 2. Self-distillation: SmolLM2-135M-Instruct answers each prompt itself with the chat template, <= 160 new tokens,
#    once greedily and once sampled (temperature 0.8, seed 1; the first 9216 prompts); the held-out prompts greedily
#    (<= 128 new tokens), used only to report held-out agreement while training.
# 3. Training: a 1-block module on the frozen base, identity init, 1233 steps (3 epochs) of 32 x 256-token blocks;
#    loss per draft depth = 0.25 cross-entropy on the data + 0.75 KL to the base's own next-token distribution +
#    0.5 smooth-L1 from the module's states to the base's; depths 1-3 trained as verify mode chains drafts
#    (--draft-depth 3, weights 1, 0.8, 0.64); the 8192 most frequent training tokens form the draft vocabulary.
# 4. Export: module weights as float16 inside the package.
# Seeded throughout; on the GPU, matrix products ran in TF32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1), so another kind
# of GPU (or the CPU) gives a module that differs in its last bits.
set -euo pipefail
work=${WORK_DIR:-work/default-adapter}
device=${DEVICE:-cuda}
mkdir -p "$work"
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
python examples/make_distill_prompts.py --topic-prompts 8520 --word-problems 600 \
    --train-output "$work/train_prompts.txt"
recycle-hf distill --base default --device "$device" --prompts examples/data/heldout_prompts.txt \
    --output "$work/heldout.jsonl" --max-new-tokens 128 --batch-size 48
recycle-hf distill --base default --device "$device" --prompts "$work/train_prompts.txt" \
    --output "$work/greedy.jsonl" --max-new-tokens 160 --batch-size 512
recycle-hf distill --base default --device "$device" --prompts "$work/train_prompts.txt" \
    --output "$work/sampled.jsonl" --max-new-tokens 160 --batch-size 512 --do-sample --temperature 0.8 --seed 1 \
    --limit 9216
recycle-hf train --base default --device "$device" --data "$work/greedy.jsonl" "$work/sampled.jsonl" \
    --eval-data "$work/heldout.jsonl" --output "$work/adapter" --batch-size 32 --block-size 256 --max-steps 1233 \
    --distill-weight 0.75 --state-loss-weight 0.5 --draft-depth 3 --draft-vocab-size 8192 \
    --eval-steps 308 --save-steps 308 --save-total-limit 1 --logging-steps 25 --seed 0
python examples/export_adapter.py "$work/adapter" src/recycle_hf/adapters/smollm2-135m-instruct-recycle \
    --dtype float16
