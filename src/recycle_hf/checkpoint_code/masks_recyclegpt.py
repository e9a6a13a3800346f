# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Attention masks and the positions they imply, for the forward, the reference loop and the fast path.

A 2-D attention mask [batch, slots] marks real tokens with 1 and left padding (or a rejected draft's hole) with 0.
Positions count only the real tokens before a token, as `generate` computes them, so a left-padded row decodes
exactly as it would alone.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import torch


def positions_from_attention_mask(attention_mask: torch.Tensor, num_new: int) -> torch.Tensor:
    """Position ids of the last `num_new` tokens, counting only unpadded ones (as `generate` computes them)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids = position_ids.masked_fill(attention_mask == 0, 0)
    return position_ids[:, -num_new:]


def row_attention_mask(
    write_start: torch.Tensor,
    num_queries: int,
    not_padding: torch.Tensor,
    attention_implementation: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The 4-D mask of queries at slots `write_start[b] + i` over all cache slots: [batch, 1, queries, slots].

    A query sees every earlier slot of its row that is not left padding, and itself (so that a padding query has one
    key and sdpa gives no NaN). Slots past the query, stale drafts among them, stay hidden. sdpa takes the boolean
    mask; eager attention adds a float mask (0 or the dtype's minimum).
    """
    slots = torch.arange(not_padding.shape[1], device=not_padding.device)
    query_slots = write_start.unsqueeze(1) + torch.arange(num_queries, device=not_padding.device)
    earlier = slots[None, None, :] <= query_slots[:, :, None]
    visible = (earlier & not_padding[:, None, :]) | (slots[None, None, :] == query_slots[:, :, None])
    visible = visible.unsqueeze(1)
    if attention_implementation == "eager":
        return torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)
    return visible


def tree_attention_mask(
    block_start: torch.Tensor,
    visibility: torch.Tensor,
    not_padding: torch.Tensor,
    attention_implementation: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The 4-D mask of a draft tree's queries over all cache slots: [batch, 1, queries, slots].

    The tree occupies the `visibility.shape[1]` slots from `block_start[b]` (its root first); query i sees every
    earlier slot of its row that is not left padding, and the tree's slots j with `visibility[i, j]` (itself and its
    ancestors), never a sibling's branch. With a lower-triangular `visibility` this is `row_attention_mask`.
    """
    slots = torch.arange(not_padding.shape[1], device=not_padding.device)
    offset = slots.unsqueeze(0) - block_start.unsqueeze(1)  # [B, S] slot's place in the tree, negative before it
    block_width = visibility.shape[1]
    before = (offset < 0) & not_padding
    in_block = (offset >= 0) & (offset < block_width)
    tree_visible = visibility[:, offset.clamp(0, block_width - 1)].transpose(0, 1)  # [B, queries, S]
    visible = (before.unsqueeze(1) | (in_block.unsqueeze(1) & tree_visible)).unsqueeze(1)
    if attention_implementation == "eager":
        return torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)
    return visible


__all__ = ["positions_from_attention_mask", "row_attention_mask", "tree_attention_mask"]
