# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Recycle adapters, PEFT-style: the recyclable module's weights (and optional LoRA weights on the base) in a small
folder that loads onto an unchanged base model.

An adapter folder holds two files:
- `adapter_config.json`: the base it was trained on (name or path, `model_type`, architecture class, hidden and
  vocabulary sizes), the module settings, the dtype the weights are stored in, the recycle-hf version and, when LoRA
  was trained with the module, the peft `LoraConfig` ([`RecycleAdapterConfig`]);
- `adapter_model.safetensors`: `recycle_module.*` tensors, plus `base_lm.*lora_*` tensors with LoRA. Never a base
  weight.

One idea a module, as peft's `tuners/<method>/`: `config` (the file format, `RecycleAdapterConfig`), `lora` (LoRA
layers on the base), `saving` (`save_recycle_adapter`, which `RecycleGPTForCausalLM.save_adapter` calls) and
`loading` (`load_recycle_adapter`).
"""

from ..checkpoint_code.configuration_recyclegpt import RECYCLE_SETTING_NAMES
from .config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_FORMAT_VERSION,
    ADAPTER_WEIGHTS_NAME,
    RecycleAdapterConfig,
    base_description,
    check_adapter_matches_base,
)
from .loading import load_adapter_weights, load_recycle_adapter, read_adapter_config, resolve_adapter_folder
from .lora import add_base_lora, base_lora_config, merge_base_lora
from .saving import adapter_state_dict, build_adapter_config, save_recycle_adapter


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT_VERSION",
    "ADAPTER_WEIGHTS_NAME",
    "RECYCLE_SETTING_NAMES",
    "RecycleAdapterConfig",
    "add_base_lora",
    "adapter_state_dict",
    "base_description",
    "base_lora_config",
    "build_adapter_config",
    "check_adapter_matches_base",
    "load_adapter_weights",
    "load_recycle_adapter",
    "merge_base_lora",
    "read_adapter_config",
    "resolve_adapter_folder",
    "save_recycle_adapter",
]
