"""Loading bases and recycle models from command-line style names: clear errors for what does not exist or fit."""

from __future__ import annotations

import pytest
import torch

import recycle_hf.loading as loading
import recycle_hf.local_folders as local_folders
from recycle_hf import RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.configuration_recyclegpt import RecycleGPTCheckpointError
from recycle_hf.errors import InputNotFoundError, InvalidInputError, UserError

from conftest import save_tiny_base_with_tokenizer, tiny_base_model, tiny_recycle_model


@pytest.mark.parametrize(
    ("name", "expected"),
    [("gpt2", True), ("HuggingFaceTB/SmolLM2-135M", True), ("/no/such/folder", False), ("./model", False),
     ("a/b/c", False), ("~/models/x", False), ("../x", False)],
)
def test_names_that_can_only_be_paths_are_not_hub_ids(name, expected):
    assert local_folders.is_hub_repo_id(name) is expected


def test_a_missing_or_incomplete_model_folder_is_named(tmp_path):
    with pytest.raises(InputNotFoundError, match=f"The model folder {tmp_path / 'nothing'} does not exist"):
        loading.load_recycle_model(model=str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match=f"The base folder {tmp_path / 'empty'} has no config.json"):
        loading.load_base(str(tmp_path / "empty"))
    with pytest.raises(InputNotFoundError, match="has no weights.gguf"):
        loading.load_base(str(tmp_path / "empty"), gguf_file="weights.gguf")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match="is a file"):
        loading.load_recycle_model(model=str(tmp_path / "file"))


def test_a_truncated_base_weights_file_is_named(tmp_path):
    save_tiny_base_with_tokenizer(tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(RecycleGPTCheckpointError, match=f"{weights} is not a complete safetensors file"):
        loading.load_base(str(tmp_path / "base"))


def test_a_folder_an_interrupted_save_moved_away_says_where_the_old_version_is(tmp_path):
    (tmp_path / ".checkpoint.old-0123456789ab").mkdir()  # an earlier version's name, and empty: not offered
    with pytest.raises(InputNotFoundError, match=r"checkpoint does not exist\.$"):
        loading.load_recycle_model(model=str(tmp_path / "checkpoint"))
    tiny_recycle_model("llama").save_pretrained(tmp_path / ".checkpoint.old-ba9876543210")  # complete
    with pytest.raises(InputNotFoundError, match=r"newest complete version is .*\.checkpoint\.old-ba9876543210"):
        loading.load_recycle_model(model=str(tmp_path / "checkpoint"))


def test_a_plain_model_given_as_model_says_to_use_base_and_adapter(tmp_path, monkeypatch):
    save_tiny_base_with_tokenizer(tmp_path / "base")

    def build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(RecycleGPTForCausalLM, "__init__", build)
    with pytest.raises(RecycleGPTCheckpointError, match="--base .* --adapter"):
        loading.load_recycle_model(model=str(tmp_path / "base"))


def test_base_without_adapter_fails_before_the_base_loads(tmp_path, monkeypatch):
    def load_base(*args, **kwargs):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(loading, "load_base", load_base)
    with pytest.raises(UserError, match="--base needs --adapter"):
        loading.load_recycle_model(base=str(tmp_path))
    with pytest.raises(InputNotFoundError, match="adapter folder .* does not exist"):
        loading.load_recycle_model(base=str(tmp_path), adapter=str(tmp_path / "no-adapter"))


def test_a_pickled_base_loads_only_through_torchs_restricted_unpickler(tmp_path, monkeypatch):
    """README: bases load as transformers loads them; a pytorch_model.bin goes through torch.load(weights_only=True)."""
    save_tiny_base_with_tokenizer(tmp_path / "base")
    for weights in (tmp_path / "base").glob("*.safetensors"):
        weights.unlink()
    torch.save(tiny_base_model("llama").state_dict(), tmp_path / "base" / "pytorch_model.bin")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model, _ = loading.load_base(str(tmp_path / "base"))
    assert calls and all(weights_only is True for weights_only in calls)
    assert torch.equal(model.lm_head.weight, tiny_base_model("llama").lm_head.weight)


def test_the_default_base_means_the_shipped_adapter_and_its_absence_is_named(tmp_path, monkeypatch):
    assert loading.default_adapter("default") == str(loading.DEFAULT_ADAPTER_DIR)
    assert loading.default_adapter(str(tmp_path)) is None

    def load_base(*args, **kwargs):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(loading, "load_base", load_base)
    monkeypatch.setattr(loading, "DEFAULT_ADAPTER_DIR", tmp_path / "no-adapter")
    with pytest.raises(InputNotFoundError, match="no shipped SmolLM2 adapter"):
        loading.load_recycle_model()
