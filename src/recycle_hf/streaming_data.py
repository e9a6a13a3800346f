# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Pretraining data at scale: a text corpus streamed with the `datasets` library and packed into token blocks.

Nothing is read up front: `load_dataset(..., streaming=True)` opens the files (or a Hub dataset) only as blocks are
consumed, so a corpus larger than memory works. Documents are tokenized without special tokens, each closed by the
EOS token, concatenated and cut into blocks of exactly `block_size` tokens, `documents_per_group` documents at a
time (the tail of each group that does not fill a block is dropped: under one block per group).

The result is a `datasets.IterableDataset`, which `Trainer`'s data loader shards across processes through
accelerate: with at least as many data shards (files) as processes, each process reads its own files
(`IterableDataset.shard`); with fewer, every process reads the stream and keeps its own slice of each global batch
(`IterableDatasetShard`). For that the trainer must not dispatch batches from the main process
(`accelerator_config={"dispatch_batches": False}`, set by `recycle_hf.pretraining`).

Accepted local files: JSON Lines / JSON (`.jsonl`, `.json`, optionally `.gz`; a string column, default "text"),
Parquet (`.parquet`) and plain text (`.txt`, optionally `.gz`, and Markdown `.md`; each paragraph, separated by a
blank line, is one document). One run reads one format.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase


try:
    import datasets
except ImportError as error:
    raise ImportError(
        "Streaming pretraining data needs the datasets library: pip install 'recycle-hf[pretrain]'."
    ) from error


logger = logging.getLogger(__name__)

# File name endings and the `datasets` builder that reads them.
CORPUS_FORMATS = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".txt.gz": "text",
    ".md": "text",
}
# Documents tokenized and packed per call: large enough that the dropped tail of each group (under one block)
# is negligible, small enough to keep memory flat.
DEFAULT_DOCUMENTS_PER_GROUP = 1000


def corpus_format(path: str | os.PathLike) -> str | None:
    """The `datasets` builder for a file name (`json`, `parquet`, `text`), or None for an unsupported one."""
    name = Path(path).name.lower()
    return next((builder for ending, builder in CORPUS_FORMATS.items() if name.endswith(ending)), None)


def resolve_corpus_files(patterns: Iterable[str | os.PathLike]) -> tuple[str, list[str]]:
    """Expand files, folders (every supported file inside, recursively) and globs into (builder, files).

    Raises a `ValueError` that says what to pass when a pattern matches nothing, a file has an unsupported type, or
    the files mix formats.
    """
    files: list[str] = []
    for pattern in map(str, patterns):
        expanded = os.path.expanduser(pattern)
        if os.path.isdir(expanded):
            matches = sorted(str(path) for path in Path(expanded).rglob("*") if path.is_file() and corpus_format(path))
        else:
            matches = sorted(path for path in glob.glob(expanded, recursive=True) if os.path.isfile(path))
        if not matches:
            raise ValueError(
                f"No data files found for {pattern!r}; give .jsonl/.json/.parquet/.txt files, a folder holding them, "
                "or a glob such as 'corpus/*.jsonl'."
            )
        for match in matches:
            if corpus_format(match) is None:
                raise ValueError(
                    f"{match}: unsupported data file type; use {', '.join(CORPUS_FORMATS)} files."
                )
            if match not in files:
                files.append(match)
    builders = sorted({corpus_format(path) for path in files})
    if len(builders) > 1:
        raise ValueError(
            f"The data files mix formats ({', '.join(builders)}); one run reads one format: convert the files or "
            "train on one kind."
        )
    return builders[0], files


def stream_documents(
    data_files: Iterable[str | os.PathLike] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
) -> datasets.IterableDataset:
    """A streamed dataset with the one column `text_column`: local `data_files` (paths, folders or globs), or the
    Hub dataset `dataset_name` (needs a connection). Nothing is read yet beyond what the format needs to name its
    columns."""
    if (data_files is None) == (dataset_name is None):
        raise ValueError("Give either data files or a dataset name, not both.")
    if data_files is not None:
        builder, files = resolve_corpus_files(data_files)
        source = f"{len(files)} {builder} file{'s' if len(files) > 1 else ''}: {', '.join(files[:3])}"
    else:
        source = f"dataset {dataset_name}"
    try:
        if data_files is not None:
            # Whole .txt files as single documents would have to fit in memory: paragraphs stream.
            extra = {"sample_by": "paragraph"} if builder == "text" else {}
            documents = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **extra)
        else:
            documents = datasets.load_dataset(dataset_name, dataset_config, split=split, streaming=True)
        if documents.column_names is None:
            # Formats that name their columns only in the data (text): `datasets` reads the first example for them.
            documents = documents._resolve_features()
    except StopIteration:
        # What `datasets` raises when the files it reads to learn the columns hold no record at all.
        raise ValueError(f"The corpus ({source}) is empty; give files that hold text.") from None
    columns = documents.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(
            f"The corpus ({source}) has no {text_column!r} column (columns: {', '.join(columns)}); name the text "
            "column with --text-column."
        )
    logger.info("Streaming %s (%d shards)", source, documents.n_shards)
    return documents.select_columns([text_column]) if columns is not None else documents


def _tokenize_and_pack(
    batch: dict[str, list[Any]],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str,
) -> dict[str, list[list[int]]]:
    if text_column not in batch:
        raise ValueError(f"The corpus has no {text_column!r} column (found: {', '.join(batch)}); use --text-column.")
    texts = [text for text in batch[text_column] if isinstance(text, str) and text.strip()]
    stream: list[int] = []
    eos_token_id = tokenizer.eos_token_id
    for token_ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        stream.extend(token_ids)
        if eos_token_id is not None and (not token_ids or token_ids[-1] != eos_token_id):
            stream.append(eos_token_id)
    num_blocks = len(stream) // block_size
    starts = range(0, num_blocks * block_size, block_size)
    return {"input_ids": [stream[start : start + block_size] for start in starts]}


def pack_token_blocks(
    documents: datasets.IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    documents_per_group: int = DEFAULT_DOCUMENTS_PER_GROUP,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> datasets.IterableDataset:
    """Streamed `{"input_ids": LongTensor[block_size]}` items: `documents` tokenized and packed (see the module
    docstring). Every token of a block is real, so the training loss covers all of it. `shuffle_buffer` > 0
    shuffles blocks within a buffer of that many (and the shard order), reproducibly from `seed`."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (an input and its next token), got {block_size}.")
    if documents_per_group < 1:
        raise ValueError(f"documents_per_group must be >= 1, got {documents_per_group}.")
    pack = partial(_tokenize_and_pack, tokenizer=tokenizer, block_size=block_size, text_column=text_column)
    columns = documents.column_names
    blocks = documents.map(pack, batched=True, batch_size=documents_per_group, remove_columns=columns)
    if shuffle_buffer > 0:
        blocks = blocks.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return blocks.with_format("torch")


def stream_token_blocks(
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    data_files: Iterable[str | os.PathLike] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    text_column: str = "text",
    documents_per_group: int = DEFAULT_DOCUMENTS_PER_GROUP,
    shuffle_buffer: int = 0,
    seed: int = 0,
) -> datasets.IterableDataset:
    """[`stream_documents`] packed by [`pack_token_blocks`], checked to yield at least one block.

    The check reads only the start of the stream (one group of documents). An empty corpus, or one too short for a
    single block, raises a `ValueError` here, before any training starts.
    """
    documents = stream_documents(data_files, dataset_name, dataset_config, split, text_column)
    blocks = pack_token_blocks(documents, tokenizer, block_size, text_column, documents_per_group)
    # Checked before shuffling, which would first fill its whole buffer.
    if next(iter(blocks), None) is None:
        where = dataset_name or ", ".join(map(str, data_files))
        raise ValueError(
            f"The corpus ({where}) gives no complete block of {block_size} tokens: it is empty or too short. Add "
            "text or lower --block-size."
        )
    if shuffle_buffer > 0:
        blocks = blocks.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return blocks


__all__ = [
    "CORPUS_FORMATS",
    "DEFAULT_DOCUMENTS_PER_GROUP",
    "corpus_format",
    "pack_token_blocks",
    "resolve_corpus_files",
    "stream_documents",
    "stream_token_blocks",
]
