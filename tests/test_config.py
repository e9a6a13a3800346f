"""RecycleGPTConfig: defaults from the base, validation errors that name the field, serialisation."""

import pytest
from transformers import BartConfig, LlamaConfig

from recycle_hf import RecycleGPTConfig
from recycle_hf.presets import preset_config

from conftest import tiny_base_config


def test_defaults_follow_the_base():
    config = RecycleGPTConfig(base_config=tiny_base_config("llama"))
    assert config.recycle_num_layers == 1
    assert config.recycle_loss_weight == 1.0
    module_config = config.get_recycle_module_config()
    assert module_config.num_hidden_layers == 1
    assert module_config.num_attention_heads == 4
    assert module_config.num_key_value_heads == 2
    assert module_config.intermediate_size == 64


def test_module_overrides_reshape_the_module_config():
    config = RecycleGPTConfig(
        base_config=tiny_base_config("llama"),
        recycle_num_layers=2,
        recycle_num_attention_heads=8,
        recycle_intermediate_size=48,
    )
    module_config = config.get_recycle_module_config()
    assert (module_config.num_hidden_layers, module_config.num_attention_heads) == (2, 8)
    assert module_config.head_dim == 4
    assert module_config.num_key_value_heads == 8
    assert module_config.intermediate_size == 48
    assert tiny_base_config("opt").ffn_dim == 64
    opt_module = RecycleGPTConfig(base_config=tiny_base_config("opt"), recycle_intermediate_size=48)
    assert opt_module.get_recycle_module_config().ffn_dim == 48


def test_base_config_round_trips_through_a_dict():
    config = RecycleGPTConfig(base_config=tiny_base_config("opt-350m-style"), recycle_num_layers=2)
    restored = RecycleGPTConfig.from_dict(config.to_dict())
    assert restored.base_config.model_type == "opt"
    assert restored.base_config.word_embed_proj_dim == 16
    assert restored.base_config.do_layer_norm_before is False
    assert restored.recycle_num_layers == 2
    assert restored.get_text_config() is restored.base_config


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"recycle_num_layers": 0}, "recycle_num_layers"),
        ({"recycle_num_attention_heads": 5}, "recycle_num_attention_heads"),
        ({"recycle_num_attention_heads": 4, "recycle_num_key_value_heads": 3}, "recycle_num_key_value_heads"),
        ({"recycle_intermediate_size": -1}, "recycle_intermediate_size"),
        ({"recycle_loss_weight": -0.5}, "recycle_loss_weight"),
    ],
)
def test_invalid_module_settings_name_the_field(settings, field):
    with pytest.raises(ValueError, match=field):
        RecycleGPTConfig(base_config=tiny_base_config("llama"), **settings)


def test_encoder_decoder_base_is_refused():
    with pytest.raises(ValueError, match="base_config: .*encoder-decoder.*tested: llama, opt"):
        RecycleGPTConfig(base_config=BartConfig())


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="base_config: model_type 'no-such-model'"):
        RecycleGPTConfig(base_config={"model_type": "no-such-model"})
    with pytest.raises(ValueError, match="'model_type' key"):
        RecycleGPTConfig(base_config={"hidden_size": 8})


def test_paper_preset_adds_about_fifteen_percent():
    config = preset_config("recyclegpt-1.3b")
    base = config.base_config
    assert isinstance(base, LlamaConfig)
    shape = (base.num_hidden_layers, base.hidden_size, base.num_attention_heads, base.vocab_size)
    assert shape == (24, 2048, 16, 32000)
    block = 4 * base.hidden_size**2 + 3 * base.hidden_size * base.intermediate_size + 2 * base.hidden_size
    base_parameters = 2 * base.vocab_size * base.hidden_size + base.num_hidden_layers * block + base.hidden_size
    module_parameters = config.recycle_num_layers * block + 2 * base.hidden_size**2 + 3 * base.hidden_size
    assert 0.13 < module_parameters / base_parameters < 0.17
    with pytest.raises(ValueError, match="Available presets: recyclegpt-1.3b, tiny"):
        preset_config("recyclegpt-7b")
