# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The frozen base's final states over training blocks, computed once (and optionally cached on disk).

With a frozen base (head-only training) every epoch would recompute the same states; `BaseStateDataset` computes
them once so that each training step costs only the module. `recycle_hf.training` consumes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .atomic import staged_file
from .checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM, positions_from_attention_mask


logger = logging.getLogger(__name__)

FROZEN_BASE_ONLY = (
    "Precomputed base states only hold for a frozen base; with LoRA on the base, train on token blocks."
)


def base_is_trainable(model: RecycleGPTForCausalLM) -> bool:
    """Whether any base parameter trains (LoRA layers); a frozen base gives the same states in every epoch."""
    return any(parameter.requires_grad for parameter in model.base_lm.parameters())


class BaseStateDataset(Dataset):
    """Token blocks together with the frozen base's final states over them, computed once.

    With a frozen base every epoch would recompute the same states; storing them (float32, `hidden_size` floats
    per token) makes each training step cost only the module. Items are those of `blocks` plus `base_states`
    [block_size, hidden_size], which [`RecycleTrainingModel`] uses in place of a base forward. With a `cache_file`
    the states are also kept on disk, so that training several modules on the same data and base pays for the base
    once (on a CPU the base pass is most of a short run).
    """

    def __init__(self, blocks: Dataset, base_states: torch.Tensor):
        if len(blocks) != base_states.shape[0]:
            raise ValueError(f"{len(blocks)} blocks but states for {base_states.shape[0]}.")
        self.blocks = blocks
        self.base_states = base_states

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        model: RecycleGPTForCausalLM,
        blocks: Dataset,
        batch_size: int = 8,
        desc: str = "base states",
        cache_file: str | os.PathLike | None = None,
    ) -> BaseStateDataset:
        """Run `model`'s base over every block of `blocks` (items with `input_ids` and `attention_mask`).

        `cache_file` (a `.safetensors` path): states saved there by an earlier call are read back when they were
        computed over the same token blocks by the same base (weights, dtype; checked, not assumed); otherwise they
        are computed and written there.
        """
        if base_is_trainable(model):
            raise ValueError(FROZEN_BASE_ONLY)
        input_ids, attention_mask = _stacked_blocks(blocks)
        # Hashing the base reads every weight: only worth it when there is a cache to check or write.
        fingerprint = base_fingerprint(model) if cache_file is not None else None
        if cache_file is not None:
            cached = _read_cached_states(Path(cache_file), input_ids, attention_mask, fingerprint)
            if cached is not None:
                return cls(blocks, cached)
        was_training = model.base_lm.training
        model.base_lm.eval()
        device = model.get_output_embeddings().weight.device
        base_states: torch.Tensor | None = None
        for start in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
            batch_ids = input_ids[start : start + batch_size].to(device)
            batch_mask = attention_mask[start : start + batch_size].to(device)
            position_ids = positions_from_attention_mask(batch_mask, batch_ids.shape[1])
            states = model.base_step(batch_ids, batch_mask, position_ids, None)
            if base_states is None:
                # The LM head's input width (OPT-350m projects its states out to a narrower one).
                base_states = states.new_zeros(len(blocks), *states.shape[1:], dtype=torch.float32, device="cpu")
                logger.info("Computing the base's states once: %.0f MB", base_states.numel() * 4 / 2**20)
            base_states[start : start + len(batch_ids)] = states.float().cpu()
        model.base_lm.train(was_training)
        if cache_file is not None:
            _write_cached_states(Path(cache_file), input_ids, attention_mask, base_states, fingerprint)
        return cls(blocks, base_states)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.blocks[index], "base_states": self.base_states[index]}


def base_fingerprint(model: RecycleGPTForCausalLM) -> str:
    """A digest of the base's weights and dtype: cached states are reused only for the base that computed them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.base_lm.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _stacked_blocks(blocks: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [blocks[index] for index in range(len(blocks))]
    return torch.stack([item["input_ids"] for item in items]), torch.stack([item["attention_mask"] for item in items])


def _read_cached_states(
    path: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor, fingerprint: str
) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as cached:
        if (cached.metadata() or {}).get("base_fingerprint") != fingerprint:
            logger.info("Cached base states in %s are from another base; computing them again", path)
            return None
        if not (
            torch.equal(cached.get_tensor("input_ids"), input_ids)
            and torch.equal(cached.get_tensor("attention_mask"), attention_mask)
        ):
            logger.info("Cached base states in %s are for other token blocks; computing them again", path)
            return None
        logger.info("Base states read from %s", path)
        return cached.get_tensor("base_states")


def _write_cached_states(
    path: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor, base_states: torch.Tensor, fingerprint: str
) -> None:
    from safetensors.torch import save_file

    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "base_states": base_states}
    # Written beside the target and renamed: an interrupted run never leaves a half-written cache behind.
    with staged_file(path) as temporary:
        save_file(tensors, str(temporary), metadata={"base_fingerprint": fingerprint})
    logger.info("Base states saved to %s (%.0f MB)", path, base_states.numel() * 4 / 2**20)


__all__ = ["FROZEN_BASE_ONLY", "BaseStateDataset", "base_fingerprint", "base_is_trainable"]
