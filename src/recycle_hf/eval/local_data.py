"""Benchmark data read from a local folder, for the `*_local` tasks (evaluation without the Hugging Face Hub).

The task YAMLs in `recycle_hf/eval/tasks/` name these loaders as their `custom_dataset`. lm-eval calls a loader with
the task's metadata as keyword arguments, so the data folder comes from `--metadata data_dir=/path` (or
`metadata={"data_dir": ...}` in Python) and otherwise from the `RECYCLE_HF_DATA_DIR` environment variable. The
folder layout is that of the official release files (see `examples/eval_offline.md`):

    piqa/valid.jsonl, piqa/valid-labels.lst          PIQA validation (goal, sol1, sol2; labels one per line)
    hellaswag/hellaswag_val.jsonl                    HellaSwag validation
    boolq/boolq_validation.jsonl                     BoolQ validation (question, answer: bool, passage)
    copa/super_glue_copa_validation.jsonl            SuperGLUE COPA validation
    lambada/lambada_test.jsonl                       LAMBADA, OpenAI variant (text)

Each loader returns the fields lm-eval's own task of the same benchmark reads, so the task prompts are the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import datasets


DATA_DIR_ENV = "RECYCLE_HF_DATA_DIR"

# The first word of a text: letters/digits, with inner apostrophes ("didn't", "Hightowers'money").
_FIRST_WORD = re.compile(r"\w+(?:['’]\w+)*")
FIRST_WORD_PATTERN = _FIRST_WORD.pattern


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `data_dir` if given, else `$RECYCLE_HF_DATA_DIR`."""
    value = data_dir if data_dir else os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ValueError(
            f"The *_local tasks read benchmark files from a local folder. Name it with the {DATA_DIR_ENV} "
            "environment variable or with `--metadata data_dir=/path/to/data` (see examples/eval_offline.md)."
        )
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Benchmark data folder {folder} does not exist (from data_dir / ${DATA_DIR_ENV}).")
    return folder


def _data_file(data_dir: str | os.PathLike | None, relative_path: str) -> Path:
    path = resolve_data_dir(data_dir) / relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"Missing benchmark file {path}. The data folder must hold {relative_path} "
            "(layout: examples/eval_offline.md)."
        )
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _single_split(rows: list[dict[str, Any]], split: str = "validation") -> datasets.DatasetDict:
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def piqa(data_dir: str | None = None, **_task_metadata: Any) -> datasets.DatasetDict:
    """PIQA validation: `goal`, `sol1`, `sol2` and the integer `label` from the aligned labels file."""
    docs = _read_jsonl(_data_file(data_dir, "piqa/valid.jsonl"))
    labels_path = _data_file(data_dir, "piqa/valid-labels.lst")
    labels = [int(line) for line in labels_path.read_text().split()]
    if len(labels) != len(docs):
        raise ValueError(
            f"{labels_path} has {len(labels)} labels for {len(docs)} PIQA questions; use the official release files."
        )
    return _single_split(
        [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": label} for d, label in zip(docs, labels)]
    )


def hellaswag(data_dir: str | None = None, **_task_metadata: Any) -> datasets.DatasetDict:
    """HellaSwag validation with the fields of the Hub dataset (`activity_label`, `ctx_a`, `ctx_b`, `endings`, ...)."""
    return _single_split(_read_jsonl(_data_file(data_dir, "hellaswag/hellaswag_val.jsonl")))


def boolq(data_dir: str | None = None, **_task_metadata: Any) -> datasets.DatasetDict:
    """BoolQ validation in SuperGLUE's form: `passage`, `question` and `label` (0 = no, 1 = yes)."""
    docs = _read_jsonl(_data_file(data_dir, "boolq/boolq_validation.jsonl"))
    return _single_split(
        [
            {"passage": d["passage"], "question": d["question"], "idx": index, "label": int(bool(d["answer"]))}
            for index, d in enumerate(docs)
        ]
    )


def copa(data_dir: str | None = None, **_task_metadata: Any) -> datasets.DatasetDict:
    """SuperGLUE COPA validation: `premise`, `choice1`, `choice2`, `question` (cause/effect), `label`."""
    return _single_split(_read_jsonl(_data_file(data_dir, "copa/super_glue_copa_validation.jsonl")))


def lambada_openai(data_dir: str | None = None, **_task_metadata: Any) -> datasets.DatasetDict:
    """LAMBADA (OpenAI variant) test: `text`, whose last word is the target."""
    return _single_split(_read_jsonl(_data_file(data_dir, "lambada/lambada_test.jsonl")), split="test")


def first_word(text: str) -> str:
    """The first word of `text`, without surrounding spaces, quotes or punctuation ("" if there is none)."""
    match = _FIRST_WORD.search(text)
    return match.group(0) if match else ""


def lambada_target_word(doc: dict[str, Any]) -> str:
    """The word greedy generation must produce: the first word of lm-eval's LAMBADA target (`text`'s last piece)."""
    return first_word(doc["text"].split(" ")[-1])
