# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Training data for the recyclable module: text files read into fixed-size blocks of token ids.

Accepted files: JSON Lines (`.jsonl`, one object per line with a string "text" field, as `recycle-hf distill`
writes them) and plain text (`.txt`, the whole file is one document). Documents are tokenized without special
tokens, each followed by the end-of-sequence token (unless it already ends with one), concatenated and cut into
blocks; the last, shorter block is padded and its padding masked out of the loss.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .errors import InvalidInputError
from .loading import pad_token_id


logger = logging.getLogger(__name__)

DATA_FILE_SUFFIXES = (".jsonl", ".txt")
# Documents tokenized per tokenizer call: large enough for the fast tokenizers' batching, small enough for progress.
_TOKENIZE_BATCH_SIZE = 256


def resolve_data_files(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand paths and glob patterns (`data/*.jsonl`, `**` allowed) into the list of files, in the given order."""
    files: list[Path] = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InvalidInputError(
                f"No training file matches {pattern!r}; give existing .jsonl or .txt files or globs."
            )
        for match in map(Path, matches):
            if match.is_dir():
                raise InvalidInputError(f"{match} is a folder; give the files inside it (e.g. '{match}/*.jsonl').")
            if match.suffix not in DATA_FILE_SUFFIXES:
                raise InvalidInputError(
                    f"{match}: unsupported training file type {match.suffix!r}; use .jsonl (objects with a 'text' "
                    "field) or .txt (one document per file)."
                )
            if match not in files:
                files.append(match)
    return files


def read_documents(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield the documents of `.jsonl` files (their "text" fields) and `.txt` files (whole files)."""
    for path in map(Path, paths):
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            if text.strip():
                yield text
            continue
        for line_number, record in read_json_lines(path):
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"{path}:{line_number}: each JSON line must be an object with a string 'text' field."
                )
            yield text


def read_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for every non-blank line of a JSON Lines file; a line that is not JSON is named."""
    with Path(path).open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidInputError(f"{path}:{line_number}: not valid JSON ({error.msg}).") from error
            yield line_number, value


def tokenize_documents(
    documents: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None
) -> list[int]:
    """One stream of token ids: every document tokenized without special tokens and closed by the EOS token."""
    eos_token_id = tokenizer.eos_token_id
    stream: list[int] = []
    progress = tqdm(desc="tokenizing", unit=" tokens", unit_scale=True)
    for batch in _batched(documents, _TOKENIZE_BATCH_SIZE):
        for token_ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if eos_token_id is not None and (not token_ids or token_ids[-1] != eos_token_id):
                token_ids = [*token_ids, eos_token_id]
            stream.extend(token_ids)
            progress.update(len(token_ids))
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    progress.close()
    return stream[:max_tokens] if max_tokens is not None else stream


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TokenBlockDataset(Dataset):
    """Fixed-size blocks of a token stream, as `{"input_ids", "attention_mask", "labels"}` items for `Trainer`.

    Blocks follow each other without overlap. A last block shorter than `block_size` is right-padded with
    `pad_token_id`; its padding has attention mask 0 and label -100. A last block under `min_last_block` tokens is
    dropped (it would teach little).
    """

    def __init__(self, token_ids: list[int], block_size: int, pad_token_id: int, min_last_block: int = 2):
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2 (an input and its next token), got {block_size}.")
        num_full, remainder = divmod(len(token_ids), block_size)
        num_blocks = num_full + (1 if remainder >= min_last_block else 0)
        if num_blocks == 0:
            raise InvalidInputError(
                f"The training data has only {len(token_ids)} tokens, too few for one block; add data or lower the "
                "block size."
            )
        self.input_ids = torch.full((num_blocks, block_size), pad_token_id, dtype=torch.long)
        self.attention_mask = torch.zeros((num_blocks, block_size), dtype=torch.long)
        kept = min(len(token_ids), num_blocks * block_size)
        self.input_ids.view(-1)[:kept] = torch.tensor(token_ids[:kept], dtype=torch.long)
        self.attention_mask.view(-1)[:kept] = 1
        self.labels = self.input_ids.masked_fill(self.attention_mask == 0, -100)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def token_ids(self) -> torch.Tensor:
        """All real (unpadded) tokens of the dataset, in order, as one 1-D tensor."""
        return self.input_ids[self.attention_mask.bool()]


def load_token_blocks(
    data_files: Iterable[str | os.PathLike],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int = 256,
    max_tokens: int | None = None,
) -> TokenBlockDataset:
    """Read `.jsonl`/`.txt` files (paths or globs) and cut their tokens into a [`TokenBlockDataset`].

    `max_tokens` caps the tokens read (the first ones, in file order).
    """
    files = resolve_data_files(data_files)
    pad_id = pad_token_id(tokenizer)
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first.")
    token_ids = tokenize_documents(read_documents(files), tokenizer, max_tokens=max_tokens)
    dataset = TokenBlockDataset(token_ids, block_size, pad_id)
    logger.info(
        "Training data: %d files, %d tokens, %d blocks of %d", len(files), dataset.num_tokens, len(dataset), block_size
    )
    return dataset


__all__ = [
    "DATA_FILE_SUFFIXES",
    "TokenBlockDataset",
    "load_token_blocks",
    "read_documents",
    "read_json_lines",
    "resolve_data_files",
    "tokenize_documents",
]
