"""Loading bases and recycle models from command-line style arguments (shared by the `recycle-hf` commands, the
benchmarks and lm-eval's `recyclegpt` model), and the rules every loader follows: the dtype names, what
`base="default"` means, and the pad token a tokenizer without one gets."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .adapter import ADAPTER_CONFIG_NAME, load_recycle_adapter, read_adapter_config, resolve_adapter_folder
from .checkpoint_code.configuration_recyclegpt import RecycleGPTCheckpointError
from .checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from .checkpoint_code.publishing_recyclegpt import check_safetensors_file
from .defaults import DEFAULT_ADAPTER_DIR, DEFAULT_BASE_NAME, load_default_base
from .errors import InputNotFoundError, InvalidInputError
from .local_folders import check_local_folder


logger = logging.getLogger(__name__)

DEFAULT_BASE = "default"
# The dtype names every command line and script accepts.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files one of which a folder with a tokenizer holds.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Loading also takes "auto": the dtype the weights were saved in.
_LOAD_DTYPES: dict[str, torch.dtype | str] = {**DTYPES, "auto": "auto"}


def base_model_name(base: str) -> str:
    """What `base` is called in results and adapters: `base="default"` is the embedded SmolLM2-135M-Instruct."""
    return DEFAULT_BASE_NAME if base == DEFAULT_BASE else str(base)


def default_adapter(base: str) -> str | None:
    """The adapter `base` loads with when none is named: for `base="default"` the shipped SmolLM2 module, for any
    other base None (each caller decides what a base without one means).

    Raises `InputNotFoundError` for the default base where this installation lacks the shipped module.
    """
    if base != DEFAULT_BASE:
        return None
    if not (DEFAULT_ADAPTER_DIR / ADAPTER_CONFIG_NAME).is_file():
        raise InputNotFoundError(
            f"This installation has no shipped SmolLM2 adapter ({DEFAULT_ADAPTER_DIR}); name an adapter folder "
            "(--adapter DIR, or adapter=DIR in lm-eval's model arguments)."
        )
    return str(DEFAULT_ADAPTER_DIR)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id to pad with: the tokenizer's pad token, else its EOS token (generation pads finished rows with it)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its EOS token as one (the rule of `pad_token_id`), for `padding=True`."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help="base causal LM: a folder or hub id, or 'default' for the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --base to load (dequantized)")
    parser.add_argument("--dtype", choices=sorted(_LOAD_DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _from_pretrained(load: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    # transformers raises OSError for what cannot be found or read (no such Hub repository, no network, a folder
    # without weights): a problem with the name given, reported as such.
    try:
        return load(name, **kwargs)
    except OSError as error:
        if isinstance(error, (InputNotFoundError, RecycleGPTCheckpointError)):
            raise
        raise InputNotFoundError(f"Could not load the {what} {name!r}: {error}") from error


def load_base(
    base: str = DEFAULT_BASE, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu",
    with_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A base causal LM and its tokenizer (None with `with_tokenizer=False`, for work that needs none);
    `base="default"` is the embedded SmolLM2-135M-Instruct."""
    torch_dtype = _LOAD_DTYPES[dtype]
    if base == DEFAULT_BASE:
        model, tokenizer = load_default_base(dtype=torch.float32 if torch_dtype == "auto" else torch_dtype)
    else:
        check_local_folder(base, "base", gguf_file or "config.json")
        # A truncated weights file would fail inside safetensors with a message that does not name it.
        for weights in sorted(Path(base).glob("*.safetensors")) if Path(base).is_dir() else ():
            check_safetensors_file(weights)
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, base, "base", dtype=torch_dtype, **extra)
        tokenizer = None
        if with_tokenizer:
            tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, base, "base's tokenizer", **extra)
    return model.to(device).eval(), ensure_pad_token(tokenizer) if tokenizer is not None else None


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
    with_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A RecycleGPT model and tokenizer: a merged checkpoint (`model`), or `base` plus `adapter` (the base's tokenizer
    only `with_tokenizer`)."""
    if model is not None:
        check_local_folder(model, "model", "config.json")
        recycle_model = _from_pretrained(
            RecycleGPTForCausalLM.from_pretrained, model, "model", dtype=_LOAD_DTYPES[dtype]
        )
        if Path(model).is_dir() and not any((Path(model) / name).is_file() for name in _TOKENIZER_FILES):
            raise InputNotFoundError(
                f"The model folder {model} has no tokenizer (`recycle-hf init` writes none): save the tokenizer of "
                f"its vocabulary there, e.g. AutoTokenizer.from_pretrained(BASE).save_pretrained('{model}')."
            )
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, model, "model's tokenizer")
        return recycle_model.to(device).eval(), ensure_pad_token(tokenizer)

    # Checked before the base loads, which can take minutes.
    if adapter is None:
        adapter = default_adapter(base)
        if adapter is None:
            raise InvalidInputError(
                "--base needs --adapter (a recycle adapter folder), or pass --model for a full checkpoint."
            )
    adapter_folder = resolve_adapter_folder(adapter)
    read_adapter_config(adapter_folder)
    base_model, tokenizer = load_base(base, gguf_file, dtype, device, with_tokenizer=with_tokenizer)
    recycle_model = load_recycle_adapter(base_model, adapter_folder)
    return recycle_model.to(device).eval(), tokenizer


def load_recycle_model_from_args(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_recycle_model(args.model, args.base, args.adapter, args.gguf_file, args.dtype, args.device)
