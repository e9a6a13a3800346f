"""`recycle-hf calibrate`: list what this machine has measured (`--show`) and measure it again (`--again`).

Two files hold what is measured once and kept (both beside each other, in $RECYCLE_HF_CACHE or ~/.cache/recycle_hf,
or in $RECYCLE_HF_CALIBRATION's folder): `draft_lengths.json`, `num_draft_tokens="auto"`'s choices with what each
was measured under, and `product_forms.json`, the few-row product forms of each CPU.
"""

from __future__ import annotations

import argparse

import torch

from ..bench.prompts import BENCHMARK_PROMPTS, encode_chat_prompts, prompt_texts
from ..checkpoint_code.draft_length_recyclegpt import (
    calibration_file,
    calibration_key,
    draft_length_choices,
    measure_draft_length,
    stored_choices,
)
from ..checkpoint_code.few_row_products_recyclegpt import (
    describe_machine,
    machine_key,
    measure_product_forms_again,
    product_forms_file,
    stored_product_forms,
)
from ..loading import add_recycle_model_arguments, load_recycle_model_from_args
from . import positive_int


HELP = "Show num_draft_tokens='auto''s stored choices and this CPU's product forms, or measure them again."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--show", action="store_true", help="list the stored choices and product forms")
    action.add_argument("--again", action="store_true",
                        help="measure this model's product forms and auto's choice at each --batch-sizes again")
    add_recycle_model_arguments(parser)
    parser.add_argument("--batch-sizes", default="1", help="with --again: comma-separated batch sizes (default: 1)")
    parser.add_argument("--prompts-file", help="with --again: prompts to calibrate on (default: built-in prompts)")
    parser.add_argument("--sampling", action="store_true",
                        help="with --again: calibrate sampling calls (chains only) instead of greedy ones")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's)")


def show() -> None:
    path = calibration_file()
    choices = stored_choices(path)
    print(f"num_draft_tokens='auto' choices in {path}: {len(choices) or 'none'}")
    for key, choice in sorted(choices.items(), key=lambda item: str(item[1].record.get("measured", ""))):
        record = choice.record
        speedup = record.get("speedup")
        speed = f"{speedup[0]:.2f}x plain [{speedup[1]:.2f}, {speedup[2]:.2f}]" if isinstance(speedup, list) else "-"
        state = "decided" if choice.decided else "provisional (measured again by the next call)"
        print(f"  {key}  choice {choice.value}  {state}  {speed}  batch {record.get('batch_size', '?')}  "
              f"load {record.get('load', '?')}  {record.get('machine', '?')}  method {record.get('method', '?')}  "
              f"measured {record.get('measured', '?')}")
    forms_path = product_forms_file()
    forms = stored_product_forms(forms_path)
    print(f"few-row product forms in {forms_path}: {len(forms) or 'none'} machine(s); this one is {machine_key()}, "
          f"{describe_machine()}")
    for key, entry in forms.items():
        print(f"  {key}  {entry.get('machine', '?')}  torch {entry.get('torch', '?')}  measured "
              f"{entry.get('measured', '?')}")
        for shape, rows in sorted(entry.get("shapes", {}).items()):
            print(f"    {shape}: swapped at {rows or 'no'} row counts")


def again(args: argparse.Namespace) -> None:
    model, tokenizer = load_recycle_model_from_args(args)
    linear_weights = [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]
    draft_head = model.draft_head()
    measure_product_forms_again(linear_weights + ([draft_head[0]] if draft_head else []))
    texts, _ = prompt_texts(args.prompts_file) if args.prompts_file else (list(BENCHMARK_PROMPTS), None)
    choices = draft_length_choices(model)
    for size in (int(part) for part in args.batch_sizes.split(",")):
        batch = encode_chat_prompts(tokenizer, [texts[row % len(texts)] for row in range(size)], model.device)
        key = calibration_key(model, size, "verify-chains" if args.sampling else "verify")
        resolved = choices.resolve(key, size, lambda: measure_draft_length(
            model, batch.input_ids, batch.attention_mask, trees=not args.sampling), again=True)
        print(f"batch {size}: num_draft_tokens='auto' -> {resolved.value} ({resolved.source})")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.show:
        show()
    else:
        again(args)
    return 0
