"""Shared fixtures: tiny random bases of each tested family, and the real SmolLM2-135M loaded once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    Qwen2Config,
)

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM


# num_draft_tokens="auto" keeps what it measured in a file: the tests' own, never the user's ~/.cache.
os.environ["RECYCLE_HF_CALIBRATION"] = os.path.join(tempfile.mkdtemp(prefix="recycle-hf-tests-"), "draft_lengths.json")


VOCAB_SIZE = 101
# Slices of the benchmark files for the `*_local` eval tasks; provenance and licences in its MANIFEST.md.
TEST_DATA_DIR = Path(__file__).resolve().parent / "data"
PAD, EOS, BOS = 0, 1, 2


def tiny_base_config(family: str, **overrides) -> PretrainedConfig:
    """A 2-layer random base of `family`; EOS is a token the tests choose to make reachable or not."""
    common = dict(vocab_size=VOCAB_SIZE, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
    if family == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, **common)
    elif family == "opt":
        config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           word_embed_proj_dim=32, max_position_embeddings=512, **common)
    elif family == "opt-350m-style":
        config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           word_embed_proj_dim=16, do_layer_norm_before=False, max_position_embeddings=512, **common)
    elif family == "qwen2":
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, **common)
    elif family == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=512, **common)
    elif family == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    else:
        raise ValueError(family)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def tiny_recycle_model(family: str, seed: int = 0, **recycle_settings) -> RecycleGPTForCausalLM:
    torch.manual_seed(seed)
    config = RecycleGPTConfig(base_config=tiny_base_config(family), **recycle_settings)
    return RecycleGPTForCausalLM(config).eval()


def tiny_base_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_base_config(family)).eval()


def save_tiny_base_with_tokenizer(folder: Path, **config_overrides) -> None:
    """A tiny random LLaMA base (seed 0) and a word-level tokenizer ("t3" .. "t100" are tokens 3 .. 100) in `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, **{f"t{index}": index for index in range(3, VOCAB_SIZE)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="t3"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_base_config("llama", **config_overrides)).save_pretrained(folder)


def left_padded_batch(prompt_lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts (tokens 3.., never PAD/EOS/BOS) left-padded to the longest."""
    generator = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    input_ids = torch.full((len(prompt_lengths), width), PAD, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(prompt_lengths):
        input_ids[row, width - length :] = torch.randint(3, VOCAB_SIZE, (length,), generator=generator)
        attention_mask[row, width - length :] = 1
    return input_ids, attention_mask


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct checkpoint, fp32, loaded once per session."""
    from recycle_hf.defaults import load_default_base

    return load_default_base()


# The start of a script for a fresh interpreter in which recycle_hf cannot be imported, as on a machine that
# downloaded a checkpoint and has only torch and transformers: append the script's own lines.
WITHOUT_RECYCLE_HF = """import builtins
real_import = builtins.__import__
def guarded_import(name, *args, **kwargs):
    if name == "recycle_hf" or name.startswith("recycle_hf."):
        raise ImportError("recycle_hf is blocked in this process")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded_import
"""
