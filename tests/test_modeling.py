"""RecycleGPTForCausalLM forward: shapes, losses, causality, cache equivalence, tying, saving and loading."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.configuration_recyclegpt import RecycleGPTCheckpointError

from conftest import VOCAB_SIZE, WITHOUT_RECYCLE_HF, left_padded_batch, tiny_base_config, tiny_recycle_model


FAMILIES = ["llama", "opt", "opt-350m-style", "qwen2", "gpt_neox", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_shapes_and_loss_by_hand(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 6, 9])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    output = model(input_ids, attention_mask=attention_mask, labels=labels)
    assert output.logits.shape == output.recycle_logits.shape == (3, 9, VOCAB_SIZE)

    def cross_entropy(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB_SIZE), labels[:, 1:].reshape(-1), ignore_index=-100)

    torch.testing.assert_close(output.lm_loss, cross_entropy(output.logits))
    torch.testing.assert_close(output.recycle_loss, cross_entropy(output.recycle_logits))
    torch.testing.assert_close(output.loss, output.lm_loss + output.recycle_loss)


def test_recycle_loss_weight_scales_only_the_module_loss():
    model = tiny_recycle_model("llama", recycle_loss_weight=0.25)
    input_ids, _ = left_padded_batch([8, 8])
    output = model(input_ids, labels=input_ids)
    torch.testing.assert_close(output.loss, output.lm_loss + 0.25 * output.recycle_loss)


def test_base_logits_are_the_base_models_own():
    model = tiny_recycle_model("opt-350m-style")
    input_ids, attention_mask = left_padded_batch([7, 4])
    ours = model(input_ids, attention_mask=attention_mask).logits
    theirs = model.base_lm(input_ids, attention_mask=attention_mask).logits
    # Padded positions get different (unused) position ids; real positions must agree.
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "opt", "opt-350m-style", "gpt2"])
def test_causality(family):
    model = tiny_recycle_model(family)
    input_ids, _ = left_padded_batch([10, 10])
    changed = input_ids.clone()
    j = 5
    changed[:, j + 1] = (changed[:, j + 1] + 7) % VOCAB_SIZE
    original, perturbed = model(input_ids), model(changed)
    torch.testing.assert_close(original.logits[:, : j + 1], perturbed.logits[:, : j + 1], rtol=0, atol=0)
    kept = slice(None, j + 1)
    torch.testing.assert_close(original.recycle_logits[:, kept], perturbed.recycle_logits[:, kept], rtol=0, atol=0)
    assert not torch.allclose(original.recycle_logits[:, j + 1], perturbed.recycle_logits[:, j + 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_forward_with_cache_equals_one_full_forward(family):
    model = tiny_recycle_model(family, recycle_num_layers=2)
    input_ids, attention_mask = left_padded_batch([12, 8, 5])
    full = model(input_ids, attention_mask=attention_mask)
    cache = model.new_cache()
    pieces = []
    for start, end in [(0, 5), (5, 6), (6, 9), (9, 12)]:
        piece = model(input_ids[:, start:end], attention_mask=attention_mask[:, :end], cache=cache, use_cache=True)
        pieces.append(piece)
    for name in ("logits", "recycle_logits"):
        incremental = torch.cat([getattr(piece, name) for piece in pieces], dim=1)
        # Padded positions are masked everywhere they matter; compare real positions.
        real = attention_mask.bool()
        torch.testing.assert_close(incremental[real], getattr(full, name)[real], rtol=0, atol=1e-5)
    assert cache.base.get_seq_length() == cache.module.get_seq_length() == 12


def test_left_padding_does_not_change_a_row():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([9, 5])
    batched = model(input_ids, attention_mask=attention_mask)
    alone = model(input_ids[1:, 4:])
    torch.testing.assert_close(batched.recycle_logits[1, 4:], alone.recycle_logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.logits[1, 4:], alone.logits[0], rtol=0, atol=1e-5)


def test_position_zero_reads_a_zero_state():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([6])
    output = model(input_ids)
    embeddings = model.get_input_embeddings()(input_ids[:, :1])
    module_state = model.recycle_module(
        embeddings, torch.zeros_like(embeddings), None, torch.zeros(1, 1, dtype=torch.long), None,
        model.rotary_embedding,
    )
    torch.testing.assert_close(output.recycle_logits[:, 0], model.vocab_logits(module_state)[:, 0])


def test_lm_head_is_tied_exactly_as_the_base_ties_it():
    tied = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=tiny_base_config("llama", tie_word_embeddings=True)))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    untied = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=tiny_base_config("llama", tie_word_embeddings=False)))
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    opt = tiny_recycle_model("opt-350m-style")
    assert opt.get_output_embeddings().weight is opt.get_input_embeddings().weight


def test_module_uses_mtp_weight_names():
    model = tiny_recycle_model("llama")
    names = {name.split(".")[1] for name in model.state_dict() if name.startswith("recycle_module.")}
    assert names == {"enorm", "hnorm", "eh_proj", "mtp_block", "post_norm"}
    assert model.recycle_module.eh_proj.weight.shape == (32, 64)
    assert type(model.recycle_module.mtp_block[0]) is type(model.base_lm.model.layers[0])


_LOAD_WITHOUT_PACKAGE = WITHOUT_RECYCLE_HF + textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM
    checkpoint, inputs, output = sys.argv[1], sys.argv[2], sys.argv[3]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert "recycle_hf" not in sys.modules
    data = torch.load(inputs)
    with torch.no_grad():
        result = model(data["input_ids"], attention_mask=data["attention_mask"])
        generated = model.generate(data["input_ids"][:1], max_new_tokens=6, recycle_mode="verify", do_sample=False)
    torch.save({"logits": result.logits, "recycle_logits": result.recycle_logits, "generated": generated,
                "class": type(model).__name__}, output)
    """
)


@pytest.mark.parametrize("family", ["llama", "opt-350m-style"])
def test_save_then_load_with_remote_code_in_a_process_without_the_package(family, tmp_path):
    model = tiny_recycle_model(family, recycle_num_layers=2)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    files = sorted(os.listdir(checkpoint))
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert {"configuration_recyclegpt.py", "modeling_recyclegpt.py", "generation_recyclegpt.py"} <= set(files)
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}

    input_ids, attention_mask = left_padded_batch([8, 5])
    torch.save({"input_ids": input_ids, "attention_mask": attention_mask}, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_PACKAGE)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, str(script), str(checkpoint), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path, env=environment,
    )
    loaded = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask)
        expected_generation = model.generate(input_ids[:1], max_new_tokens=6, recycle_mode="verify", do_sample=False)
    assert loaded["class"] == "RecycleGPTForCausalLM"
    assert torch.equal(loaded["logits"], expected.logits)
    assert torch.equal(loaded["recycle_logits"], expected.recycle_logits)
    assert torch.equal(loaded["generated"], expected_generation)


def test_pickled_weights_are_refused(tmp_path):
    model = tiny_recycle_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="safetensors|model.safetensors"):
        RecycleGPTForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        RecycleGPTForCausalLM.from_pretrained(tmp_path, use_safetensors=False)
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "out", safe_serialization=False)


def test_failed_save_leaves_the_earlier_checkpoint_intact(tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    first = tiny_recycle_model("llama", seed=1)
    first.save_pretrained(checkpoint)
    (checkpoint / "notes.txt").write_text("kept")

    def failing_save(self, save_directory, *args, **kwargs):
        open(os.path.join(save_directory, "model.safetensors"), "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tiny_recycle_model("llama", seed=2).save_pretrained(checkpoint)
    monkeypatch.undo()
    reloaded = RecycleGPTForCausalLM.from_pretrained(checkpoint)
    for name, tensor in first.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert (checkpoint / "notes.txt").read_text() == "kept"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".checkpoint.saving-")]


def test_a_plain_models_folder_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    from conftest import tiny_base_model

    tiny_base_model("llama").save_pretrained(tmp_path / "llama")

    def build(*args, **kwargs):
        raise AssertionError("a model was built")  # (the default config: a 7B LLaMA)

    monkeypatch.setattr(RecycleGPTForCausalLM, "__init__", build)
    with pytest.raises(RecycleGPTCheckpointError, match="model_type 'llama'") as raised:
        RecycleGPTForCausalLM.from_pretrained(tmp_path / "llama")
    message = str(raised.value)
    assert f"recycle-hf generate --base {tmp_path / 'llama'} --adapter" in message
    assert "recycle_hf.graft_recycle_module(" in message
    with pytest.raises(RecycleGPTCheckpointError, match="not a RecycleGPT checkpoint"):
        RecycleGPTConfig.from_pretrained(tmp_path / "llama")


@pytest.mark.parametrize("kept_bytes", [4, 40, -10], ids=["no-header-length", "half-header", "data-cut"])
def test_a_truncated_weights_file_is_named(tmp_path, kept_bytes):
    tiny_recycle_model("llama").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:kept_bytes])
    with pytest.raises(RecycleGPTCheckpointError, match=f"{weights} is not a complete safetensors file"):
        RecycleGPTForCausalLM.from_pretrained(tmp_path)


def test_wrapping_an_existing_base_keeps_its_attention_backend():
    from conftest import tiny_base_model

    base = tiny_base_model("llama")
    base.set_attn_implementation("eager")
    model = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=base.config), base_lm=base)
    assert model.base_lm is base
    assert base.config._attn_implementation == "eager"
    assert model.recycle_module.config._attn_implementation == "eager"
