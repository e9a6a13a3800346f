"""The `recycle-hf` command line: init presets, distill, and the top-level dispatcher."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from recycle_hf.cli import COMMANDS, main
from recycle_hf.distill import read_prompts


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name in COMMANDS:
        assert name in printed
    assert main(["no-such-command"]) == 2


def test_init_tiny_preset_loads_with_auto_class_and_remote_code(tmp_path):
    output = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--output", str(output), "--seed", "3"]) == 0
    assert json.loads((output / "generation_config.json").read_text())["eos_token_id"] == 2
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True).eval()
    assert type(model).__name__ == "RecycleGPTForCausalLM"
    input_ids = torch.tensor([[5, 6, 7, 8]])
    generated = model.generate(input_ids, max_new_tokens=5, recycle_mode="verify", eos_token_id=None)
    plain = model.generate(input_ids, max_new_tokens=5, eos_token_id=None)
    assert torch.equal(generated, plain)


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
    assert not list(tmp_path.glob(".data.jsonl.partial"))
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


def test_init_paper_preset_writes_a_checkpoint_that_loads(tmp_path):
    """The paper's recyclegpt-1.3b shape, bf16 (about 3 GB on disk, 30 s on 2 cores)."""
    output = tmp_path / "recyclegpt-1.3b"
    assert main(["init", "--preset", "recyclegpt-1.3b", "--output", str(output)]) == 0
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    base = sum(parameter.numel() for parameter in model.base_lm.parameters())
    module = sum(parameter.numel() for parameter in model.recycle_module.parameters())
    assert model.dtype == torch.bfloat16
    assert model.config.base_config.num_hidden_layers == 24 and model.config.base_config.hidden_size == 2048
    assert 0.14 < module / base < 0.17
