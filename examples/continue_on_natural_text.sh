#!/usr/bin/env bash
# Continues training the shipped SmolLM2 module on natural text plus a replay of the base's own answers, on the CPU,
# with no download and no data that evaluates the module (issue #16's "data that needs no generation").
# Run from the repository root inside the set-up environment (.ci/setup). docs/BENCHMARKS.md ("Natural text") has
# the result, the time on the 2-core CPU and the machine.
#
# 1. Natural text: docstrings and the Python language reference from the distributions .ci/setup installs
#    (examples/collect_natural_text.py; licence and version of each source in $work/natural/provenance.json),
#    560,000 characters, about 159,000 tokens. The base reads it teacher-forced: its next-token distribution there
#    is the KL target, no generation needed.
# 2. Replay: the base's greedy answers to a seeded 320 of the 9232 training prompts of the shipped module's recipe
#    (examples/train_default_adapter.sh), so that the module keeps what it learnt of chat answers.
# 3. Training: from the shipped module, frozen base, base states computed once and kept in $work/base-states
#    (a second run with other module settings reuses them), 1 epoch, lr 2e-4 cosine, the shipped recipe's loss
#    (0.25 CE + 0.75 KL + 0.5 state regression), chained drafts to depth 2.
# 4. Export to float16 in $work/exported (copy it over src/recycle_hf/adapters/... to ship it).
set -euo pipefail
work=${WORK_DIR:-work/natural-text-adapter}
shipped=src/recycle_hf/adapters/smollm2-135m-instruct-recycle
mkdir -p "$work"
python examples/collect_natural_text.py --output "$work/natural/text.jsonl" --max-characters 560000
python examples/make_distill_prompts.py --topic-prompts 8520 --word-problems 600 --sample 320 \
    --train-output "$work/replay_prompts.txt"
[ -f "$work/replay.jsonl" ] || recycle-hf distill --base default --prompts "$work/replay_prompts.txt" \
    --output "$work/replay.jsonl" --max-new-tokens 160 --batch-size 32
recycle-hf train --base default --adapter "$shipped" --data "$work/natural/text.jsonl" "$work/replay.jsonl" \
    --output "$work/adapter" --precompute-base-states --base-states-cache "$work/base-states" \
    --batch-size 8 --block-size 256 --epochs 1 --learning-rate 2e-4 --warmup-steps 0.05 \
    --distill-weight 0.75 --state-loss-weight 0.5 --draft-depth 2 \
    --logging-steps 10 --save-steps 50 --save-total-limit 1 --seed 0
python examples/export_adapter.py "$work/adapter" "$work/exported" --dtype float16
