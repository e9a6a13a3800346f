"""lm-eval scores of SmolLM2-135M-Instruct: lm-eval's `hf` on the base vs `recyclegpt` std / rec (shipped module).

Offline, on the local tasks (../shared/data or $RECYCLE_HF_DATA_DIR), with a document limit per task:

    python benchmarks/lm_eval_tables.py --limit 200 --output benchmarks/results/cpu-smollm2/lm_eval.md

`--models rec` reruns only the recycle rows (after retraining the module: `hf` and `std` scores use the base's
logits alone and do not change). `--adapter` scores another module, `--tasks` picks tasks (any of `METRICS`).
Scores carry lm-eval's standard errors; when std and rec run together, a row "rec - std" gives their paired
difference over the same documents with its standard error (the per-document differences' spread, which is far
smaller than either score's own standard error when the two agree on most documents).
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


# The metric reported for each local task (lm-eval's own name for it).
METRICS = {
    "piqa_local": "acc",
    "copa_local": "acc",
    "lambada_openai_gen_local": "exact_match",
    "hellaswag_local": "acc_norm",
    "boolq_local": "acc",
}
DEFAULT_TASKS = ("piqa_local", "copa_local", "lambada_openai_gen_local")


def _metric(task_results: dict, name: str) -> tuple[float, float]:
    """Metric `name` and its standard error, whatever filter lm-eval names them with ("acc,none",
    "acc_stderr,none", "exact_match,first_word")."""
    value = next(v for key, v in task_results.items() if key.split(",")[0] == name)
    stderr = next(v for key, v in task_results.items() if key.split(",")[0] == f"{name}_stderr")
    return value, stderr


def _per_document(samples: list[dict], name: str) -> dict[int, float]:
    return {sample["doc_id"]: float(sample[name]) for sample in samples}


def paired_difference(rec: dict[int, float], std: dict[int, float]) -> tuple[float, float]:
    """Mean of rec - std over the documents both scored, and the standard error of that mean."""
    differences = [rec[doc] - std[doc] for doc in sorted(rec) if doc in std]
    count = len(differences)
    mean = sum(differences) / count
    variance = sum((d - mean) ** 2 for d in differences) / max(1, count - 1)
    return mean, (variance / count) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="documents per task (0: all)")
    parser.add_argument("--fewshot", default="0,5")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", required=True)
    parser.add_argument("--models", default="hf,std,rec", help="comma-separated subset of hf,std,rec")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of {', '.join(METRICS)}")
    parser.add_argument("--adapter", default=None, help="recycle adapter folder (default: the shipped module)")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if not set(tasks) <= set(METRICS):
        parser.error(f"--tasks takes tasks of {', '.join(METRICS)}, got {args.tasks!r}")
    wanted = set(args.models.split(","))
    if not wanted <= {"hf", "std", "rec"}:
        parser.error(f"--models takes a subset of hf,std,rec, got {args.models!r}")
    data_dir = os.environ.get("RECYCLE_HF_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    manager = task_manager(include_defaults=False, metadata={"data_dir": data_dir})
    load_default_base()  # builds the dequantized cache that the `hf` model reads
    model, tokenizer = load_recycle_model(adapter=args.adapter)
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
        per_document = {}
        for name, lm in models.items():
            started = time.perf_counter()
            result = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=args.limit or None,
                                             task_manager=manager, bootstrap_iters=1, log_samples=True)
            scores = {task: _metric(result["results"][task], METRICS[task]) for task in tasks}
            per_document[name] = {
                task: _per_document(result["samples"][task], METRICS[task]) for task in tasks
            }
            raw[f"{name} {shots}-shot"] = {
                task: {"score": score, "stderr": stderr, "documents": len(per_document[name][task])}
                for task, (score, stderr) in scores.items()
            }
            rows.append(f"| {name} | {shots} | " + " | ".join(f"{scores[t][0]:.3f} ± {scores[t][1]:.3f}" for t in tasks)
                        + f" | {time.perf_counter() - started:.0f} |")
        if {"recyclegpt std", "recyclegpt rec"} <= set(per_document):
            differences = {
                task: paired_difference(per_document["recyclegpt rec"][task], per_document["recyclegpt std"][task])
                for task in tasks
            }
            raw[f"rec - std {shots}-shot"] = {
                task: {"difference": d, "stderr": e} for task, (d, e) in differences.items()
            }
            rows.append(f"| rec - std (paired) | {shots} | "
                        + " | ".join(f"{differences[t][0]:+.3f} ± {differences[t][1]:.3f}" for t in tasks) + " | |")
    header = "| model | shots | " + " | ".join(tasks) + " | seconds |\n|---|---|" + "---|" * (len(tasks) + 1)
    documents = f"first {args.limit} documents per task" if args.limit else "all documents"
    module = f"module {args.adapter}" if args.adapter else "shipped module"
    text = f"lm-eval, {documents} (local data), {module}, CPU, fp32; score ± standard error.\n\n{header}\n"
    text += "\n".join(rows)
    Path(args.output).write_text(text + "\n")
    Path(args.output).with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
