"""Named model shapes: the paper's recyclegpt-1.3b and a tiny one for tests and examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import GenerationConfig, LlamaConfig

from .checkpoint_code.configuration_recyclegpt import RecycleGPTConfig
from .checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM


logger = logging.getLogger(__name__)


# LLaMA's special token ids, shared by every LLaMA-style shape.
LLAMA_SPECIAL_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


class Preset(NamedTuple):
    base_dimensions: dict[str, Any]  # of the LLaMA-style base (`LlamaConfig` arguments)
    recycle_num_layers: int
    dtype: torch.dtype  # of the checkpoint `init_preset` writes


# A table of shapes, as gpt-fast's `transformer_configs`. recyclegpt-1.3b is the paper's LLaMA-style base (24 layers,
# hidden 2048, 16 heads, vocab 32000); its 4-block module adds about 15% parameters (each block plus the 2d->d
# projection is ~4.4% of the base).
PRESETS: dict[str, Preset] = {
    "recyclegpt-1.3b": Preset(dict(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                                   num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                                   tie_word_embeddings=False), recycle_num_layers=4, dtype=torch.bfloat16),
    "tiny": Preset(dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=True), recycle_num_layers=1, dtype=torch.float32),
}


def llama_recycle_config(base_dimensions: dict[str, Any], recycle_num_layers: int) -> RecycleGPTConfig:
    """A RecycleGPT config on a LLaMA-style base of `base_dimensions`, with LLaMA's special tokens."""
    base = LlamaConfig(**{**LLAMA_SPECIAL_TOKENS, **base_dimensions})
    return RecycleGPTConfig(base_config=base, recycle_num_layers=recycle_num_layers)


def preset_config(name: str) -> RecycleGPTConfig:
    """The config of preset `name` (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(sorted(PRESETS))}.")
    return llama_recycle_config(PRESETS[name].base_dimensions, PRESETS[name].recycle_num_layers)


def init_preset(
    name: str, output_dir: str | os.PathLike, dtype: torch.dtype | None = None, seed: int = 0
) -> RecycleGPTForCausalLM:
    """Write a randomly initialised checkpoint of preset `name` (config, remote code, safetensors, generation
    config) to `output_dir` and return the model. It loads with
    `AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)`."""
    config = preset_config(name)
    dtype = dtype or PRESETS[name].dtype
    torch.manual_seed(seed)
    model = RecycleGPTForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    base_parameters = sum(p.numel() for p in model.base_lm.parameters())
    module_parameters = sum(p.numel() for p in model.recycle_module.parameters())
    logger.info(
        "Preset %s: base %.1fM parameters, recyclable module %.1fM (+%.1f%%)",
        name,
        base_parameters / 1e6,
        module_parameters / 1e6,
        100 * module_parameters / base_parameters,
    )
    model.save_pretrained(Path(output_dir))
    return model
