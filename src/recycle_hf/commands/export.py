"""`recycle-hf export vllm`: a trained recycle module as a draft folder vLLM serves (speculative method "eagle")."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..adapter import merge_base_lora, read_adapter_config, resolve_adapter_folder
from ..defaults import default_base_folder
from ..errors import InvalidInputError
from ..loading import DEFAULT_BASE, default_adapter, load_recycle_model
from . import positive_int


HELP = "Export a trained recycle module for a serving engine: `recycle-hf export vllm --output DIR`."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("engine", choices=["vllm"], help="the engine to export for")
    parser.add_argument("--base", default=None,
                        help="the base (a plain folder of its family) the adapter was trained on; 'default' or none "
                             "with neither --base nor --model: the embedded SmolLM2 with its shipped module")
    parser.add_argument("--adapter", default=None, help="recycle adapter folder trained on --base")
    parser.add_argument("--model", default=None, help="a merged RecycleGPT checkpoint (its base is written too)")
    parser.add_argument("--output", required=True, help="the draft folder to write")
    parser.add_argument("--base-output", default=None,
                        help="with --model (or LoRA on the base): where the plain base goes (default OUTPUT-base)")
    parser.add_argument("--num-speculative-tokens", type=positive_int, default=3,
                        help="k in the serve command the folder's README shows (default 3)")


def run(args: argparse.Namespace) -> int:
    from ..integrations.vllm_export import export_for_vllm

    if args.model is not None and (args.base is not None or args.adapter is not None):
        raise InvalidInputError("Pass either --model (a merged checkpoint) or --base with --adapter, not both.")
    if Path(args.output).is_file():
        raise InvalidInputError(f"--output {args.output} is a file; give a folder path for the draft.")
    base = args.base or DEFAULT_BASE
    if args.model is None:
        adapter = args.adapter or default_adapter(base)
        if adapter is None:
            raise InvalidInputError(f"--base {base} needs --adapter (a trained recycle adapter folder): there is no "
                                    "trained module to export.")
        adapter_config = read_adapter_config(resolve_adapter_folder(adapter))
        # A base that LoRA trained with the module is not the plain base any more: it is written as a folder too
        # (with its tokenizer); otherwise vLLM serves the base folder as it is, tokenizer or not.
        writes_base = adapter_config.lora is not None
        model, tokenizer = load_recycle_model(base=base, adapter=adapter, with_tokenizer=writes_base)
        source = "the shipped SmolLM2 module" if args.adapter is None else f"{adapter} on {base}"
        target = None if writes_base else (default_base_folder() if base == DEFAULT_BASE else base)
        if writes_base:
            model = merge_base_lora(model)
    else:  # a merged checkpoint never carries unmerged LoRA (save_pretrained refuses it)
        model, tokenizer = load_recycle_model(model=args.model)
        source, target = args.model, None
    result = export_for_vllm(model, tokenizer, args.output, source, target, args.base_output,
                             args.num_speculative_tokens)
    print(f"Wrote the draft folder {result.draft_folder}; vLLM serves it against the base {result.target_folder}:")
    print(f"    {result.serve_command}")
    print("(recycle-hf must be installed where vLLM runs: its plugin registers the drafter.)")
    return 0
