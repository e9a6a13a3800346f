# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Loading a recycle adapter onto an unchanged base: everything is checked (the base, every tensor name and shape)
before anything changes, and only safetensors are read."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel

from ..checkpoint_code.configuration_recyclegpt import RECYCLE_SETTING_NAMES
from ..checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from ..checkpoint_code.publishing_recyclegpt import check_safetensors_file
from ..errors import InputNotFoundError, InvalidInputError
from ..graft import check_graftable_base, graft_recycle_module
from ..local_folders import check_local_folder
from .config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LORA_PREFIX,
    MODULE_PREFIX,
    RecycleAdapterConfig,
    check_adapter_matches_base,
)
from .lora import LORA_ADAPTER_NAME, add_base_lora, base_lora_config, lora_tensor_shapes


logger = logging.getLogger(__name__)

# Weight files that would be unpickled to load: refused, whatever their name says.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def resolve_adapter_folder(adapter_name_or_path: str | os.PathLike, token: str | bool | None = None) -> Path:
    """A local adapter folder, or the two adapter files of a Hub repository downloaded to the local cache."""
    path = Path(adapter_name_or_path)
    check_local_folder(str(adapter_name_or_path), "adapter", ADAPTER_CONFIG_NAME)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            str(adapter_name_or_path), allow_patterns=[ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME], token=token
        )
    except Exception as error:  # missing repo, no network, no access: all mean "not found" to the caller
        raise InputNotFoundError(
            f"{adapter_name_or_path!r} is neither a local adapter folder nor a Hub repository that could be "
            f"downloaded ({type(error).__name__}: {error})."
        ) from error
    return Path(folder)


def read_adapter_config(folder: str | os.PathLike) -> RecycleAdapterConfig:
    """`adapter_config.json` of a recycle adapter folder, checked; refuses folders whose weights are pickled.

    Raises `InvalidInputError` (a ValueError) naming the file when it is not a JSON object, not a recycle adapter, in
    a newer format than this package reads, or has malformed fields; unknown keys are logged and ignored
    (`RecycleAdapterConfig.from_dict`).
    """
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS_NAME).is_file():
        pickled = sorted(path.name for path in folder.glob("*") if path.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise InvalidInputError(
                f"{folder} has pickled weights ({', '.join(pickled)}) and no {ADAPTER_WEIGHTS_NAME}. Pickle files can "
                "run code when loaded, so recycle-hf reads safetensors only; convert the weights to safetensors."
            )
        raise InputNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS_NAME}; it is not a (complete) recycle adapter.")
    if not (folder / ADAPTER_CONFIG_NAME).is_file():
        raise InputNotFoundError(f"{folder} has no {ADAPTER_CONFIG_NAME}; it is not a (complete) recycle adapter.")
    return RecycleAdapterConfig.from_json_file(folder / ADAPTER_CONFIG_NAME)


def _load_adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of `folder`'s weights file; a damaged or truncated file gets an error that names it."""
    path = folder / ADAPTER_WEIGHTS_NAME
    check_safetensors_file(path)
    try:
        return load_file(path)
    except SafetensorError as error:
        raise InvalidInputError(
            f"{path} is not a readable safetensors file ({error}); save or download it again."
        ) from error


def _check_tensor_names_and_shapes(kind: str, expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(
        f"{name} {tuple(found[name].shape)} != {tuple(shape)}"
        for name, shape in expected.items()
        if name in found and found[name].shape != shape
    )
    if missing or unexpected or wrong_shape:
        details = [
            f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if names
        ]
        raise InvalidInputError(f"The adapter's {kind} weights do not fit this model ({'; '.join(details)}).")


def _split_adapter_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    module_tensors = {name[len(MODULE_PREFIX) :]: t for name, t in tensors.items() if name.startswith(MODULE_PREFIX)}
    lora_tensors = {name[len(LORA_PREFIX) :]: t for name, t in tensors.items() if name.startswith(LORA_PREFIX)}
    stray = sorted(set(tensors) - {MODULE_PREFIX + n for n in module_tensors} - {LORA_PREFIX + n for n in lora_tensors})
    if stray:
        raise InvalidInputError(
            f"The adapter holds tensors that belong to neither the module nor LoRA: {', '.join(stray[:5])}."
        )
    return module_tensors, lora_tensors


def load_adapter_weights(model: RecycleGPTForCausalLM, adapter_folder: str | os.PathLike) -> None:
    """Load an adapter's weights into a model that already has the matching module (and LoRA layers, if any).

    Everything is checked before any weight is copied. Used to resume training from a checkpoint folder.
    """
    adapter_config = read_adapter_config(adapter_folder)
    check_adapter_matches_base(adapter_config, model.base_lm)
    module_tensors, lora_tensors = _split_adapter_tensors(_load_adapter_tensors(Path(adapter_folder)))
    expected_module = {name: tensor.shape for name, tensor in model.recycle_module.state_dict().items()}
    _check_tensor_names_and_shapes("module", expected_module, module_tensors)
    lora_config = base_lora_config(model)
    if (lora_config is None) != (adapter_config.lora is None):
        has, lacks = ("the adapter", "the model") if lora_config is None else ("the model", "the adapter")
        raise InvalidInputError(f"LoRA mismatch: {has} has LoRA weights on the base and {lacks} has none.")
    if lora_config is not None:
        expected_lora = {
            name: tensor.shape
            for name, tensor in get_peft_model_state_dict(model.base_lm, adapter_name=LORA_ADAPTER_NAME).items()
        }
        _check_tensor_names_and_shapes("LoRA", expected_lora, lora_tensors)
        set_peft_model_state_dict(model.base_lm, lora_tensors, adapter_name=LORA_ADAPTER_NAME)
    model.recycle_module.load_state_dict(module_tensors, strict=True)


def load_recycle_adapter(
    base_model: PreTrainedModel,
    adapter_name_or_path: str | os.PathLike,
    is_trainable: bool = False,
    token: str | bool | None = None,
) -> RecycleGPTForCausalLM:
    r"""
    Load a recycle adapter onto `base_model` and return the [`RecycleGPTForCausalLM`] that wraps it.

    Args:
        base_model (`PreTrainedModel`): the plain causal LM the adapter was trained on. Its weights are used as they
            are (not copied); with LoRA in the adapter, LoRA layers are injected into it in place.
        adapter_name_or_path (`str` or `os.PathLike`): an adapter folder, or a Hub repository holding one.
        is_trainable (`bool`, defaults to False): leave the module (and LoRA) trainable, to continue training. By
            default the model is returned in eval mode with nothing trainable.

    The module is built in the base's dtype (it reads the base's states and feeds its LM head); weights stored in
    another dtype (the adapter's `dtype`) are cast to it.

    Raises:
        ValueError: the base differs from the adapter's (architecture, hidden size, vocabulary), a tensor does not fit,
            `adapter_config.json` is malformed or in a newer format, the weights file is damaged, or the folder holds
            pickled weights (an `InvalidInputError`). Nothing is loaded then, and `base_model` is left unchanged.
        FileNotFoundError: the folder, or one of its two files, does not exist (an `InputNotFoundError`).
    """
    check_graftable_base(base_model)
    folder = resolve_adapter_folder(adapter_name_or_path, token=token)
    adapter_config = read_adapter_config(folder)
    check_adapter_matches_base(adapter_config, base_model)
    module_tensors, lora_tensors = _split_adapter_tensors(_load_adapter_tensors(folder))

    settings = dict(adapter_config.recycle_settings or {})
    unknown = sorted(set(settings) - set(RECYCLE_SETTING_NAMES))
    if unknown:
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG_NAME}: unknown module settings {', '.join(unknown)}.")
    num_layers = settings.pop("recycle_num_layers", 1)
    try:
        model = graft_recycle_module(base_model, num_layers=num_layers, init="random", freeze_base=False, **settings)
    except ValueError as error:  # the config's validation of the recorded settings
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG_NAME}: the module settings do not fit ({error})") from error
    expected_module = {name: tensor.shape for name, tensor in model.recycle_module.state_dict().items()}
    _check_tensor_names_and_shapes("module", expected_module, module_tensors)

    lora_config = adapter_config.lora
    if lora_config is None and lora_tensors:
        raise InvalidInputError(f"{folder}: the weights hold LoRA tensors but adapter_config.json has no 'lora' entry.")
    if lora_config is not None:
        _check_tensor_names_and_shapes("LoRA", lora_tensor_shapes(base_model, lora_config), lora_tensors)
        add_base_lora(model, lora_config)
        set_peft_model_state_dict(model.base_lm, lora_tensors, adapter_name=LORA_ADAPTER_NAME)

    stored_dtype, module_dtype = adapter_config.dtype, next(model.recycle_module.parameters()).dtype
    if stored_dtype is not None and getattr(torch, stored_dtype) != module_dtype:
        logger.info("The adapter's %s weights are cast to the base's %s.", stored_dtype, module_dtype)
    model.recycle_module.load_state_dict(module_tensors, strict=True)
    model.base_lm.requires_grad_(False)
    if is_trainable:
        model.recycle_module.requires_grad_(True)
        for name, parameter in model.base_lm.named_parameters():
            parameter.requires_grad_("lora_" in name)
        return model.train()
    model.requires_grad_(False)
    return model.eval()


__all__ = ["load_adapter_weights", "load_recycle_adapter", "read_adapter_config", "resolve_adapter_folder"]
