"""Grafting a recyclable module onto existing causal LMs: no copy, frozen base, plain decoding unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, MambaConfig, T5Config, T5ForConditionalGeneration

from recycle_hf import TESTED_BASE_MODEL_TYPES, RecycleGPTForCausalLM, graft_recycle_module
from recycle_hf.graft import GRAFT_INITS

from conftest import PAD, left_padded_batch, tiny_base_config, tiny_base_model


FAMILIES = ["llama", "opt", "opt-350m-style", "qwen2", "gpt_neox", "gpt2"]
GREEDY = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_graft_reuses_the_base_tensors_and_keeps_it_unchanged(family):
    base = tiny_base_model(family)
    before = _snapshot(base)
    config_before = base.config.to_dict()
    attention_before = base.config._attn_implementation
    parameters_before = dict(base.named_parameters())

    model = graft_recycle_module(base)

    assert model.base_lm is base
    for name, parameter in model.base_lm.named_parameters():
        assert parameter is parameters_before[name]
        assert torch.equal(parameter, before[name])
        assert not parameter.requires_grad
    assert all(parameter.requires_grad for parameter in model.recycle_module.parameters())
    assert base.config.to_dict() == config_before
    assert base.config._attn_implementation == attention_before


@pytest.mark.parametrize("family", FAMILIES)
def test_grafted_model_decodes_like_the_base(family):
    base = tiny_base_model(family)
    input_ids, attention_mask = left_padded_batch([5, 8, 3], seed=1)
    expected = base.generate(input_ids=input_ids, attention_mask=attention_mask, **GREEDY)

    model = graft_recycle_module(base).eval()
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, **GREEDY)
    verify = model.generate(input_ids=input_ids, attention_mask=attention_mask, recycle_mode="verify", **GREEDY)
    alternate = model.generate(input_ids=input_ids, attention_mask=attention_mask, recycle_mode="alternate", **GREEDY)

    assert torch.equal(plain, expected)
    assert torch.equal(verify, expected)  # draft-and-verify is lossless whatever the module predicts
    assert alternate.shape == expected.shape
    assert torch.equal(alternate[:, : input_ids.shape[1]], input_ids)
    # The first new token comes from the base's prefill in every mode.
    assert torch.equal(alternate[:, input_ids.shape[1]], expected[:, input_ids.shape[1]])


def test_graft_on_the_real_smollm2_decodes_like_the_base(smollm2):
    base, tokenizer = smollm2
    requires_grad = {name: parameter.requires_grad for name, parameter in base.named_parameters()}
    try:
        prompts = ["The capital of France is", "Water boils at"]
        tokenizer.padding_side = "left"
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = base.generate(**inputs, **greedy)

        model = graft_recycle_module(base).eval()
        assert isinstance(model.recycle_module.mtp_block[0], type(base.model.layers[-1]))
        assert torch.equal(model.generate(**inputs, **greedy), expected)
        assert torch.equal(model.generate(**inputs, recycle_mode="verify", **greedy), expected)
    finally:
        for name, parameter in base.named_parameters():
            parameter.requires_grad_(requires_grad[name])


def test_copy_last_init_copies_the_last_block_and_final_norm():
    base = tiny_base_model("llama")
    model = graft_recycle_module(base, init="copy_last")
    hidden_size = base.config.hidden_size
    eh_weight = model.recycle_module.eh_proj.weight

    assert torch.equal(eh_weight[:, hidden_size:], torch.eye(hidden_size))
    assert eh_weight[:, :hidden_size].abs().sum() > 0  # the token half starts small and random, not zero
    module_block = model.recycle_module.mtp_block[0].state_dict()
    for name, tensor in base.model.layers[-1].state_dict().items():
        assert torch.equal(module_block[name], tensor)
    assert torch.equal(model.recycle_module.post_norm.weight, base.model.norm.weight)


def test_copy_last_init_copies_the_last_blocks_in_order():
    base = tiny_base_model("gpt2")
    model = graft_recycle_module(base, num_layers=2, init="copy_last")
    for module_block, base_block in zip(model.recycle_module.mtp_block, base.transformer.h):
        for name, tensor in base_block.state_dict().items():
            assert torch.equal(module_block.state_dict()[name], tensor)
    assert torch.equal(model.recycle_module.post_norm.weight, base.transformer.ln_f.weight)


def test_default_identity_and_random_inits_leave_the_blocks_random():
    hidden_size = 32
    identity = graft_recycle_module(tiny_base_model("llama"))  # the default init: "identity"
    random = graft_recycle_module(tiny_base_model("llama"), init="random")
    base_last_block = tiny_base_model("llama").model.layers[-1]

    assert torch.equal(identity.recycle_module.eh_proj.weight[:, hidden_size:], torch.eye(hidden_size))
    assert not torch.equal(random.recycle_module.eh_proj.weight[:, hidden_size:], torch.eye(hidden_size))
    for model in (identity, random):
        q_weight = model.recycle_module.mtp_block[0].self_attn.q_proj.weight
        assert not torch.equal(q_weight, base_last_block.self_attn.q_proj.weight)


def test_post_ln_opt_has_no_final_norm_to_copy_and_still_grafts():
    base = tiny_base_model("opt-350m-style")
    assert base.model.decoder.final_layer_norm is None
    model = graft_recycle_module(base, init="copy_last")
    assert torch.equal(model.recycle_module.post_norm.weight, torch.ones(32))
    last_block = base.model.decoder.layers[-1].state_dict()
    for name, tensor in model.recycle_module.mtp_block[0].state_dict().items():
        assert torch.equal(tensor, last_block[name])


def test_module_settings_shape_the_module():
    model = graft_recycle_module(
        tiny_base_model("llama"), num_layers=2, init="identity", num_attention_heads=2, intermediate_size=48
    )
    assert len(model.recycle_module.mtp_block) == 2
    assert model.config.recycle_num_attention_heads == 2
    assert model.recycle_module.mtp_block[0].mlp.gate_proj.weight.shape == (48, 32)


def test_copy_last_refuses_a_module_shaped_unlike_the_base():
    with pytest.raises(ValueError, match="init='identity'"):
        graft_recycle_module(tiny_base_model("llama"), intermediate_size=48, init="copy_last")


def test_module_follows_the_base_dtype():
    base = tiny_base_model("llama").to(torch.bfloat16)
    model = graft_recycle_module(base)
    assert {parameter.dtype for parameter in model.recycle_module.parameters()} == {torch.bfloat16}


def test_bad_arguments_get_clear_errors():
    base = tiny_base_model("llama")
    with pytest.raises(ValueError, match="Valid choices: " + ", ".join(GRAFT_INITS)):
        graft_recycle_module(base, init="zeros")
    with pytest.raises(ValueError, match="Unknown module setting 'num_heads'"):
        graft_recycle_module(base, num_heads=2)
    model = graft_recycle_module(base)
    with pytest.raises(ValueError, match="already carries a recyclable module"):
        graft_recycle_module(model)


def _tested_families_pattern() -> str:
    return ", ".join(TESTED_BASE_MODEL_TYPES)


def test_encoder_decoder_base_is_refused_naming_the_supported_families():
    base = T5ForConditionalGeneration(T5Config(vocab_size=101, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16))
    with pytest.raises(ValueError, match=f"encoder-decoder.*{_tested_families_pattern()}"):
        graft_recycle_module(base)


def test_base_without_a_key_value_cache_is_refused():
    base = AutoModelForCausalLM.from_config(MambaConfig(vocab_size=101, hidden_size=32, num_hidden_layers=1))
    with pytest.raises(ValueError, match=f"key/value cache.*{_tested_families_pattern()}"):
        graft_recycle_module(base)


def test_backbone_without_lm_head_is_refused():
    backbone = AutoModel.from_config(tiny_base_config("llama"))
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):
        graft_recycle_module(backbone)


def test_grafted_model_is_a_recycle_model_with_the_base_generation_config():
    base = tiny_base_model("qwen2")
    base.generation_config.max_new_tokens = 5
    model = graft_recycle_module(base)
    assert isinstance(model, RecycleGPTForCausalLM)
    assert model.generation_config.to_dict() == base.generation_config.to_dict()
    assert model.generation_config is not base.generation_config
