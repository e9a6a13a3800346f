"""Recycle adapters: small, module-only files that reload exactly, refuse a wrong base and never half-save."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import recycle_hf.adapter as adapter_module
import recycle_hf.adapter.saving as adapter_saving
from recycle_hf import RecycleGPTForCausalLM, graft_recycle_module, load_recycle_adapter
from recycle_hf.adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_FORMAT_VERSION,
    ADAPTER_WEIGHTS_NAME,
    add_base_lora,
    base_lora_config,
    merge_base_lora,
    save_recycle_adapter,
)

from conftest import PAD, VOCAB_SIZE, left_padded_batch, tiny_base_config, tiny_base_model


def _perturbed(model: RecycleGPTForCausalLM, seed: int = 1) -> RecycleGPTForCausalLM:
    """Move every module (and LoRA) weight away from its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("recycle_module.") or "lora_" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _trained_graft(family: str, **settings) -> RecycleGPTForCausalLM:
    return _perturbed(graft_recycle_module(tiny_base_model(family), **settings))


def _outputs(model: RecycleGPTForCausalLM):
    input_ids, attention_mask = left_padded_batch([6, 9], seed=3)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask)


def _file_keys(folder: Path) -> list[str]:
    with safe_open(folder / ADAPTER_WEIGHTS_NAME, "pt") as weights:
        return list(weights.keys())


@pytest.mark.parametrize("family", ["llama", "opt-350m-style", "gpt2"])
def test_save_then_load_gives_identical_recycle_logits(tmp_path, family):
    model = _trained_graft(family, num_layers=2, init="identity")
    model.save_adapter(tmp_path / "adapter")

    fresh_base = tiny_base_model(family)
    fresh_base_state = {name: tensor.clone() for name, tensor in fresh_base.state_dict().items()}
    loaded = load_recycle_adapter(fresh_base, tmp_path / "adapter")

    expected, actual = _outputs(model), _outputs(loaded)
    assert torch.equal(actual.recycle_logits, expected.recycle_logits)
    assert torch.equal(actual.logits, expected.logits)
    assert loaded.base_lm is fresh_base
    for name, tensor in fresh_base.state_dict().items():
        assert torch.equal(tensor, fresh_base_state[name])
    assert not loaded.training
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_adapter_holds_the_module_only(tmp_path):
    model = _trained_graft("llama")
    save_recycle_adapter(model, tmp_path / "adapter", base_model_name_or_path="org/tiny-llama")

    keys = _file_keys(tmp_path / "adapter")
    assert sorted(keys) == sorted(f"recycle_module.{name}" for name in model.recycle_module.state_dict())
    base_names = set(model.base_lm.state_dict())
    assert not any(key.removeprefix("base_lm.") in base_names for key in keys)
    assert sorted(os.listdir(tmp_path / "adapter")) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]

    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    assert (config["base_model_type"], config["base_architecture"]) == ("llama", "LlamaForCausalLM")
    assert (config["hidden_size"], config["vocab_size"]) == (32, VOCAB_SIZE)
    assert config["recycle_settings"]["recycle_num_layers"] == 1
    assert config["recycle_hf_version"]
    assert config["lora"] is None


@pytest.mark.parametrize(
    ("other_base", "message"),
    [
        (lambda: tiny_base_model("opt"), "base_model_type: adapter 'llama', base 'opt'"),
        (lambda: AutoModelForCausalLM.from_config(tiny_base_config("llama", hidden_size=64)), "hidden_size"),
        (lambda: AutoModelForCausalLM.from_config(tiny_base_config("llama", vocab_size=120)), "vocab_size"),
    ],
    ids=["architecture", "hidden-size", "vocabulary"],
)
def test_mismatched_base_is_refused_and_left_unchanged(tmp_path, other_base, message):
    _trained_graft("llama").save_adapter(tmp_path / "adapter")
    base = other_base()
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    requires_grad = {name: parameter.requires_grad for name, parameter in base.named_parameters()}

    with pytest.raises(ValueError, match=message):
        load_recycle_adapter(base, tmp_path / "adapter")

    assert all(torch.equal(tensor, before[name]) for name, tensor in base.state_dict().items())
    assert {name: parameter.requires_grad for name, parameter in base.named_parameters()} == requires_grad


def test_wrong_tensor_shapes_are_refused_before_anything_loads(tmp_path):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    config["recycle_settings"]["recycle_intermediate_size"] = 48  # the stored blocks have width 64
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="wrong shape: mtp_block.0.mlp"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_stray_tensors_are_refused(tmp_path):
    folder = tmp_path / "adapter"
    model = _trained_graft("llama")
    model.save_adapter(folder)
    tensors = adapter_module.adapter_state_dict(model)
    tensors["base_lm.model.embed_tokens.weight"] = model.base_lm.model.embed_tokens.weight.detach().clone()
    save_file(tensors, folder / ADAPTER_WEIGHTS_NAME)
    with pytest.raises(ValueError, match="LoRA tensors but adapter_config.json has no 'lora'"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    (folder / ADAPTER_WEIGHTS_NAME).rename(folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickled weights.*safetensors"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_other_adapter_types_and_incomplete_folders_are_refused(tmp_path):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    (folder / ADAPTER_CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        load_recycle_adapter(tiny_base_model("llama"), folder)
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not a recycle adapter"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_interrupted_save_keeps_the_previous_adapter(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    first = _trained_graft("llama", init="random")
    first.save_adapter(folder)
    (folder / "notes.txt").write_text("kept")
    second = _perturbed(graft_recycle_module(tiny_base_model("llama"), init="random"), seed=7)

    def crash_midway(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter_saving, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        second.save_adapter(folder)

    assert sorted(os.listdir(folder)) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "notes.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]  # no staging folder left behind
    reloaded = load_recycle_adapter(tiny_base_model("llama"), folder)
    assert torch.equal(_outputs(reloaded).recycle_logits, _outputs(first).recycle_logits)


def test_saving_over_an_adapter_replaces_it(tmp_path):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    second = _perturbed(graft_recycle_module(tiny_base_model("llama"), num_layers=2, init="random"), seed=5)
    second.save_adapter(folder)
    reloaded = load_recycle_adapter(tiny_base_model("llama"), folder)
    assert len(reloaded.recycle_module.mtp_block) == 2
    assert torch.equal(_outputs(reloaded).recycle_logits, _outputs(second).recycle_logits)


def test_is_trainable_leaves_the_module_trainable_and_the_base_frozen(tmp_path):
    _trained_graft("llama").save_adapter(tmp_path / "adapter")
    model = load_recycle_adapter(tiny_base_model("llama"), tmp_path / "adapter", is_trainable=True)
    assert model.training
    assert all(parameter.requires_grad for parameter in model.recycle_module.parameters())
    assert not any(parameter.requires_grad for parameter in model.base_lm.parameters())


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_lora_and_module_reload_on_a_fresh_base_with_identical_outputs(tmp_path, family):
    model = graft_recycle_module(tiny_base_model(family))
    add_base_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    _perturbed(model)
    model.save_adapter(tmp_path / "adapter")

    keys = _file_keys(tmp_path / "adapter")
    lora_keys = [key for key in keys if key.startswith("base_lm.")]
    assert lora_keys and all(".lora_A." in key or ".lora_B." in key for key in lora_keys)
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["lora"]["r"] == 4 and sorted(config["lora"]["target_modules"]) == ["q_proj", "v_proj"]

    loaded = load_recycle_adapter(tiny_base_model(family), tmp_path / "adapter")
    expected, actual = _outputs(model), _outputs(loaded)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.recycle_logits, expected.recycle_logits)
    assert not torch.equal(actual.logits, _outputs(graft_recycle_module(tiny_base_model(family))).logits)

    input_ids, attention_mask = left_padded_batch([4, 7], seed=2)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    assert torch.equal(
        loaded.generate(input_ids=input_ids, attention_mask=attention_mask, recycle_mode="verify", **greedy),
        model.generate(input_ids=input_ids, attention_mask=attention_mask, recycle_mode="verify", **greedy),
    )


def test_lora_adapter_needs_a_matching_base_and_checks_before_injecting(tmp_path):
    model = graft_recycle_module(tiny_base_model("llama"))
    add_base_lora(model, LoraConfig(r=4, target_modules=["q_proj"]))
    _perturbed(model).save_adapter(tmp_path / "adapter")
    tensors = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME)
    dropped = next(key for key in tensors if key.startswith("base_lm.") and "layers.1" in key)
    del tensors[dropped]
    save_file(tensors, tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME)

    base = tiny_base_model("llama")
    with pytest.raises(ValueError, match="LoRA weights do not fit.*missing"):
        load_recycle_adapter(base, tmp_path / "adapter")
    assert not hasattr(base, "peft_config")
    assert not any("lora_" in name for name, _ in base.named_modules())


def test_merged_lora_model_saves_a_standalone_checkpoint(tmp_path):
    model = graft_recycle_module(tiny_base_model("llama"))
    add_base_lora(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    _perturbed(model)
    expected = _outputs(model)

    merge_base_lora(model)
    assert base_lora_config(model) is None
    assert not any("lora_" in name for name in model.state_dict())
    merged = _outputs(model)
    torch.testing.assert_close(merged.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.recycle_logits, expected.recycle_logits, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    assert torch.equal(_outputs(reloaded).recycle_logits, merged.recycle_logits)


def test_grafted_model_saves_a_standalone_checkpoint(tmp_path):
    model = _trained_graft("opt-350m-style")
    model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    expected, actual = _outputs(model), _outputs(reloaded)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.recycle_logits, expected.recycle_logits)


def test_adapter_push_to_hub_uploads_exactly_the_adapter_folder(tmp_path, monkeypatch):
    import huggingface_hub

    uploads = []

    class CreatedRepo:
        repo_id = "user/tiny-recycle"

    def fake_upload_folder(repo_id, folder_path, allow_patterns, commit_message, token):
        uploaded = tmp_path / "uploaded"
        uploaded.mkdir()
        for name in os.listdir(folder_path):
            if name in allow_patterns:
                shutil.copy(Path(folder_path) / name, uploaded / name)
        uploads.append((repo_id, uploaded))

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: CreatedRepo())
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload_folder)
    model = _trained_graft("llama")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "private-notes.txt").write_text("not for upload")
    model.save_adapter(tmp_path / "adapter", push_to_hub=True, repo_id="tiny-recycle")

    [(repo_id, uploaded)] = uploads
    assert repo_id == "user/tiny-recycle"
    assert sorted(os.listdir(uploaded)) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    reloaded = load_recycle_adapter(tiny_base_model("llama"), uploaded)
    assert torch.equal(_outputs(reloaded).recycle_logits, _outputs(model).recycle_logits)


def test_merged_push_to_hub_uploads_a_loadable_checkpoint(tmp_path, monkeypatch):
    import transformers.utils.hub as hub

    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": f"user/{repo_id}"})()

    def fake_upload(self, working_dir, repo_id, **kwargs):
        shutil.copytree(working_dir, uploaded)

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    class NoCard:
        def save(self, path):
            pass

    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: NoCard())
    monkeypatch.setattr(RecycleGPTForCausalLM, "_upload_modified_files", fake_upload)
    model = _trained_graft("llama")
    model.push_to_hub("tiny-recycle-merged")

    names = set(os.listdir(uploaded))
    assert {"config.json", "model.safetensors", "modeling_recyclegpt.py", "configuration_recyclegpt.py"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    reloaded = AutoModelForCausalLM.from_pretrained(uploaded, trust_remote_code=True).eval()
    assert torch.equal(_outputs(reloaded).recycle_logits, _outputs(model).recycle_logits)


def test_adapter_tensors_can_come_from_a_gathered_state_dict():
    # FSDP and DeepSpeed hand Trainer._save a full state dict while the model itself holds shards.
    model = graft_recycle_module(tiny_base_model("llama"))
    add_base_lora(model, LoraConfig(r=4, target_modules=["q_proj"]))
    own = adapter_module.adapter_state_dict(model)
    gathered = {name: tensor + 1 for name, tensor in model.state_dict().items()}

    from_gathered = adapter_module.adapter_state_dict(model, gathered)

    assert from_gathered.keys() == own.keys()
    for name, tensor in from_gathered.items():
        assert torch.equal(tensor, own[name] + 1), name


def test_smollm2_adapter_is_small_and_reloads_exactly(tmp_path, smollm2):
    base, tokenizer = smollm2
    requires_grad = {name: parameter.requires_grad for name, parameter in base.named_parameters()}
    try:
        model = _perturbed(graft_recycle_module(base))
        save_recycle_adapter(model, tmp_path / "adapter", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
        reloaded = load_recycle_adapter(base, tmp_path / "adapter")
    finally:
        for name, parameter in base.named_parameters():
            parameter.requires_grad_(requires_grad[name])

    inputs = tokenizer(["The recyclable module predicts"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).recycle_logits
        actual = reloaded(**inputs).recycle_logits
    assert torch.equal(actual, expected)
    module_parameters = sum(parameter.numel() for parameter in model.recycle_module.parameters())
    base_parameters = sum(parameter.numel() for parameter in base.parameters())
    adapter_bytes = (tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME).stat().st_size
    assert module_parameters < 0.05 * base_parameters
    assert adapter_bytes < 4 * module_parameters + 100_000  # fp32 module weights and a header, nothing else


def test_missing_adapter_folder_gets_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=f"The adapter folder {tmp_path / 'no-such-adapter'} does not exist"):
        load_recycle_adapter(tiny_base_model("llama"), str(tmp_path / "no-such-adapter"))
    # A name that can be a Hub repository is looked up there (offline here).
    with pytest.raises(FileNotFoundError, match="neither a local adapter folder nor a Hub repository"):
        load_recycle_adapter(tiny_base_model("llama"), "no-such-owner/no-such-adapter")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"adapter_type": "recyclegpt", ', "is not valid JSON"),
        ('["recyclegpt"]', "must hold a JSON object, not a list"),
        ('"recyclegpt"', "must hold a JSON object, not a str"),
        ('{"adapter_type": "recyclegpt", "recycle_settings": [1]}', "'recycle_settings' must be a JSON object or null"),
    ],
    ids=["truncated", "list", "string", "settings-list"],
)
def test_malformed_adapter_config_is_refused_naming_the_file(tmp_path, content, message):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    (folder / ADAPTER_CONFIG_NAME).write_text(content)
    with pytest.raises(ValueError, match=f"{folder / ADAPTER_CONFIG_NAME}.*{message}"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    config.update(changes)
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))


def test_newer_adapter_format_is_refused_and_unknown_keys_are_logged(tmp_path, caplog):
    folder = tmp_path / "adapter"
    model = _trained_graft("llama")
    model.save_adapter(folder)
    assert json.loads((folder / ADAPTER_CONFIG_NAME).read_text())["format_version"] == ADAPTER_FORMAT_VERSION

    _edit_config(folder, format_version=ADAPTER_FORMAT_VERSION + 1, recycle_hf_version="9.0.0")
    with pytest.raises(ValueError, match=r"adapter format 2 \(written by recycle-hf 9.0.0\).*Upgrade recycle-hf"):
        load_recycle_adapter(tiny_base_model("llama"), folder)
    _edit_config(folder, format_version="1")
    with pytest.raises(ValueError, match="format_version must be a positive integer"):
        load_recycle_adapter(tiny_base_model("llama"), folder)

    _edit_config(folder, format_version=ADAPTER_FORMAT_VERSION, draft_head="tied", zz_extra=1)
    with caplog.at_level(logging.WARNING, logger="recycle_hf.adapter"):
        loaded = load_recycle_adapter(tiny_base_model("llama"), folder)
    assert "ignoring unknown keys draft_head, zz_extra (written by recycle-hf 9.0.0" in caplog.text
    assert torch.equal(_outputs(loaded).recycle_logits, _outputs(model).recycle_logits)


def test_adapters_without_a_format_version_still_load(tmp_path):
    folder = tmp_path / "adapter"
    model = _trained_graft("llama")
    model.save_adapter(folder)
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    del config["format_version"]  # as the first adapters (and the shipped one) were written
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    assert torch.equal(_outputs(load_recycle_adapter(tiny_base_model("llama"), folder)).recycle_logits,
                       _outputs(model).recycle_logits)


def test_the_module_takes_the_bases_dtype_whatever_dtype_the_adapter_stores(tmp_path, caplog):
    folder = tmp_path / "adapter"
    model = _trained_graft("llama")
    model.recycle_module.to(torch.float16)
    model.save_adapter(folder)  # stored as float16, like the shipped module
    assert json.loads((folder / ADAPTER_CONFIG_NAME).read_text())["dtype"] == "float16"
    with caplog.at_level(logging.INFO, logger="recycle_hf.adapter"):
        loaded = load_recycle_adapter(tiny_base_model("llama"), folder)
    assert "float16 weights are cast to the base's torch.float32" in caplog.text
    assert {parameter.dtype for parameter in loaded.recycle_module.parameters()} == {torch.float32}
    stored = model.recycle_module.state_dict()
    for name, tensor in loaded.recycle_module.state_dict().items():
        assert torch.equal(tensor, stored[name].float()), name

    bfloat16_base = tiny_base_model("llama").to(torch.bfloat16)
    on_bfloat16 = load_recycle_adapter(bfloat16_base, folder)
    assert {parameter.dtype for parameter in on_bfloat16.recycle_module.parameters()} == {torch.bfloat16}

    for bad in ("float65", "int8", 16):
        _edit_config(folder, dtype=bad)
        with pytest.raises(ValueError, match=f"dtype must name a floating-point torch dtype, got {bad!r}"):
            load_recycle_adapter(tiny_base_model("llama"), folder)


@pytest.mark.parametrize("kept_bytes", [6, 100, -4], ids=["no-header-length", "half-header", "data-cut"])
def test_a_truncated_adapter_weights_file_is_named(tmp_path, kept_bytes):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    weights = folder / ADAPTER_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:kept_bytes])
    with pytest.raises(ValueError, match=f"{weights} is not a complete safetensors file"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_module_settings_that_do_not_fit_name_the_config_file(tmp_path):
    folder = tmp_path / "adapter"
    _trained_graft("llama").save_adapter(folder)
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    config["recycle_settings"]["recycle_num_attention_heads"] = 5  # does not divide the hidden size 32
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{folder / ADAPTER_CONFIG_NAME}: the module settings do not fit"):
        load_recycle_adapter(tiny_base_model("llama"), folder)


def test_draft_vocabulary_is_saved_and_restored_with_the_module(tmp_path):
    model = _trained_graft("llama")
    model.set_draft_vocabulary(torch.tensor([1, 5, 7, 40, 99]))
    model.save_adapter(tmp_path / "adapter")

    reloaded = load_recycle_adapter(tiny_base_model("llama"), tmp_path / "adapter")

    assert reloaded.config.recycle_draft_vocab_size == 5
    assert torch.equal(reloaded.draft_token_ids, torch.tensor([1, 5, 7, 40, 99]))
    states = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_logits, expected_ids = model.draft_logits(states)
        actual_logits, actual_ids = reloaded.draft_logits(states)
    assert torch.equal(actual_ids, expected_ids)
    assert torch.equal(actual_logits, expected_logits)
