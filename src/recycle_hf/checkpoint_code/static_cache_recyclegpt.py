# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""A static key/value cache whose rows write at their own positions (its masks: `masks_recyclegpt.py`).

transformers' `StaticLayer` writes every row of a batch at the same columns (one `cumulative_length`). In verify
mode rows accept different numbers of drafts, so with shared columns the rows that accepted fewer would leave masked
holes behind and the cache would have to hold up to (k + 1) columns per new token. Here each row writes at its own
`write_start` (a device tensor shared by all layers), so a row's cache stays contiguous: slot j of row b holds the
token at column j of that row's sequence (prompt padding included). Rejected drafts are never cropped: they sit past
the row's length, where the mask hides them, until the next step overwrites them. The cache therefore needs exactly
prompt + max_new_tokens + k slots, and every step has the same shapes, which is what `torch.compile` and CUDA graphs
need.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer


class RowStaticLayer(StaticLayer):
    """`StaticLayer` whose rows write their new keys and values at slots `write_start[b] + i`."""

    def __init__(self, max_cache_len: int, write_start: torch.Tensor):
        super().__init__(max_cache_len=max_cache_len)
        self.write_start = write_start

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self.write_start.unsqueeze(1) + torch.arange(key_states.shape[-2], device=key_states.device)
        slots = slots[:, None, :, None]
        self.keys.scatter_(2, slots.expand_as(key_states), key_states)
        self.values.scatter_(2, slots.expand_as(value_states), value_states)
        return self.keys, self.values


class RowStaticCache(Cache):
    """One `RowStaticLayer` per attention layer; set `write_start` (in place) before each forward."""

    def __init__(self, num_layers: int, max_cache_len: int, batch_size: int, device: torch.device):
        self.write_start = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_cache_len = max_cache_len
        super().__init__(layers=[RowStaticLayer(max_cache_len, self.write_start) for _ in range(num_layers)])
        # A fixed address, as for the layers' own tensors: compiled steps and CUDA graphs read it in place.
        torch._dynamo.mark_static_address(self.write_start)


__all__ = ["RowStaticCache", "RowStaticLayer"]
