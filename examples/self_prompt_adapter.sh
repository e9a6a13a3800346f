#!/usr/bin/env bash
# Continues the shipped SmolLM2 module on the base's answers to prompts the base wrote itself (issue #16: data
# variety without a prompt list; `recycle-hf self-prompts`, Magpie). Run from the repository root inside the set-up
# environment (.ci/setup). docs/BENCHMARKS.md ("Self-written prompts") has the result, the times and the machine.
#
# 1. Prompts: COUNT user messages sampled from the base after its chat template's user-turn prefix (temperature
#    1, <= 64 tokens, seed 0); none of the 48 held-out prompts and none that names a held-out topic
#    (examples/make_distill_prompts.py HELDOUT_TOPICS, as stems), so the held-out measure stays held out.
# 2. Answers: the base's greedy answers to them, <= 160 new tokens (as the shipped recipe's greedy pass).
# 3. Training: from the shipped module, frozen base, base states computed once ($work/base-states), 1 epoch,
#    lr 2e-4 cosine, the shipped recipe's loss, chained drafts to depth 2: the settings of the replay-only control
#    of examples/continue_on_natural_text.sh, so the two differ only in where the prompts came from.
# 4. Export to float16 in $work/exported; score with benchmarks/module_curve.py.
# On the 2-core CPU (COUNT=320, 43k answer tokens) this took 26 minutes, too little data to move the module; the
# same round at COUNT=16000 (about 2.2M answer tokens) is examples/device/module_round.sh, for a GPU lease.
set -euo pipefail
# Stems of make_distill_prompts.py's HELDOUT_TOPICS, one per line: prompts naming one are dropped.
mapfile -t heldout_terms < examples/data/heldout_topic_terms.txt
work=${WORK_DIR:-work/self-prompt-adapter}
count=${COUNT:-320}
device=${DEVICE:-cpu}
shipped=src/recycle_hf/adapters/smollm2-135m-instruct-recycle
mkdir -p "$work"
[ -f "$work/prompts.jsonl" ] || recycle-hf self-prompts --base default --device "$device" --count "$count" \
    --output "$work/prompts.jsonl" --max-new-tokens 64 --batch-size 32 --seed 0 \
    --exclude-prompts examples/data/heldout_prompts.txt \
    --exclude-terms "${heldout_terms[@]}"
[ -f "$work/answers.jsonl" ] || recycle-hf distill --base default --device "$device" --prompts "$work/prompts.jsonl" \
    --output "$work/answers.jsonl" --max-new-tokens 160 --batch-size 32
[ -f "$work/adapter/adapter_config.json" ] || recycle-hf train --base default --device "$device" --adapter "$shipped" \
    --data "$work/answers.jsonl" --output "$work/adapter" --precompute-base-states \
    --base-states-cache "$work/base-states" --batch-size 8 --block-size 256 --epochs 1 --learning-rate 2e-4 \
    --warmup-steps 0.05 --distill-weight 0.75 --state-loss-weight 0.5 --draft-depth 2 \
    --logging-steps 5 --save-steps 50 --save-total-limit 1 --seed 0
python examples/export_adapter.py "$work/adapter" "$work/exported" --dtype float16
