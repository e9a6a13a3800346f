#!/usr/bin/env bash
# Joint pretraining (base + recyclable module, LM loss + recycle loss) of the tiny preset from scratch, on text that
# ships in this repository (README, benchmarks doc, the training prompt list; never the evaluation data), with the
# byte-level tokenizer. A few minutes on a 2-core CPU. Usage: bash examples/pretrain_tiny.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
output="${1:-runs/pretrain-tiny}"
# The tiny model's products are too small to gain from a second thread, and on a shared machine a waiting OpenMP
# thread costs a lot (measured on a busy 2-core box: 4500 tokens/s with one thread, 1200 with two).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

.venv/bin/recycle-hf pretrain --preset tiny \
    --data README.md docs/BENCHMARKS.md examples/data/train_prompts.txt \
    --output "$output" --max-steps 500 --block-size 256 --batch-size 16 \
    --learning-rate 3e-3 --warmup-steps 0.02 --shuffle-buffer 1000 \
    --logging-steps 50 --save-steps 250 --cpu

# The same recipe at the paper's size, on a GPU machine (not run here; memory per GPU: README, "Pretraining").
# The tokenizer must fit the preset's 32000-token vocabulary, e.g. a LLaMA/Mistral SentencePiece tokenizer; the
# corpus streams from the Hub (or give local --data files). One machine with 8 GPUs, FSDP2 full shard:
#
#   accelerate launch --config_file examples/accelerate/fsdp.yaml -m recycle_hf.cli pretrain \
#       --preset recyclegpt-1.3b --tokenizer path/to/llama-tokenizer \
#       --dataset monology/pile-uncopyrighted --shuffle-buffer 10000 --dataloader-workers 4 \
#       --output runs/recyclegpt-1.3b --max-steps 100000 --block-size 2048 --batch-size 8 \
#       --gradient-accumulation-steps 8 --learning-rate 3e-4 --warmup-steps 2000 --bf16 --save-steps 1000
#
# DDP or DeepSpeed: the same command with --config_file examples/accelerate/ddp.yaml, deepspeed_zero2.yaml or
# deepspeed_zero3.yaml (pip install deepspeed). Add --gradient-checkpointing when activations do not fit. Resume a
# stopped run with the same command plus --resume.
