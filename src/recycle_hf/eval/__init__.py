"""lm-evaluation-harness support: the `recyclegpt` model and the RecycleGPT task suite.

Importing this module registers the lm-eval model `recyclegpt` (`import recycle_hf` alone does not: lm-eval is the
optional extra `pip install recycle-hf[eval]`). `recycle-hf eval ...` and `python -m recycle_hf.eval ...` import it
and hand every argument to lm-eval's own command line, with this package's tasks added to the task search path:

- `recyclegpt_suite`: the paper's zero-/few-shot suite (ARC-Easy, ARC-Challenge, BoolQ, HellaSwag, OpenBookQA,
  PIQA, SIQA, WinoGrande) as lm-eval's standard tasks, which download their data from the Hub.
- `*_local` tasks read the same benchmarks from a local folder (`$RECYCLE_HF_DATA_DIR` or
  `--metadata data_dir=...`): `piqa_local`, `hellaswag_local`, `boolq_local`, `copa_local`, `lambada_openai_local`
  and `lambada_openai_gen_local` (greedy last-word generation); `recyclegpt_suite_local` groups the suite's three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


try:
    import lm_eval  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("recycle_hf.eval needs lm-evaluation-harness: pip install 'recycle-hf[eval]'") from error

from lm_eval.tasks import TaskManager

from .local_data import DATA_DIR_ENV
from .model import EVAL_MODES, RecycleGPTLM


TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_TASKS = (
    "boolq_local",
    "copa_local",
    "hellaswag_local",
    "lambada_openai_gen_local",
    "lambada_openai_local",
    "piqa_local",
)
SUITE_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "social_iqa", "winogrande")


def task_manager(include_path: str | Path | list[str | Path] | None = None, **kwargs: Any) -> TaskManager:
    """An lm-eval `TaskManager` that knows this package's tasks (and `include_path`'s, which take precedence)."""
    if include_path is None:
        include_path = []
    elif not isinstance(include_path, (list, tuple)):
        include_path = [include_path]
    return TaskManager(include_path=[TASKS_DIR, *include_path], **kwargs)


__all__ = [
    "DATA_DIR_ENV",
    "EVAL_MODES",
    "LOCAL_TASKS",
    "SUITE_TASKS",
    "TASKS_DIR",
    "RecycleGPTLM",
    "task_manager",
]
