"""`recycle-hf eval`: lm-evaluation-harness with the `recyclegpt` model registered; every argument goes to lm-eval."""

from __future__ import annotations

import importlib.util

from ..errors import InputNotFoundError


HELP = (
    "Evaluate with lm-evaluation-harness (all lm_eval flags): --model recyclegpt "
    "--model_args pretrained=CKPT,mode=std|rec|verify --tasks recyclegpt_suite ..."
)


def main(argv: list[str]) -> int:
    if importlib.util.find_spec("lm_eval") is None:
        raise InputNotFoundError("recycle-hf eval needs lm-evaluation-harness: pip install 'recycle-hf[eval]'")
    from ..eval.cli import main as lm_eval_main

    return lm_eval_main(argv)
