"""Self-distillation data (`recycle_hf.distill`): prompt files, where a continuation ends, `recycle-hf distill`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recycle_hf.distill import continuation_lengths, read_prompts


def test_distill_writes_the_base_models_own_greedy_continuations(tmp_path, smollm2):
    model, tokenizer = smollm2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a color.\n\nCount to three.\n")
    output = tmp_path / "data.jsonl"
    command = [sys.executable, "-m", "recycle_hf.cli", "distill", "--prompts", str(prompts), "--output", str(output),
               "--max-new-tokens", "6", "--batch-size", "2"]
    subprocess.run(command, check=True)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(record["prompt"] for record in records) == ["Count to three.", "Name a color."]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.jsonl", "prompts.txt"]  # no partial file
    record = records[0]
    assert record["text"].endswith(record["completion"])
    prefix = record["text"][: -len(record["completion"])]
    inputs = tokenizer(prefix, return_tensors="pt", add_special_tokens=False)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :]) == record["completion"]


def test_read_prompts_accepts_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\nsecond\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "third"}) + "\n" + json.dumps({"text": "fourth"}) + "\n")
    assert read_prompts([tmp_path / "a.txt", tmp_path / "b.jsonl"]) == ["first", "second", "third", "fourth"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "?"}) + "\n")
    with pytest.raises(ValueError, match="'prompt' or 'text'"):
        read_prompts([tmp_path / "bad.jsonl"])
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(ValueError, match=f"{tmp_path / 'broken.jsonl'}:1: not valid JSON"):
        read_prompts([tmp_path / "broken.jsonl"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts([tmp_path / "missing.txt"])


def test_continuations_end_at_their_first_eos():
    new_tokens = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [9, 0, 0, 9], [1, 1, 0, 0]])
    assert continuation_lengths(new_tokens, eos_token_ids=[1]).tolist() == [2, 4, 4, 1]
    assert continuation_lengths(new_tokens, eos_token_ids=[1, 0]).tolist() == [2, 4, 2, 1]
