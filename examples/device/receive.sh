#!/usr/bin/env bash
# Run ON THE DEVICE at the start of each call: keeps what this call carried (see prepare_carry.sh) in
# /tmp/recycle-carry, which outlives the call while the machine stays warm.
set -euo pipefail
carry=${CARRY_DIR:-/tmp/recycle-carry}
mkdir -p "$carry"
cp -r .device-carry/. "$carry/"
ls "$carry"
