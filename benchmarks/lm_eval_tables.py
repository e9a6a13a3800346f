"""lm-eval scores of SmolLM2-135M-Instruct: lm-eval's `hf` on the base vs `recyclegpt` std / rec (shipped module).

Offline, on the local tasks (../shared/data or $RECYCLE_HF_DATA_DIR), with a document limit per task:

    python benchmarks/lm_eval_tables.py --limit 200 --output benchmarks/results/cpu-smollm2/lm_eval.md

`--models rec` reruns only the recycle rows (after retraining the module: `hf` and `std` scores use the base's
logits alone and do not change).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lm_eval
from lm_eval.models.huggingface import HFLM

from recycle_hf.defaults import dequantized_base_dir, load_default_base
from recycle_hf.eval import RecycleGPTLM, task_manager
from recycle_hf.loading import load_recycle_model


TASKS = {"piqa_local": "acc", "copa_local": "acc", "lambada_openai_gen_local": "exact_match"}


def _metric(task_results: dict, name: str) -> float:
    """The value of metric `name` whatever filter lm-eval names it with ("acc,none", "exact_match,first_word")."""
    return next(value for key, value in task_results.items() if key.split(",")[0] == name and "stderr" not in key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--fewshot", default="0,5")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", required=True)
    parser.add_argument("--models", default="hf,std,rec", help="comma-separated subset of hf,std,rec")
    args = parser.parse_args()
    wanted = set(args.models.split(","))
    if not wanted <= {"hf", "std", "rec"}:
        parser.error(f"--models takes a subset of hf,std,rec, got {args.models!r}")
    data_dir = os.environ.get("RECYCLE_HF_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    manager = task_manager(include_defaults=False, metadata={"data_dir": data_dir})
    load_default_base()  # builds the dequantized cache that the `hf` model reads
    model, tokenizer = load_recycle_model()
    builders = {
        "hf": ("hf (base)", lambda: HFLM(pretrained=str(dequantized_base_dir()), batch_size=args.batch_size,
                                         device="cpu", dtype="float32")),
        "std": ("recyclegpt std", lambda: RecycleGPTLM(pretrained=model, tokenizer=tokenizer, mode="std",
                                                       batch_size=args.batch_size)),
        "rec": ("recyclegpt rec", lambda: RecycleGPTLM(pretrained=model, tokenizer=tokenizer, mode="rec",
                                                       batch_size=args.batch_size)),
    }
    models = {name: build() for key, (name, build) in builders.items() if key in wanted}
    rows, raw = [], {}
    for shots in [int(value) for value in args.fewshot.split(",")]:
        for name, lm in models.items():
            started = time.perf_counter()
            result = lm_eval.simple_evaluate(model=lm, tasks=list(TASKS), num_fewshot=shots, limit=args.limit,
                                             task_manager=manager, bootstrap_iters=0)
            scores = {task: _metric(result["results"][task], metric) for task, metric in TASKS.items()}
            raw[f"{name} {shots}-shot"] = scores
            rows.append(f"| {name} | {shots} | " + " | ".join(f"{scores[t]:.3f}" for t in TASKS)
                        + f" | {time.perf_counter() - started:.0f} |")
    header = "| model | shots | " + " | ".join(TASKS) + " | seconds |\n|---|---|" + "---|" * (len(TASKS) + 1)
    text = f"lm-eval, first {args.limit} documents per task (local data), CPU, fp32.\n\n{header}\n" + "\n".join(rows)
    Path(args.output).write_text(text + "\n")
    Path(args.output).with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
