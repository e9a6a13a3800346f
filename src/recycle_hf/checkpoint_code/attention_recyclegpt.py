# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Grouped-query sdpa for the fast path's forwards, registered with transformers' `AttentionInterface`.

With a mask and more than one query, transformers' sdpa attention repeats each key/value head once per query head it
serves (`repeat_kv`: two copies of the layer's whole cache, every layer, every forward), because it asks torch for
grouped attention only where no mask is given. The fast path's verify forwards are exactly that case (k + 1 queries,
a mask over the static cache), and torch's own sdpa takes the mask with `enable_gqa=True` and no copies, in the same
fused CPU kernel and with the same bits (tested); docs/BENCHMARKS.md has what it saves on SmolLM2 (9 query heads on 3
key/value heads).

The fast path names this attention for the layers of the base and the module while it decodes on the CPU
(`grouped_query_sdpa`) and restores transformers' "sdpa" afterwards; everything else it passes to transformers' sdpa.
Not on CUDA: there grouped heads under a mask would leave the fused kernels for the math one, which is why
transformers asks for grouped attention only without a mask. Not before torch 2.5, which added `enable_gqa`.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils.import_utils import is_torch_greater_or_equal

from .runtime_recyclegpt import SharedPatches


GROUPED_QUERY_SDPA = "recycle_grouped_query_sdpa"
_TORCH_HAS_GROUPED_SDPA = is_torch_greater_or_equal("2.5", accept_dev=True)
# The attention name is set on shared configs, but only threads inside `grouped_query_sdpa` read heads in place;
# the others get transformers' sdpa exactly (same bits either way, but no other thread should depend on ours).
_grouped_configs = SharedPatches()


def grouped_query_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except that several queries under a mask read the grouped heads in place."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain_keys = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if not (grouped and plain_keys and attention_mask is not None and query.shape[2] > 1
            and _grouped_configs.active_in_this_thread()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling, enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_QUERY_SDPA, grouped_query_sdpa_attention)
AttentionMaskInterface.register(GROUPED_QUERY_SDPA, sdpa_mask)


@contextlib.contextmanager
def grouped_query_sdpa(model: torch.nn.Module) -> Iterator[None]:
    """While active, the attention layers of `model` that use transformers' "sdpa" use `GROUPED_QUERY_SDPA` in this
    thread, when `model` is on the CPU and torch has grouped sdpa; else nothing changes. The configs switch back when
    the last context using them ends."""
    if not _TORCH_HAS_GROUPED_SDPA or next(model.parameters()).device.type != "cpu":
        yield
        return
    configs = {
        id(layer.config): layer.config
        for layer in model.modules()
        if hasattr(layer, "num_key_value_groups")
        and getattr(getattr(layer, "config", None), "_attn_implementation", None) in ("sdpa", GROUPED_QUERY_SDPA)
    }
    with _grouped_configs.applied(configs.values(), _use_grouped_query_sdpa, _use_sdpa):
        yield


def _use_grouped_query_sdpa(config: Any) -> None:
    config._attn_implementation = GROUPED_QUERY_SDPA


def _use_sdpa(config: Any) -> None:
    config._attn_implementation = "sdpa"


__all__ = ["GROUPED_QUERY_SDPA", "grouped_query_sdpa", "grouped_query_sdpa_attention"]
