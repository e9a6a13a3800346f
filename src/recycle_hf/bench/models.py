# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The model under test: a checkpoint, a base with its module (loaded by `recycle_hf.loading`), or a random shape."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import OPTConfig, PreTrainedTokenizerBase

from ..checkpoint_code.configuration_recyclegpt import RecycleGPTConfig
from ..checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from ..graft import DEFAULT_GRAFT_INIT, graft_recycle_module
from ..loading import DTYPES, base_model_name, default_adapter, load_base, load_recycle_model
from ..presets import PRESETS, llama_recycle_config, preset_config


logger = logging.getLogger(__name__)

# LLaMA-7B's dimensions (Touvron et al. 2023), put on the recyclegpt-1.3b preset.
LLAMA_7B_DIMENSIONS = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=32, max_position_embeddings=4096)
# facebook/opt-1.3b's shape: LayerNorm, learned positions, tied embeddings, OPT's special tokens.
OPT_1_3B_CONFIG = dict(vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                       word_embed_proj_dim=2048, max_position_embeddings=2048, do_layer_norm_before=True,
                       bos_token_id=2, eos_token_id=2, pad_token_id=1)


def _llama_7b_shape() -> RecycleGPTConfig:
    preset = PRESETS["recyclegpt-1.3b"]
    return llama_recycle_config({**preset.base_dimensions, **LLAMA_7B_DIMENSIONS}, preset.recycle_num_layers)


def _opt_1_3b_shape() -> RecycleGPTConfig:
    return RecycleGPTConfig(base_config=OPTConfig(**OPT_1_3B_CONFIG), recycle_num_layers=4)


# Random-initialised shapes for speed only: alternating-mode speed does not depend on the weights. The `tiny` shape
# exists to check the harness quickly. Every LLaMA-style shape has the same 4-block module.
BENCHMARK_SHAPES: dict[str, Callable[[], RecycleGPTConfig]] = {
    "llama-1.3b": functools.partial(preset_config, "recyclegpt-1.3b"),
    "llama-7b": _llama_7b_shape,
    "opt-1.3b": _opt_1_3b_shape,
    "tiny": functools.partial(preset_config, "tiny"),
}


@dataclass
class BenchmarkModel:
    """The model under test, its tokenizer (None for random shapes) and how it was obtained (recorded in results)."""

    model: RecycleGPTForCausalLM
    tokenizer: PreTrainedTokenizerBase | None
    description: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return self.model.device


def generation_setting(model: RecycleGPTForCausalLM, name: str) -> Any:
    """`name` (e.g. "pad_token_id") from the first of the model's generation config, its base's, and the base's
    config that sets it; None where none does."""
    for source in (model.generation_config, model.base_lm.generation_config, model.config.base_config):
        value = getattr(source, name, None)
        if value is not None:
            return value
    return None


def build_shape_model(
    shape: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> RecycleGPTForCausalLM:
    """A randomly initialised RecycleGPT model of a benchmark shape, built directly on `device` in `dtype`."""
    if shape not in BENCHMARK_SHAPES:
        raise ValueError(f"Unknown shape {shape!r}. Available shapes: {', '.join(sorted(BENCHMARK_SHAPES))}.")
    config = BENCHMARK_SHAPES[shape]()
    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    # Building in place avoids a float32 copy on the CPU first (28 GB for the 7B shape).
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = RecycleGPTForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model = model.to(device=device, dtype=dtype).eval()
    for generation_config in (model.generation_config, model.base_lm.generation_config):
        generation_config.bos_token_id = config.base_config.bos_token_id
        generation_config.eos_token_id = config.base_config.eos_token_id
        generation_config.pad_token_id = config.base_config.pad_token_id
    return model


def load_benchmark_model(
    model: str | None = None, base: str | None = None, adapter: str | None = None, shape: str | None = None,
    dtype: str | None = None, device: str = "cpu", seed: int = 0,
) -> BenchmarkModel:
    """The model to benchmark: a RecycleGPT checkpoint (`model`), a base plus an adapter (`base`, `adapter`), or a
    random shape (`shape`). Exactly one of `model`, `base`, `shape` must be given.

    A base without `adapter` gets the adapter `recycle_hf.loading.default_adapter` names (the shipped module for
    `base="default"`); any other base gets an untrained module, which measures the harness, not the module.
    `dtype` defaults to bfloat16 for shapes and float32 otherwise.
    """
    if sum(choice is not None for choice in (model, base, shape)) != 1:
        raise ValueError("Give exactly one of --model (checkpoint folder), --base (base model) or --shape.")
    if adapter is not None and base is None:
        raise ValueError("--adapter goes with --base (the model the adapter was trained for).")
    dtype_name = dtype or ("bfloat16" if shape is not None else "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype_name!r}; choose one of {', '.join(DTYPES)}.")

    if shape is not None:
        recycle_model = build_shape_model(shape, DTYPES[dtype_name], device, seed)
        tokenizer = None
        description = {"name": shape, "source": f"random init (shape {shape!r}, seed {seed})", "module": "random init"}
    elif model is not None:
        recycle_model, tokenizer = load_recycle_model(model=model, dtype=dtype_name, device=device)
        description = {"name": str(model), "source": "RecycleGPT checkpoint", "module": f"from checkpoint {model}"}
    else:
        recycle_model, tokenizer, description = _load_base_with_module(base, adapter, dtype_name, device, seed)
    recycle_model.eval()
    description.update(
        dtype=dtype_name,
        device=str(device),
        base_parameters=sum(p.numel() for p in recycle_model.base_lm.parameters()),
        module_parameters=sum(p.numel() for p in recycle_model.recycle_module.parameters()),
        base_model_type=recycle_model.config.base_config.model_type,
    )
    return BenchmarkModel(recycle_model, tokenizer, description)


def _load_base_with_module(
    base: str, adapter: str | None, dtype_name: str, device: str, seed: int
) -> tuple[RecycleGPTForCausalLM, PreTrainedTokenizerBase, dict[str, Any]]:
    adapter = adapter if adapter is not None else default_adapter(base)
    if adapter is not None:
        recycle_model, tokenizer = load_recycle_model(base=base, adapter=adapter, dtype=dtype_name, device=device)
        module = f"trained adapter {adapter}"
    else:
        logger.warning(
            "No recycle adapter for base %r: grafting an UNTRAINED module. Speeds of the alternating mode are "
            "representative; acceptance and verify-mode speed are not. Pass --adapter DIR for real numbers.",
            base,
        )
        base_model, tokenizer = load_base(base, dtype=dtype_name, device=device)
        torch.manual_seed(seed)  # the fresh module's random part
        recycle_model = graft_recycle_module(base_model)
        module = f"untrained (freshly grafted, init={DEFAULT_GRAFT_INIT!r})"
    return recycle_model, tokenizer, {"name": base_model_name(base), "source": f"base {base!r}", "module": module}
