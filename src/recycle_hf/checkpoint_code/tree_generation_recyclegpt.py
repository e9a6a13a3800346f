# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Tree verify on the fast path: the module drafts a tree of candidates, one base forward checks every node.

A step of `StaticTreeDecoder` (greedy verify only; the tree's form and tables: `draft_shape_recyclegpt.py`):

1. Draft, level by level: the top-r candidates of each expanding node's module state become its children; the
   expanding nodes of a level then run one module forward (each pair: its parent's module state and its own token)
   over contiguous slots, seeing the accepted context and its own ancestors only (`tree_attention_mask`).
2. Verify: one base forward over [newest token, every node] at slots base_lengths + 0..N, each node at the
   position of its depth, with the same tree mask.
3. Accept: a node is accepted when its token and the token of every ancestor equal the base's choice at their
   parent. Siblings carry distinct tokens, so the accepted nodes form one path: the deepest wins, and the base's
   choice after it is the step's own token.
4. Move the accepted path's keys and values in the base cache to the contiguous slots after the newest token (the
   slots a chain step would have written), and catch the module up on the path as a chain step does.

Shapes depend only on the tree, the batch size and the slot bucket, so the step compiles whole, one host
synchronisation per step as for chains. Sampling stays on chains (`generate` refuses a tree with do_sample=True).

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from .draft_shape_recyclegpt import DraftShape, check_tree_decoding
from .masks_recyclegpt import tree_attention_mask
from .static_generation_recyclegpt import StaticDecodingState, StaticRecycleDecoder, StaticStepOutput


def ranked_candidates(scores: torch.Tensor, top_r: int) -> torch.Tensor:
    """The `top_r` highest-scoring columns of `scores` [..., V], best first. Rank 0 is `argmax` (the lowest column
    among equal maxima), exactly the draft a chain step makes; `topk` alone orders equal scores arbitrarily."""
    first = scores.argmax(dim=-1, keepdim=True)
    if top_r == 1:
        return first
    rest = scores.scatter(-1, first, float("-inf")).topk(top_r - 1, dim=-1).indices
    return torch.cat([first, rest], dim=-1)


class StaticTreeDecoder(StaticRecycleDecoder):
    """`StaticRecycleDecoder` whose step drafts and verifies `tree` (greedy verify mode)."""

    def prepare_draft_shape(self, settings: Any, device: torch.device) -> None:
        check_tree_decoding(settings.mode, settings.do_sample)
        # Slots and output columns are sized by `num_draft_tokens`, the tree's node count: one slot per node.
        self.tree: DraftShape = settings.draft_shape
        self.tables = self.tree.tables(device)
        self.draft_depth = self.tree.depth

    def _tree_positions(self, root_slots: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        """Positions of tree queries: the root's position plus each query's depth."""
        positions = (root_slots - self.padding_counts).unsqueeze(1) + depths.unsqueeze(0)
        return positions.clamp(0, self.max_position)

    def _tree_mask(self, root_slots: torch.Tensor, query_rows: slice) -> torch.Tensor:
        return tree_attention_mask(root_slots, self.tables.ancestry[query_rows], self.not_padding,
                                   self.attention_implementation, self.state_dtype)

    def draft_nodes(self, state: StaticDecodingState) -> torch.Tensor:
        """The tree's tokens [B, N] in its node order."""
        root_slots = state.base_lengths
        states = state.draft_states  # [B, m, D]: module states of the previous level's expanding nodes (the root)
        level_tokens = []
        for level, parent_of, rank_of in zip(self.tree.levels, self.tables.parent_of, self.tables.rank_of):
            scores, token_ids = self.draft_scores(states)
            candidates = ranked_candidates(scores, level.top_r)  # [B, m, r]
            if token_ids is not None:
                candidates = token_ids[candidates]
            tokens = candidates[:, parent_of, rank_of]  # [B, width]
            level_tokens.append(tokens)
            if level.expanding:
                queries = slice(1 + level.start, 1 + level.start + level.expanding)
                states = self.module_states(
                    tokens[:, :level.expanding],
                    states[:, parent_of[:level.expanding]],
                    root_slots + 1 + level.start,
                    mask=self._tree_mask(root_slots, queries),
                    positions=self._tree_positions(root_slots, self.tables.depths[queries]),
                )
        return torch.cat(level_tokens, dim=1)

    def accept_path(self, nodes: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(accepted depth [B], the deepest accepted query [B] (0: the root), next token [B]) from the base states
        [B, N + 1, D] over [newest, nodes]."""
        targets = self._process(self.model.vocab_logits(base)).argmax(dim=-1)  # [B, N + 1]
        matches = nodes == targets[:, self.tables.parent_query]  # [B, N]
        node_ancestry = self.tables.ancestry[1:, 1:]  # [N, N] node i's path includes node j
        on_path_mismatch = (~matches).unsqueeze(1) & node_ancestry.unsqueeze(0)
        accepted = ~on_path_mismatch.any(dim=-1)  # [B, N]
        accepted_depths = torch.where(accepted, self.tables.depths[1:], 0)
        depth, deepest = accepted_depths.max(dim=1)
        best_query = torch.where(depth > 0, deepest + 1, 0)
        return depth, best_query, targets.gather(1, best_query.unsqueeze(1)).squeeze(1)

    def move_path_to_contiguous_slots(self, root_slots: torch.Tensor, path: torch.Tensor) -> None:
        """Copy the keys and values of the path's nodes [B, D] to slots root + 1..root + D of the base cache (entries
        past the accepted depth copy a slot onto itself), so that the cache holds the sequence contiguously again."""
        depth = path.shape[1]
        sources = (root_slots.unsqueeze(1) + 1 + path)[:, None, :, None]
        targets = (root_slots.unsqueeze(1) + 1 + torch.arange(depth, device=path.device))[:, None, :, None]
        for layer in self.base_cache.layers:
            for cache in (layer.keys, layer.values):
                shape = (cache.shape[0], cache.shape[1], depth, cache.shape[3])
                moved = cache.gather(2, sources.expand(shape))
                cache.scatter_(2, targets.expand(shape), moved)

    def step(self, state: StaticDecodingState) -> StaticStepOutput:
        """Draft the tree, verify it in one base forward, accept the longest agreeing path, commit, compact the
        base cache and catch the module up: fixed shapes."""
        root_slots = state.base_lengths
        nodes = self.draft_nodes(state)
        everything = slice(0, self.tree.num_nodes + 1)
        base = self.base_states(
            torch.cat([state.newest_tokens.unsqueeze(1), nodes], dim=1),
            root_slots,
            mask=self._tree_mask(root_slots, everything),
            positions=self._tree_positions(root_slots, self.tables.depths),
        )
        accepted, best_query, next_tokens = self.accept_path(nodes, base)
        path = self.tables.path_nodes[best_query]  # [B, D]
        self.move_path_to_contiguous_slots(root_slots, path)
        base_along_path = base.gather(1, torch.cat([torch.zeros_like(path[:, :1]), path + 1], dim=1)
                                      .unsqueeze(-1).expand(-1, -1, base.shape[-1]))
        return self.finish_step(state, nodes.gather(1, path), accepted, next_tokens, base_along_path, best_query)


def static_decoder_class(settings: Any) -> type[StaticRecycleDecoder]:
    """The fast path's decoder for `settings`: the tree decoder when they carry a draft tree, else the chain one."""
    return StaticTreeDecoder if settings.draft_tree is not None else StaticRecycleDecoder


__all__ = ["StaticTreeDecoder", "ranked_candidates", "static_decoder_class"]
