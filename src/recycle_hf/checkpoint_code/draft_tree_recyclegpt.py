# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Draft trees: their form, their checks, the tables a tree step indexes with, and the best tree for a node budget.

A tree is given as its list of paths, the form of Medusa's `medusa_choices`, EAGLE's `tree_choices` and vLLM's
`speculative_token_tree`: each path is the ranks of the module's candidates from the root down to one node, so
`[[0], [1], [0, 0]]` drafts the module's first and second choice for the next token and, after the first, its
first choice for the token after it. Every prefix of a path must be a path too. A chain of k drafts is
`[[0], [0, 0], ..., [0] * k]`, and an integer `num_draft_tokens=k` means exactly that chain.

The tree step (`tree_generation_recyclegpt.py`) lays the nodes out level by level (depth 1 first), and within a
level puts the nodes that have children first, so that each level's module forward covers contiguous slots.

Which tree: with p[d][r] the chance that the base's token at depth d is the module's rank-r candidate there (given
the path above it was accepted), a node is accepted with the product of p along its path, and a step gains
1 + the sum of those products (tokens per row). For a budget of n nodes the best tree is the n nodes of largest
product (Sequoia, EAGLE-2): a child's product never exceeds its parent's, so they always form a tree.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


# A tree step verifies every node in one base forward: beyond this many the forward costs more than it can gain.
MAX_TREE_NODES = 64
# Candidates the module offers per node (its top-r).
MAX_TREE_RANK = 16
MAX_TREE_DEPTH = 16
_FORM = "a list of paths such as [[0], [1], [0, 0]] (each path the candidate ranks from the root, every prefix listed)"


@dataclass(frozen=True)
class TreeLevel:
    """The nodes at one depth, as the tree step drafts them (indices into the tree's node order)."""

    depth: int
    start: int  # first node of the level
    width: int  # nodes at this depth
    expanding: int  # the level's first `expanding` nodes have children (the next level's parents)
    parent_of: tuple[int, ...]  # per node: its parent's index among the previous level's expanding nodes
    rank_of: tuple[int, ...]  # per node: its rank among its parent's candidates
    top_r: int  # candidates drafted per parent (the largest rank + 1)


@dataclass(frozen=True)
class DraftTree:
    """A draft tree in the step's node order: `paths[i]` is node i's path of ranks."""

    paths: tuple[tuple[int, ...], ...]
    levels: tuple[TreeLevel, ...] = field(init=False)

    def __post_init__(self) -> None:
        index = {path: i for i, path in enumerate(self.paths)}
        levels = []
        for depth in range(1, self.depth + 1):
            nodes = [i for i, path in enumerate(self.paths) if len(path) == depth]
            previous = [i for i, path in enumerate(self.paths) if len(path) == depth - 1]
            parents = [index.get(self.paths[i][:-1], -1) for i in nodes]
            levels.append(TreeLevel(
                depth=depth,
                start=nodes[0],
                width=len(nodes),
                expanding=sum(1 for i in nodes if self.has_children(i)),
                parent_of=tuple(0 if depth == 1 else previous.index(p) for p in parents),
                rank_of=tuple(self.paths[i][-1] for i in nodes),
                top_r=max(self.paths[i][-1] for i in nodes) + 1,
            ))
        object.__setattr__(self, "levels", tuple(levels))

    @classmethod
    def chain(cls, num_drafts: int) -> "DraftTree":
        return cls(tuple((0,) * depth for depth in range(1, num_drafts + 1)))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> "DraftTree":
        """The tree of these paths in the step's node order (checked: see `check_tree_paths`)."""
        checked = check_tree_paths(paths)
        has_children = {path[:-1] for path in checked}
        ordered = sorted(checked, key=lambda path: (len(path), path not in has_children, path))
        return cls(tuple(ordered))

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max(len(path) for path in self.paths)

    @property
    def is_chain(self) -> bool:
        return all(set(path) == {0} for path in self.paths) and self.num_nodes == self.depth

    def has_children(self, node: int) -> bool:
        path = self.paths[node]
        return any(len(other) == len(path) + 1 and other[:-1] == path for other in self.paths)

    def as_lists(self) -> list[list[int]]:
        """The JSON form (as a user writes it), paths sorted by depth then rank."""
        return [list(path) for path in sorted(self.paths, key=lambda path: (len(path), path))]

    def expected_tokens(self, acceptance_by_rank: Sequence[Sequence[float]]) -> float:
        """Tokens a row gains per step: 1 + the sum over nodes of the product of p[d][r] along the node's path."""
        return 1.0 + sum(path_probability(path, acceptance_by_rank) for path in self.paths)

    def tables(self, device: torch.device) -> "TreeTables":
        return TreeTables.build(self, device)


@dataclass
class TreeTables:
    """Device tensors of a tree for its step. Queries of the base forward are the root (the newest token, 0) and the
    nodes (1 + node index)."""

    ancestry: torch.Tensor  # [N + 1, N + 1] bool: query i sees query j (j is i or an ancestor of i)
    depths: torch.Tensor  # [N + 1] depth of each query (root 0): its position offset from the root
    parent_query: torch.Tensor  # [N] the query whose base prediction each node must equal (its parent)
    path_nodes: torch.Tensor  # [N + 1, D] the nodes along each query's path at depths 1..D (else d - 1: no move)
    parent_of: list[torch.Tensor]  # per level [width]
    rank_of: list[torch.Tensor]  # per level [width]

    @classmethod
    def build(cls, tree: DraftTree, device: torch.device) -> "TreeTables":
        index = {path: i for i, path in enumerate(tree.paths)}
        num_queries = tree.num_nodes + 1
        ancestry = torch.eye(num_queries, dtype=torch.bool)
        ancestry[:, 0] = True
        path_nodes = torch.arange(tree.depth).repeat(num_queries, 1)
        for i, path in enumerate(tree.paths):
            for depth in range(1, len(path) + 1):
                ancestor = index[path[:depth]]
                ancestry[i + 1, ancestor + 1] = True
                path_nodes[i + 1, depth - 1] = ancestor
        parent_query = torch.tensor([index[path[:-1]] + 1 if len(path) > 1 else 0 for path in tree.paths])
        depths = torch.tensor([0] + [len(path) for path in tree.paths])
        return cls(
            ancestry=ancestry.to(device),
            depths=depths.to(device),
            parent_query=parent_query.to(device),
            path_nodes=path_nodes.to(device),
            parent_of=[torch.tensor(level.parent_of, device=device) for level in tree.levels],
            rank_of=[torch.tensor(level.rank_of, device=device) for level in tree.levels],
        )


def check_tree_paths(paths: Any) -> list[tuple[int, ...]]:
    """The paths of a user's tree as tuples, or a `ValueError` that says what is wrong and the form expected."""
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence) or not paths:
        raise ValueError(f"A draft tree must be {_FORM}, got {paths!r}.")
    checked: list[tuple[int, ...]] = []
    for path in paths:
        if isinstance(path, (str, bytes)) or not isinstance(path, Sequence) or not path:
            raise ValueError(f"Draft tree path {path!r} is not a non-empty list of ranks: a tree must be {_FORM}.")
        if not all(type(rank) is int and 0 <= rank < MAX_TREE_RANK for rank in path):
            raise ValueError(f"Draft tree path {list(path)!r}: ranks must be integers from 0 to {MAX_TREE_RANK - 1}.")
        checked.append(tuple(path))
    if len(set(checked)) != len(checked):
        duplicate = next(path for path in checked if checked.count(path) > 1)
        raise ValueError(f"Draft tree path {list(duplicate)!r} is listed twice: list each node once.")
    missing = next((path[:-1] for path in checked if len(path) > 1 and path[:-1] not in set(checked)), None)
    if missing is not None:
        raise ValueError(f"Draft tree path {list(missing)!r} is missing: every prefix of a path must be listed "
                         f"(the node's parent), as in {_FORM}.")
    if len(checked) > MAX_TREE_NODES:
        raise ValueError(f"A draft tree may have at most {MAX_TREE_NODES} nodes, got {len(checked)}.")
    if max(len(path) for path in checked) > MAX_TREE_DEPTH:
        raise ValueError(f"A draft tree may be at most {MAX_TREE_DEPTH} deep, got {max(len(p) for p in checked)}.")
    return checked


def check_tree_decoding(mode: str | None, do_sample: bool) -> None:
    """Trees verify greedy decoding only; sampling stays on chains. The one refusal, for `generate` and the step."""
    if mode != "verify" or do_sample:
        raise ValueError("A draft tree verifies greedy decoding only (recycle_mode='verify', do_sample=False): with "
                         "do_sample=True pass an integer num_draft_tokens (a chain) or 'auto'.")


def is_tree_spec(value: Any) -> bool:
    """Whether `num_draft_tokens` was given as a tree (a list of paths) rather than "auto" or a count."""
    return isinstance(value, (list, tuple))


def path_probability(path: Sequence[int], acceptance_by_rank: Sequence[Sequence[float]]) -> float:
    """The chance that the node at `path` is accepted: the product of p[d][r] along it (0 past what was measured)."""
    probability = 1.0
    for depth, rank in enumerate(path):
        if depth >= len(acceptance_by_rank) or rank >= len(acceptance_by_rank[depth]):
            return 0.0
        probability *= acceptance_by_rank[depth][rank]
    return probability


def best_draft_tree(acceptance_by_rank: Sequence[Sequence[float]], num_nodes: int) -> DraftTree | None:
    """The tree of `num_nodes` nodes with the most expected tokens per step, or None when fewer nodes have any chance.

    Greedy over a frontier: the n nodes of largest path probability (ties: shallower, then lower ranks first)."""
    frontier = [(-path_probability((rank,), acceptance_by_rank), 1, (rank,))
                for rank in range(len(acceptance_by_rank[0]) if acceptance_by_rank else 0)]
    heapq.heapify(frontier)
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < num_nodes:
        negative, _, path = heapq.heappop(frontier)
        if negative >= 0:
            break
        chosen.append(path)
        if len(path) < min(len(acceptance_by_rank), MAX_TREE_DEPTH):
            for rank in range(len(acceptance_by_rank[len(path)])):
                child = path + (rank,)
                heapq.heappush(frontier, (-path_probability(child, acceptance_by_rank), len(child), child))
    if len(chosen) < num_nodes:
        return None
    return DraftTree.from_paths(chosen)


def spine_tree(depth: int, width: int) -> DraftTree:
    """The calibration's tree: `width` candidates at each depth below the module's first choices. Its accepted paths
    measure p[d][r] for every d < depth, r < width."""
    return DraftTree.from_paths([(0,) * level + (rank,) for level in range(depth) for rank in range(width)])




def split_draft_setting(num_draft_tokens: Any) -> tuple[Any, DraftTree | None]:
    """(draft count, tree) of a checked `num_draft_tokens`: a tree that is a chain becomes its count (None tree), a
    count or "auto" stays as it is."""
    if not is_tree_spec(num_draft_tokens):
        return num_draft_tokens, None
    tree = DraftTree.from_paths(num_draft_tokens)
    return tree.num_nodes, (None if tree.is_chain else tree)


__all__ = [
    "MAX_TREE_DEPTH",
    "MAX_TREE_NODES",
    "MAX_TREE_RANK",
    "DraftTree",
    "TreeLevel",
    "TreeTables",
    "best_draft_tree",
    "check_tree_decoding",
    "check_tree_paths",
    "is_tree_spec",
    "path_probability",
    "spine_tree",
    "split_draft_setting",
]
