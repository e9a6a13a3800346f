"""Grouped-query sdpa (attention_recyclegpt): the fast path's attention for several queries under a mask reads the
grouped key/value heads in place of transformers' repeated copies, with the same bits."""

import pytest
import torch

from recycle_hf.checkpoint_code import attention_recyclegpt as attention
from recycle_hf.checkpoint_code.masks_recyclegpt import row_attention_mask
from recycle_hf.checkpoint_code.static_cache_recyclegpt import RowStaticCache

from conftest import left_padded_batch, tiny_recycle_model


def _attention_configs(model):
    return {id(layer.config): layer.config for layer in model.modules() if hasattr(layer, "num_key_value_groups")}


def _verify_like_forward(model, batch=3, prompt=6, queries=4):
    """A base forward over a left-padded prompt, then over `queries` new tokens with a row mask (a verify step)."""
    input_ids, attention_mask = left_padded_batch([prompt, prompt - 2, prompt - 4][:batch])
    num_slots = prompt + queries
    not_padding = torch.ones(batch, num_slots, dtype=torch.bool)
    not_padding[:, :prompt] = attention_mask.bool()
    cache = RowStaticCache(model.config.base_config.num_hidden_layers, num_slots, batch, torch.device("cpu"))
    states = []
    new_tokens = torch.randint(3, 90, (batch, queries), generator=torch.Generator().manual_seed(1))
    for tokens, start in ((input_ids, 0), (new_tokens, prompt)):
        write_start = torch.full((batch,), start)
        cache.write_start.copy_(write_start)
        mask = row_attention_mask(write_start, tokens.shape[1], not_padding, "sdpa", torch.float32)
        positions = (write_start[:, None] + torch.arange(tokens.shape[1])).clamp(min=0)
        states.append(model.base_step(tokens, mask, positions, cache))
    return torch.cat(states, dim=1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_sdpa_gives_transformers_sdpa_bits(family):
    model = tiny_recycle_model(family)
    assert any(getattr(layer, "num_key_value_groups", 1) > 1 for layer in model.modules())
    with torch.inference_mode():
        expected = _verify_like_forward(model)
        calls = []
        original = attention.grouped_query_sdpa_attention

        def counting(*args, **kwargs):
            calls.append(args[1].shape[2])
            return original(*args, **kwargs)

        attention.AttentionInterface.register(attention.GROUPED_QUERY_SDPA, counting)
        try:
            with attention.grouped_query_sdpa(model):
                output = _verify_like_forward(model)
        finally:
            attention.AttentionInterface.register(attention.GROUPED_QUERY_SDPA, original)
    assert calls and 4 in calls  # the layers called it, for the verify-like forward too
    assert torch.equal(output, expected)


def test_grouped_query_sdpa_is_named_only_while_active_and_restored_after_an_error():
    model = tiny_recycle_model("llama")
    configs = _attention_configs(model).values()
    with pytest.raises(RuntimeError, match="inside"):
        with attention.grouped_query_sdpa(model):
            assert {config._attn_implementation for config in configs} == {attention.GROUPED_QUERY_SDPA}
            raise RuntimeError("inside")
    assert {config._attn_implementation for config in configs} == {"sdpa"}


def test_grouped_query_sdpa_leaves_eager_attention_alone():
    model = tiny_recycle_model("llama")
    model.config.base_config._attn_implementation = "eager"
    for config in _attention_configs(model).values():
        config._attn_implementation = "eager"
    with attention.grouped_query_sdpa(model):
        assert {config._attn_implementation for config in _attention_configs(model).values()} == {"eager"}


def test_grouped_query_sdpa_changes_nothing_off_the_cpu():
    """On CUDA grouped heads under a mask would leave sdpa's fused kernels; a model elsewhere keeps "sdpa"."""
    model = tiny_recycle_model("llama").to("meta")
    with attention.grouped_query_sdpa(model):
        assert {config._attn_implementation for config in _attention_configs(model).values()} == {"sdpa"}
