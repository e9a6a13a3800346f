"""Choosing the draft vocabulary: the token ids verify mode may draft (`RecycleGPTConfig.recycle_draft_vocab_size`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch


def frequent_token_ids(token_sequences: Iterable[Iterable[int]], size: int, vocab_size: int) -> torch.Tensor:
    """The `size` most frequent ids of `token_sequences`, topped up with the lowest unseen ids.

    BPE vocabularies give their earliest merges (the commonest pieces) the lowest ids, so the top-up favours
    common tokens the training data happened not to contain.
    """
    if not 1 <= size <= vocab_size:
        raise ValueError(f"The draft vocabulary size must be in [1, {vocab_size}], got {size}.")
    counts = Counter()
    for sequence in token_sequences:
        counts.update(int(token) for token in sequence)
    chosen = [token for token, _ in counts.most_common(size) if 0 <= token < vocab_size]
    seen = set(chosen)
    for token in range(vocab_size):
        if len(chosen) >= size:
            break
        if token not in seen:
            chosen.append(token)
    return torch.tensor(sorted(chosen), dtype=torch.long)
