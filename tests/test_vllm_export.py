"""`recycle-hf export vllm` without vLLM: the draft folder's layout, and bad input refused before anything is written.
The folder served by vLLM itself is tested in tests/with_vllm (the vLLM environment)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from recycle_hf import graft_recycle_module
from recycle_hf.cli import main
from recycle_hf.integrations.vllm import ARCHITECTURE

from conftest import save_tiny_base_with_tokenizer, tiny_base_config


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recycle-hf export")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    save_tiny_base_with_tokenizer(root / "base")
    model = graft_recycle_module(AutoModelForCausalLM.from_pretrained(root / "base"), num_layers=2, init="random")
    model.set_draft_vocabulary(torch.arange(3, 60))
    model.save_adapter(root / "adapter")
    return root, model


def test_the_draft_folder_holds_the_module_under_the_drafters_names_and_no_shared_weights(trained, tmp_path, capsys):
    root, model = trained
    output = tmp_path / "draft"
    assert main(["export", "vllm", "--base", str(root / "base"), "--adapter", str(root / "adapter"), "--output",
                 str(output), "--num-speculative-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"vllm serve {root / 'base'}" in printed and '"num_speculative_tokens": 2' in printed
    assert sorted(path.name for path in output.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 2 and config["max_position_embeddings"] == 513
    tensors = load_file(output / "model.safetensors")
    module = model.recycle_module.state_dict()
    expected = {name.replace("mtp_block.", "layers.", 1): tensor for name, tensor in module.items()}
    assert tensors.keys() == expected.keys() and all(torch.equal(tensors[n], expected[n]) for n in expected)
    assert not [name for name in tensors if "embed" in name or "lm_head" in name]  # shared with the target
    assert torch.equal(tensors["draft_token_ids"], torch.arange(3, 60))
    assert f"vllm serve {root / 'base'} --speculative-config" in (output / "README.md").read_text()


def test_a_merged_checkpoint_also_writes_its_base_as_a_plain_folder(trained, tmp_path, capsys):
    root, model = trained
    model.save_pretrained(tmp_path / "merged")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(root / "base").save_pretrained(tmp_path / "merged")
    assert main(["export", "vllm", "--model", str(tmp_path / "merged"), "--output", str(tmp_path / "draft")]) == 0
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "draft-base")
    assert type(base).__name__ == "LlamaForCausalLM"
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, model.base_lm.state_dict()[name]), name
    assert f"vllm serve {tmp_path / 'draft-base'}" in capsys.readouterr().out


def test_bad_input_is_one_line_and_nothing_is_written(trained, tmp_path, capsys):
    root, _ = trained
    output = tmp_path / "draft"
    # No trained module: a base without an adapter.
    assert main(["export", "vllm", "--base", str(root / "base"), "--output", str(output)]) == 2
    assert "needs --adapter" in _one_error_line(capsys)
    # An adapter trained on another base.
    other = AutoModelForCausalLM.from_config(tiny_base_config("llama", hidden_size=64))
    graft_recycle_module(other).save_adapter(tmp_path / "other-adapter")
    assert main(["export", "vllm", "--base", str(root / "base"), "--adapter", str(tmp_path / "other-adapter"),
                 "--output", str(output)]) == 2
    assert "trained on another base" in _one_error_line(capsys)
    # A family the drafter does not build.
    opt = AutoModelForCausalLM.from_config(tiny_base_config("opt"))
    opt.save_pretrained(tmp_path / "opt")
    save_tiny_base_with_tokenizer(tmp_path / "tokenizer-source")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tmp_path / "tokenizer-source").save_pretrained(tmp_path / "opt")
    graft_recycle_module(opt).save_adapter(tmp_path / "opt-adapter")
    assert main(["export", "vllm", "--base", str(tmp_path / "opt"), "--adapter", str(tmp_path / "opt-adapter"),
                 "--output", str(output)]) == 2
    line = _one_error_line(capsys)
    assert "serves bases of the families llama, qwen2, qwen3" in line and "'opt'" in line
    assert not output.exists() and not (tmp_path / "draft-base").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".draft")]


def test_distill_with_the_vllm_engine_needs_vllm_here(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec  # as in an environment without vLLM, wherever this runs
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "vllm" else
                        real_find_spec(name, *rest))
    (tmp_path / "prompts.txt").write_text("hello\n")
    assert main(["distill", "--prompts", str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "out.jsonl"),
                 "--engine", "vllm"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recycle-hf distill")]
    assert len(lines) == 1 and "--engine vllm needs vLLM in this environment" in lines[0]
    assert not (tmp_path / "out.jsonl").exists()
