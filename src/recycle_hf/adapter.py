# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Recycle adapters, PEFT-style: the recyclable module's weights (and optional LoRA weights on the base) in a small
folder that loads onto an unchanged base model.

An adapter folder holds two files:
- `adapter_config.json`: the base it was trained on (name or path, `model_type`, architecture class, hidden and
  vocabulary sizes), the module settings, the recycle-hf version and, when LoRA was trained with the module, the
  peft `LoraConfig`;
- `adapter_model.safetensors`: `recycle_module.*` tensors, plus `base_lm.*lora_*` tensors with LoRA. Never a base
  weight.

`format_version` (absent in the first adapters: 1) is the layout of these files; an adapter in a newer format than
this package reads is refused with a hint to upgrade, and unknown keys are logged and ignored. `dtype` is the dtype the
weights are stored in (the shipped module is float16 to halve the file); loading casts them to the base's dtype,
which the module must share because it reads the base's states and feeds its LM head.

Saving writes the complete adapter into a staging folder beside the target, which then replaces the target folder by
renames (the old one is kept until the new one is in place), so an interrupted save leaves the previous adapter or the
new one, never a mixture. Loading checks the base and every tensor name and shape before it changes anything, and
only reads safetensors.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from .atomic import staged_folder
from .graft import check_graftable_base, graft_recycle_module
from .errors import InputNotFoundError, InvalidInputError
from .modeling_recyclegpt import RecycleGPTForCausalLM, check_safetensors_file


logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPE = "recyclegpt"
MODULE_PREFIX = "recycle_module."
LORA_PREFIX = "base_lm."
# The module settings an adapter records: exactly the RecycleGPTConfig fields that shape the module.
RECYCLE_SETTING_NAMES = (
    "recycle_num_layers",
    "recycle_num_attention_heads",
    "recycle_num_key_value_heads",
    "recycle_intermediate_size",
    "recycle_loss_weight",
    "recycle_draft_vocab_size",
)
# Weight files that would be unpickled to load: refused, whatever their name says.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The layout of the adapter files that this version writes and the newest it reads; raise it on incompatible changes.
ADAPTER_FORMAT_VERSION = 1
_ADAPTER_CONFIG_KEYS = {
    "adapter_type", "format_version", "recycle_hf_version", "base_model_name_or_path", "base_model_type",
    "base_architecture", "hidden_size", "vocab_size", "recycle_settings", "dtype", "lora",
}
_LORA_ADAPTER_NAME = "default"


# --------------------------------------------------------------------------------------------------------------------
# LoRA on the base


def add_base_lora(model: RecycleGPTForCausalLM, lora_config: LoraConfig) -> RecycleGPTForCausalLM:
    """Inject trainable LoRA layers into `model.base_lm` in place (peft's `inject_adapter_in_model`).

    The base stays a plain `*ForCausalLM` whose targeted linear layers now carry LoRA weights, so the model's
    forward and decoding modes are unchanged; only the LoRA weights and the module train. Returns `model`.
    """
    if base_lora_config(model) is not None:
        raise ValueError("The base already carries LoRA layers; merge them first with merge_base_lora(model).")
    if lora_config.modules_to_save:
        raise ValueError(
            "lora_config.modules_to_save is not supported: the recyclable module is saved with the adapter already; "
            "leave modules_to_save unset."
        )
    inject_adapter_in_model(lora_config, model.base_lm, adapter_name=_LORA_ADAPTER_NAME)
    return model


def base_lora_config(model: RecycleGPTForCausalLM) -> LoraConfig | None:
    """The `LoraConfig` of the LoRA layers in `model.base_lm`, or None when the base has none."""
    peft_config = getattr(model.base_lm, "peft_config", None)
    return peft_config.get(_LORA_ADAPTER_NAME) if isinstance(peft_config, dict) else None


@torch.no_grad()
def merge_base_lora(model: RecycleGPTForCausalLM) -> RecycleGPTForCausalLM:
    """Fold the LoRA weights into the base's weights and remove the LoRA layers; returns `model`.

    Do this before `model.save_pretrained` to write a standalone checkpoint of a model trained with LoRA.
    """
    lora_layers = [(name, module) for name, module in model.base_lm.named_modules() if isinstance(module, LoraLayer)]
    for name, lora_layer in lora_layers:
        lora_layer.merge()
        parent_name, _, child_name = name.rpartition(".")
        parent = model.base_lm.get_submodule(parent_name) if parent_name else model.base_lm
        setattr(parent, child_name, lora_layer.get_base_layer())
    if hasattr(model.base_lm, "peft_config"):
        del model.base_lm.peft_config
    return model


def _lora_config_to_dict(lora_config: LoraConfig) -> dict[str, Any]:
    def to_json(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, dict):
            return {key: to_json(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [to_json(item) for item in value]
        return value

    return to_json(lora_config.to_dict())


def _lora_config_from_dict(values: dict[str, Any]) -> LoraConfig:
    field_names = {field.name for field in dataclasses.fields(LoraConfig)}
    return LoraConfig(**{name: value for name, value in values.items() if name in field_names})


# --------------------------------------------------------------------------------------------------------------------
# Saving


def adapter_state_dict(
    model: RecycleGPTForCausalLM, state_dict: dict[str, torch.Tensor] | None = None
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
        lora_tensors = get_peft_model_state_dict(model.base_lm, state_dict=base_state, adapter_name=_LORA_ADAPTER_NAME)
        tensors.update({LORA_PREFIX + name: tensor for name, tensor in lora_tensors.items()})
    return {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}


def _base_description(base_model: PreTrainedModel) -> dict[str, Any]:
    """What an adapter must match in a base: architecture, hidden size and vocabulary."""
    config = base_model.config
    return {
        "base_model_type": config.model_type,
        "base_architecture": type(base_model).__name__,
        "hidden_size": config.hidden_size,
        "vocab_size": base_model.get_input_embeddings().weight.shape[0],
    }


def build_adapter_config(model: RecycleGPTForCausalLM, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The content of `adapter_config.json` for `model`."""
    from . import __version__

    lora_config = base_lora_config(model)
    return {
        "adapter_type": ADAPTER_TYPE,
        "format_version": ADAPTER_FORMAT_VERSION,
        "recycle_hf_version": __version__,
        "base_model_name_or_path": base_model_name_or_path or model.base_lm.name_or_path or None,
        **_base_description(model.base_lm),
        "recycle_settings": {name: getattr(model.config, name) for name in RECYCLE_SETTING_NAMES},
        "dtype": str(next(model.recycle_module.parameters()).dtype).removeprefix("torch."),
        "lora": _lora_config_to_dict(lora_config) if lora_config is not None else None,
    }


def save_recycle_adapter(
    model: RecycleGPTForCausalLM,
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
    if not isinstance(model, RecycleGPTForCausalLM):
        raise ValueError(f"save_recycle_adapter needs a RecycleGPTForCausalLM, got {type(model).__name__}.")
    save_directory = Path(save_directory)
    if save_directory.is_file():
        raise InvalidInputError(f"save_directory {save_directory} is a file; give a folder path.")
    adapter_config = build_adapter_config(model, base_model_name_or_path)
    with staged_folder(save_directory, replaced=_is_adapter_file) as staging:
        save_file(adapter_state_dict(model, state_dict), staging / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
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


# --------------------------------------------------------------------------------------------------------------------
# Loading


def resolve_adapter_folder(adapter_name_or_path: str | os.PathLike, token: str | bool | None = None) -> Path:
    """A local adapter folder, or the two adapter files of a Hub repository downloaded to the local cache."""
    from .loading import check_local_folder

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


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`adapter_config.json` of a recycle adapter folder, checked; refuses folders whose weights are pickled.

    Raises `InvalidInputError` (a ValueError) naming the file when it is not a JSON object, not a recycle adapter, in
    a newer format than this package reads, or has malformed fields; unknown keys are logged and ignored.
    """
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG_NAME
    if not (folder / ADAPTER_WEIGHTS_NAME).is_file():
        pickled = sorted(path.name for path in folder.glob("*") if path.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise InvalidInputError(
                f"{folder} has pickled weights ({', '.join(pickled)}) and no {ADAPTER_WEIGHTS_NAME}. Pickle files can "
                "run code when loaded, so recycle-hf reads safetensors only; convert the weights to safetensors."
            )
        raise InputNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS_NAME}; it is not a (complete) recycle adapter.")
    if not config_path.is_file():
        raise InputNotFoundError(f"{folder} has no {ADAPTER_CONFIG_NAME}; it is not a (complete) recycle adapter.")
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(
            f"{config_path} is not valid JSON ({error}): the adapter is damaged; save or download it again."
        ) from error
    if not isinstance(adapter_config, dict):
        raise InvalidInputError(
            f"{config_path} must hold a JSON object, not a {type(adapter_config).__name__}: it is not a recycle "
            "adapter."
        )
    if adapter_config.get("adapter_type") != ADAPTER_TYPE:
        raise InvalidInputError(
            f"{config_path} is not a recycle adapter (adapter_type {adapter_config.get('adapter_type')!r}, expected "
            f"{ADAPTER_TYPE!r}). Plain PEFT adapters load with peft's PeftModel.from_pretrained."
        )
    _check_adapter_config_fields(config_path, adapter_config)
    return adapter_config


def _check_adapter_config_fields(config_path: Path, adapter_config: dict[str, Any]) -> None:
    from . import __version__

    written_by = f"written by recycle-hf {adapter_config.get('recycle_hf_version', '(unknown)')}"
    format_version = adapter_config.get("format_version", 1)
    if isinstance(format_version, bool) or not isinstance(format_version, int) or format_version < 1:
        raise InvalidInputError(f"{config_path}: format_version must be a positive integer, got {format_version!r}.")
    if format_version > ADAPTER_FORMAT_VERSION:
        raise InvalidInputError(
            f"{config_path} is in adapter format {format_version} ({written_by}); recycle-hf {__version__} reads "
            f"format {ADAPTER_FORMAT_VERSION} and older. Upgrade recycle-hf: pip install --upgrade recycle-hf."
        )
    unknown = sorted(set(adapter_config) - _ADAPTER_CONFIG_KEYS)
    if unknown:
        logger.warning(
            "%s: ignoring unknown keys %s (%s; this is recycle-hf %s).", config_path, ", ".join(unknown), written_by,
            __version__,
        )
    for name in ("recycle_settings", "lora"):
        if not isinstance(adapter_config.get(name), (dict, type(None))):
            raise InvalidInputError(
                f"{config_path}: {name!r} must be a JSON object or null, got {adapter_config[name]!r}."
            )
    dtype = adapter_config.get("dtype")
    if dtype is not None and not (
        isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
        and getattr(torch, dtype).is_floating_point
    ):
        raise InvalidInputError(f"{config_path}: dtype must name a floating-point torch dtype, got {dtype!r}.")


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


def check_adapter_matches_base(adapter_config: dict[str, Any], base_model: PreTrainedModel) -> None:
    """Raise a `ValueError` listing every way `base_model` differs from the base the adapter was trained on."""
    base = _base_description(base_model)
    mismatches = [
        f"{name}: adapter {adapter_config.get(name)!r}, base {value!r}"
        for name, value in base.items()
        if adapter_config.get(name) != value
    ]
    if mismatches:
        raise InvalidInputError(
            f"The adapter was trained on another base ({adapter_config.get('base_model_name_or_path')!r}): "
            + "; ".join(mismatches)
            + ". Load it onto the base it was trained on."
        )


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


def _expected_lora_shapes(base_model: PreTrainedModel, lora_config: LoraConfig) -> dict[str, torch.Size]:
    # LoRA is injected into a copy of the base's structure on the meta device: checking the adapter's LoRA tensors
    # must not change the real base if they do not fit.
    with torch.device("meta"):
        shadow = type(base_model)(copy.deepcopy(base_model.config))
    inject_adapter_in_model(lora_config, shadow, adapter_name=_LORA_ADAPTER_NAME)
    lora_tensors = get_peft_model_state_dict(shadow, adapter_name=_LORA_ADAPTER_NAME)
    return {name: tensor.shape for name, tensor in lora_tensors.items()}


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
    if (lora_config is None) != (adapter_config.get("lora") is None):
        has, lacks = ("the adapter", "the model") if lora_config is None else ("the model", "the adapter")
        raise InvalidInputError(f"LoRA mismatch: {has} has LoRA weights on the base and {lacks} has none.")
    if lora_config is not None:
        expected_lora = {
            name: tensor.shape
            for name, tensor in get_peft_model_state_dict(model.base_lm, adapter_name=_LORA_ADAPTER_NAME).items()
        }
        _check_tensor_names_and_shapes("LoRA", expected_lora, lora_tensors)
        set_peft_model_state_dict(model.base_lm, lora_tensors, adapter_name=_LORA_ADAPTER_NAME)
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

    settings = adapter_config.get("recycle_settings") or {}
    unknown = sorted(set(settings) - set(RECYCLE_SETTING_NAMES))
    if unknown:
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG_NAME}: unknown module settings {', '.join(unknown)}.")
    settings = dict(settings)
    num_layers = settings.pop("recycle_num_layers", 1)
    try:
        model = graft_recycle_module(base_model, num_layers=num_layers, init="random", freeze_base=False, **settings)
    except ValueError as error:  # the config's validation of the recorded settings
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG_NAME}: the module settings do not fit ({error})") from error
    expected_module = {name: tensor.shape for name, tensor in model.recycle_module.state_dict().items()}
    _check_tensor_names_and_shapes("module", expected_module, module_tensors)

    lora_values = adapter_config.get("lora")
    if lora_values is None and lora_tensors:
        raise InvalidInputError(f"{folder}: the weights hold LoRA tensors but adapter_config.json has no 'lora' entry.")
    if lora_values is not None:
        lora_config = _lora_config_from_dict(lora_values)
        _check_tensor_names_and_shapes("LoRA", _expected_lora_shapes(base_model, lora_config), lora_tensors)
        add_base_lora(model, lora_config)
        set_peft_model_state_dict(model.base_lm, lora_tensors, adapter_name=_LORA_ADAPTER_NAME)

    stored_dtype, module_dtype = adapter_config.get("dtype"), next(model.recycle_module.parameters()).dtype
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


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT_VERSION",
    "ADAPTER_WEIGHTS_NAME",
    "RECYCLE_SETTING_NAMES",
    "add_base_lora",
    "adapter_state_dict",
    "base_lora_config",
    "build_adapter_config",
    "check_adapter_matches_base",
    "load_adapter_weights",
    "load_recycle_adapter",
    "merge_base_lora",
    "read_adapter_config",
    "save_recycle_adapter",
]
