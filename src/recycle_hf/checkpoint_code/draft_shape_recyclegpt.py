# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Draft shapes: `DraftShape`, the one value for "a chain of k drafts or a tree", its checks, the tables a tree step
indexes with, and the best tree for a node budget.

A shape is built once, where a value enters (`generate`'s `num_draft_tokens`, every CLI option, the lm-eval model,
the file of `auto`'s choices, a benchmark's records), by `DraftShape.of` or `DraftShape.parse`; settings,
calibration and the step carry it as it is. It is frozen and hashable (benchmarks key their records by it).

A user gives a shape as a count k (a chain of k drafts, 0 meaning plain decoding) or as a tree's list of paths, the
form of Medusa's `medusa_choices`, EAGLE's `tree_choices` and vLLM's `speculative_token_tree`: each path is the ranks
of the module's candidates from the root down to one node, so `[[0], [1], [0, 0]]` drafts the module's first and
second choice for the next token and, after the first, its first choice for the token after it. Every prefix of a
path must be a path too. A chain of k drafts is `[[0], [0, 0], ..., [0] * k]`, and a tree of that form is the chain.

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
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


# More drafts than this in a chain never pay: acceptance falls with depth, and every draft costs a module forward.
MAX_NUM_DRAFT_TOKENS = 16
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
class DraftShape:
    """A chain of k drafts or a tree, in the step's node order: `paths[i]` is node i's path of ranks (a chain's
    paths are (0,), (0, 0), ...; no paths: plain decoding). Build it with `of`, `parse`, `chain` or `from_paths`:
    they check the value and order the nodes, so that equal shapes are equal objects."""

    paths: tuple[tuple[int, ...], ...]
    levels: tuple[TreeLevel, ...] = field(init=False, compare=False, repr=False)

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
    def chain(cls, num_drafts: int) -> "DraftShape":
        """k drafts, each the module's first choice after the one before (0: no drafts, plain decoding)."""
        if type(num_drafts) is not int or not 0 <= num_drafts <= MAX_NUM_DRAFT_TOKENS:
            raise ValueError(f"num_draft_tokens must be 'auto' or an integer from 0 (plain decoding) to "
                             f"{MAX_NUM_DRAFT_TOKENS} (or a draft tree such as [[0], [1], [0, 0]]), "
                             f"got {num_drafts!r}.")
        return cls(tuple((0,) * depth for depth in range(1, num_drafts + 1)))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> "DraftShape":
        """The shape of these paths in the step's node order (checked: see `check_tree_paths`)."""
        checked = check_tree_paths(paths)
        has_children = {path[:-1] for path in checked}
        ordered = sorted(checked, key=lambda path: (len(path), path not in has_children, path))
        return cls(tuple(ordered))

    @classmethod
    def of(cls, value: "int | Sequence[Sequence[int]] | DraftShape") -> "DraftShape":
        """The shape a user's value means: a count (a chain), a list of paths (a tree; one of a chain's form is the
        chain) or a shape; else a `ValueError` that says what is expected."""
        if isinstance(value, DraftShape):
            return value
        if isinstance(value, (list, tuple)):
            return cls.from_paths(value)
        return cls.chain(value)

    @classmethod
    def parse(cls, text: str) -> "DraftShape":
        """The shape written as text (a command line, an lm-eval model argument): "3" or "[[0], [1], [0, 0]]"."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            if text.strip().startswith("["):
                raise ValueError(f"a draft tree must be JSON such as '[[0], [1], [0, 0]]', got {text!r}.") from None
            value = text  # refused by `chain`, with the values it takes
        return cls.of(value)

    @property
    def num_nodes(self) -> int:
        """Drafts per step: one slot per node (a chain's k)."""
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max((len(path) for path in self.paths), default=0)

    @property
    def is_chain(self) -> bool:
        return all(set(path) == {0} for path in self.paths) and self.num_nodes == self.depth

    @property
    def setting(self) -> "int | list[list[int]]":
        """The value as a user writes it and JSON keeps it: k for a chain, the list of paths (by depth, then rank)
        for a tree. `DraftShape.of(shape.setting) == shape`."""
        if self.is_chain:
            return self.num_nodes
        return [list(path) for path in sorted(self.paths, key=lambda path: (len(path), path))]

    def __str__(self) -> str:
        return json.dumps(self.setting)

    def has_children(self, node: int) -> bool:
        path = self.paths[node]
        return any(len(other) == len(path) + 1 and other[:-1] == path for other in self.paths)

    def expected_tokens(self, acceptance_by_rank: Sequence[Sequence[float]]) -> float:
        """Tokens a row gains per step: 1 + the sum over nodes of the product of p[d][r] along the node's path."""
        return 1.0 + sum(path_probability(path, acceptance_by_rank) for path in self.paths)

    def tables(self, device: torch.device) -> "TreeTables":
        return TreeTables.build(self, device)


AUTO = "auto"


def draft_request(value: Any) -> "DraftShape | str":
    """What a `num_draft_tokens` value asks for, checked once where it enters: `AUTO` ("auto": measure the fastest
    shape) or a `DraftShape`."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    return DraftShape.of(value)


def draft_request_from_text(text: str) -> "DraftShape | str":
    """`draft_request` of a value written as text (a command line, an lm-eval model argument): "auto", "3" or
    "[[0], [1], [0, 0]]"."""
    return AUTO if text.strip() == AUTO else DraftShape.parse(text)


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
    def build(cls, tree: DraftShape, device: torch.device) -> "TreeTables":
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


def path_probability(path: Sequence[int], acceptance_by_rank: Sequence[Sequence[float]]) -> float:
    """The chance that the node at `path` is accepted: the product of p[d][r] along it (0 past what was measured)."""
    probability = 1.0
    for depth, rank in enumerate(path):
        if depth >= len(acceptance_by_rank) or rank >= len(acceptance_by_rank[depth]):
            return 0.0
        probability *= acceptance_by_rank[depth][rank]
    return probability


def best_draft_tree(acceptance_by_rank: Sequence[Sequence[float]], num_nodes: int) -> DraftShape | None:
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
    return DraftShape.from_paths(chosen)


def spine_tree(depth: int, width: int) -> DraftShape:
    """The calibration's tree: `width` candidates at each depth below the module's first choices. Its accepted paths
    measure p[d][r] for every d < depth, r < width."""
    return DraftShape.from_paths([(0,) * level + (rank,) for level in range(depth) for rank in range(width)])



__all__ = [
    "AUTO",
    "MAX_NUM_DRAFT_TOKENS",
    "MAX_TREE_DEPTH",
    "MAX_TREE_NODES",
    "MAX_TREE_RANK",
    "DraftShape",
    "TreeLevel",
    "TreeTables",
    "best_draft_tree",
    "check_tree_decoding",
    "check_tree_paths",
    "draft_request",
    "draft_request_from_text",
    "path_probability",
    "spine_tree",
]
