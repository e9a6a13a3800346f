# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Saving a recycle adapter: the module's weights (and LoRA weights on the base) and `adapter_config.json`.

The complete adapter is written into a staging folder beside the target, which then replaces the target folder by
renames (the old one is kept until the new one is in place), so an interrupted save leaves the previous adapter or the
new one, never a mixture. `RecycleGPTForCausalLM.save_adapter` is a thin entry to `save_recycle_adapter`, so this
file does not import the model file (that would close an import circle).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedModel

from .._version import __version__
from ..atomic import staged_folder
from ..checkpoint_code.configuration_recyclegpt import RECYCLE_SETTING_NAMES
from ..errors import InvalidInputError
from .config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LORA_PREFIX,
    MODULE_PREFIX,
    RecycleAdapterConfig,
    base_description,
)
from .lora import LORA_ADAPTER_NAME, base_lora_config


logger = logging.getLogger(__name__)


def adapter_state_dict(
    model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors an adapter holds: the module's weights and, with LoRA, the LoRA weights (prefixed `base_lm.`).

    `state_dict` is a full state dict of `model` gathered elsewhere (FSDP and DeepSpeed hand one to `Trainer._save`,
    where the model's own parameters are shards); by default the model's own tensors are used.
    """
    if state_dict is None:
        state_dict = model.state_dict()
    tensors = {name: tensor for name, tensor in state_dict.items() if name.startswith(MODULE_PREFIX)}
    if base_lora_config(model) is not None:
        base_state = {name[len(LORA_PREFIX) :]: t for name, t in state_dict.items() if name.startswith(LORA_PREFIX)}
        lora_tensors = get_peft_model_state_dict(model.base_lm, state_dict=base_state, adapter_name=LORA_ADAPTER_NAME)
        tensors.update({LORA_PREFIX + name: tensor for name, tensor in lora_tensors.items()})
    return {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}


def build_adapter_config(
    model: PreTrainedModel, base_model_name_or_path: str | None = None
) -> RecycleAdapterConfig:
    """The `adapter_config.json` of `model`'s adapter."""
    return RecycleAdapterConfig(
        base_model_name_or_path=base_model_name_or_path or model.base_lm.name_or_path or None,
        **base_description(model.base_lm),
        recycle_settings={name: getattr(model.config, name) for name in RECYCLE_SETTING_NAMES},
        dtype=str(next(model.recycle_module.parameters()).dtype).removeprefix("torch."),
        lora=base_lora_config(model),
        recycle_hf_version=__version__,
    )


def save_recycle_adapter(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """Write `model`'s adapter (`adapter_config.json` + `adapter_model.safetensors`) to `save_directory`.

    `state_dict` optionally gives the model's tensors (see `adapter_state_dict`). The new adapter is written to a
    folder beside `save_directory` that then takes its place (`recycle_hf.atomic.staged_folder`): whatever fails
    when, the folder holds the earlier adapter or the new one. Other files and folders in it (a README, Trainer
    checkpoints, ...) are carried into the new folder as hard links. With `push_to_hub=True` the two
    files are then uploaded to the Hub repository `repo_id` (default: the folder's name), created if needed.
    Returns the folder.
    """
    # By its parts, not its class: a model loaded with trust_remote_code is of the checkpoint's copy of the class.
    if not all(hasattr(model, name) for name in ("recycle_module", "base_lm", "config")):
        raise ValueError(f"save_recycle_adapter needs a RecycleGPTForCausalLM, got {type(model).__name__}.")
    save_directory = Path(save_directory)
    if save_directory.is_file():
        raise InvalidInputError(f"save_directory {save_directory} is a file; give a folder path.")
    adapter_config = build_adapter_config(model, base_model_name_or_path)
    with staged_folder(save_directory, replaced=_is_adapter_file) as staging:
        save_file(adapter_state_dict(model, state_dict), staging / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        adapter_config.to_json_file(staging / ADAPTER_CONFIG_NAME)
    logger.info("Saved recycle adapter to %s", save_directory)
    if push_to_hub:
        _push_adapter_folder(save_directory, repo_id or save_directory.name, commit_message, private, token)
    return save_directory


def _is_adapter_file(name: str) -> bool:
    return name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)


def _push_adapter_folder(
    folder: Path, repo_id: str, commit_message: str | None, private: bool | None, token: str | bool | None
) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME],
        commit_message=commit_message or "Upload recycle adapter",
        token=token,
    )
    logger.info("Uploaded recycle adapter to https://huggingface.co/%s", repo_id)


__all__ = ["adapter_state_dict", "build_adapter_config", "save_recycle_adapter"]
