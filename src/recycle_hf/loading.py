"""Loading bases and recycle models from command-line style arguments (shared by the `recycle-hf` commands)."""

from __future__ import annotations

import argparse
import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .defaults import DEFAULT_ADAPTER_DIR, load_default_base


logger = logging.getLogger(__name__)

DEFAULT_BASE = "default"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help="base causal LM: a folder or hub id, or 'default' for the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --base to load (dequantized)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def load_base(
    base: str = DEFAULT_BASE, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A base causal LM and its tokenizer; `base="default"` is the embedded SmolLM2-135M-Instruct."""
    torch_dtype = _DTYPES[dtype]
    if base == DEFAULT_BASE:
        model, tokenizer = load_default_base(dtype=torch.float32 if torch_dtype == "auto" else torch_dtype)
    else:
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(base, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def load_base_from_args(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_base(args.base, args.gguf_file, args.dtype, args.device)


def add_recycle_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_arguments(parser)
    parser.add_argument("--model", default=None, help="a RecycleGPT checkpoint folder or hub id (instead of --base)")
    parser.add_argument(
        "--adapter",
        default=None,
        help="recycle adapter folder to load onto --base (default with --base default: the shipped SmolLM2 module)",
    )


def load_recycle_model(
    model: str | None = None,
    base: str = DEFAULT_BASE,
    adapter: str | None = None,
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A RecycleGPT model and tokenizer: a merged checkpoint (`model`), or `base` plus `adapter`."""
    if model is not None:
        from . import RecycleGPTForCausalLM

        recycle_model = RecycleGPTForCausalLM.from_pretrained(model, dtype=_DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return recycle_model.to(device).eval(), tokenizer
    from .adapter import load_recycle_adapter

    base_model, tokenizer = load_base(base, gguf_file, dtype, device)
    if adapter is None:
        if base != DEFAULT_BASE:
            raise ValueError("--base needs --adapter (a recycle adapter folder), or pass --model for a full checkpoint.")
        adapter = str(DEFAULT_ADAPTER_DIR)
    recycle_model = load_recycle_adapter(base_model, adapter)
    return recycle_model.to(device).eval(), tokenizer


def load_recycle_model_from_args(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_recycle_model(args.model, args.base, args.adapter, args.gguf_file, args.dtype, args.device)
