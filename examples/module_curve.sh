#!/usr/bin/env bash
# Issue #16's curve on the CPU: how the module's agreement with the base moves with module size, data size and
# joint training (LoRA on the base), each module trained from scratch on the same natural text and scored on the
# same held-out data (benchmarks/module_curve.py). docs/BENCHMARKS.md ("Module curve") has the result, the times
# on the 2-core CPU and the machine. Run from the repository root inside the set-up environment (.ci/setup).
#
# 1. Natural text: the docstring collection of examples/continue_on_natural_text.sh (560,000 characters, about
#    159,000 tokens, 623 blocks of 256) and, for scoring only, the next 80,000 characters of the same sources.
# 2. The frozen base's states over the training text, once (kept in $work/base-states, reused by every frozen run).
# 3. Modules of 1 and 2 blocks (and 4, with LAYERS="1 2 4"), identity init, the shipped recipe's loss (0.25 CE +
#    0.75 KL to the base + 0.5 state regression), single drafts, batch 8 x 256 tokens, lr 1e-3 cosine; data size =
#    tokens seen in one pass: STEPS "20 78" = 41k tokens (a seeded random quarter of the blocks) and all of them.
# 4. Joint: a 1-block module with LoRA (r 16) on the base, 20 steps, the base run live (its states change).
# 5. Scoring: benchmarks/module_curve.py on the shipped module and every module above.
set -euo pipefail
work=${WORK_DIR:-work/module-curve}
layers=${LAYERS:-1 2}
steps=${STEPS:-20 78}
joint_steps=${JOINT_STEPS:-20}
results=${RESULTS_DIR:-$work/results}
mkdir -p "$work"
python examples/collect_natural_text.py --output "$work/natural/text.jsonl" --max-characters 560000 \
    --heldout-output "$work/natural-heldout/text.jsonl" --heldout-characters 80000
common=(--base default --data "$work/natural/text.jsonl" --batch-size 8 --block-size 256 --learning-rate 1e-3
        --warmup-steps 0.05 --distill-weight 0.75 --state-loss-weight 0.5 --logging-steps 5 --save-steps 1000
        --save-total-limit 1 --seed 0)
adapters=(shipped)
for n in $layers; do
    for s in $steps; do
        out="$work/l$n-s$s"
        [ -f "$out/adapter_config.json" ] || recycle-hf train "${common[@]}" --num-layers "$n" --max-steps "$s" \
            --precompute-base-states --base-states-cache "$work/base-states" --output "$out"
        adapters+=("$out")
    done
done
out="$work/l1-s$joint_steps-lora"
[ -f "$out/adapter_config.json" ] || recycle-hf train "${common[@]}" --num-layers 1 --max-steps "$joint_steps" \
    --lora --output "$out"
adapters+=("$out")
python benchmarks/module_curve.py --adapters "${adapters[@]}" --natural-heldout "$work/natural-heldout/text.jsonl" \
    --output-dir "$results"
