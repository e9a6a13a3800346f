"""Named model shapes: the paper's recyclegpt-1.3b and a tiny one for tests and examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig

from .configuration_recyclegpt import RecycleGPTConfig
from .modeling_recyclegpt import RecycleGPTForCausalLM


logger = logging.getLogger(__name__)


def _recyclegpt_1_3b() -> RecycleGPTConfig:
    # LLaMA-style 1.3B base as in the paper (24 layers, hidden 2048, 16 heads, vocab 32000); a 4-block module adds
    # about 15% parameters (each block plus the 2d->d projection is ~4.4% of the base).
    base = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return RecycleGPTConfig(base_config=base, recycle_num_layers=4)


def _tiny() -> RecycleGPTConfig:
    base = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return RecycleGPTConfig(base_config=base, recycle_num_layers=1)


PRESETS = {
    "recyclegpt-1.3b": (_recyclegpt_1_3b, torch.bfloat16),
    "tiny": (_tiny, torch.float32),
}


def preset_config(name: str) -> RecycleGPTConfig:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name][0]()


def init_preset(
    name: str, output_dir: str | os.PathLike, dtype: torch.dtype | None = None, seed: int = 0
) -> RecycleGPTForCausalLM:
    """Write a randomly initialised checkpoint of preset `name` (config, remote code, safetensors, generation
    config) to `output_dir` and return the model. It loads with
    `AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)`."""
    config = preset_config(name)
    dtype = dtype or PRESETS[name][1]
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
