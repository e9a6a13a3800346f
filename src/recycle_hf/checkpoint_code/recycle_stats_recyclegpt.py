# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""`RecycleStats`: what one recycle-mode `generate` call did, as `RecycleGenerateOutput.recycle_stats`.

One type for every decoding path (the fast path, the reference loop, and verify mode with k = 0, which runs the
base's own `generate`), typed as transformers types its generate outputs. It also reads as a mapping
(`stats["new_tokens"]`, `dict(stats)`, `json.dumps(dict(stats))`), including the two derived rates.

This file is remote code: a checkpoint folder carries it, so it imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecycleStats(Mapping):
    """Counts of forwards, drafts and tokens of one call, with where its draft shape and decoding path came from."""

    batch_size: int = 0
    mode: str = "verify"
    # What the call drafted with: a count, or a tree as a list of paths.
    num_draft_tokens: int | list[list[int]] = 0
    # Where that came from: "given", or how "auto" chose it (measured, stored, provisional).
    num_draft_tokens_source: str = "given"
    # "static" (the fast path), "reference_loop" or "plain" (k = 0: the base's own generate).
    decoding_path: str = "static"
    base_forwards: int = 0
    # Base forwards counted once per row still generating: the per-row rate stays exact when rows end early.
    row_base_forwards: int = 0
    recycle_forwards: int = 0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_drafts: int = 0
    tokens_per_row: list[int] = field(default_factory=list)
    # The first step of a compiled call compiles (or loads inductor's cache): counted apart from decoding.
    compile_seconds: float = 0.0
    decoding_seconds: float = 0.0

    @property
    def tokens_per_base_forward(self) -> float:
        return self.new_tokens / max(1, self.row_base_forwards)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_drafts / self.drafted_tokens if self.drafted_tokens else None

    def count_base_forward(self, generating_rows: int) -> None:
        self.base_forwards += 1
        self.row_base_forwards += generating_rows

    @classmethod
    def merged(cls, parts: Sequence[RecycleStats]) -> RecycleStats:
        """One record for calls decoded in turn (e.g. prompt sets of one timed run): counts and seconds add up,
        tokens per row add up row by row, the rates follow; the rest is the first call's."""
        summed = {
            name: sum(getattr(part, name) for part in parts)
            for name in ("base_forwards", "row_base_forwards", "recycle_forwards", "new_tokens", "drafted_tokens",
                         "accepted_drafts", "compile_seconds", "decoding_seconds")
        }
        tokens_per_row = [sum(row) for row in zip(*(part.tokens_per_row for part in parts))]
        return dataclasses.replace(parts[0], tokens_per_row=tokens_per_row, **summed)

    # The mapping view: the fields, then the derived rates (`_NAMES`, below the class).
    def __getitem__(self, name: str) -> Any:
        if name not in _NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)


_NAMES = tuple(item.name for item in dataclasses.fields(RecycleStats)) + ("tokens_per_base_forward", "acceptance_rate")


__all__ = ["RecycleStats"]
