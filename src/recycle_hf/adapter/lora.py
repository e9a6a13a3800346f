# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""LoRA layers on the base, trained together with the module: peft's layers injected into the plain base in place.

Every function takes a RecycleGPT model (anything with `base_lm`); the model file is not imported here, since the
model's `save_adapter` imports the adapter saver.

The base stays a plain `*ForCausalLM` (peft's `inject_adapter_in_model`, not a `PeftModel` wrapper), so the model's
forward, its decoding modes and the adapter's tensor names (`base_lm.<base's own names>`) do not change with LoRA.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel


# peft's name for the one LoRA adapter on the base.
LORA_ADAPTER_NAME = "default"


def add_base_lora(model: PreTrainedModel, lora_config: LoraConfig) -> PreTrainedModel:
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
    inject_adapter_in_model(lora_config, model.base_lm, adapter_name=LORA_ADAPTER_NAME)
    return model


def base_lora_config(model: PreTrainedModel) -> LoraConfig | None:
    """The `LoraConfig` of the LoRA layers in `model.base_lm`, or None when the base has none."""
    peft_config = getattr(model.base_lm, "peft_config", None)
    return peft_config.get(LORA_ADAPTER_NAME) if isinstance(peft_config, dict) else None


# peft's `merge_and_unload` is a method of its tuner object (`LoraModel`, `PeftModel`), which
# `inject_adapter_in_model` builds and discards, and peft 0.21 has no merge for injected models (`peft.functional`);
# a new `LoraModel` on the injected base would re-initialise the trained LoRA weights. So this merges layer by layer
# with peft's own `LoraLayer.merge`, as `merge_and_unload` does.
@torch.no_grad()
def merge_base_lora(model: PreTrainedModel) -> PreTrainedModel:
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


def lora_tensor_shapes(base_model: PreTrainedModel, lora_config: LoraConfig) -> dict[str, torch.Size]:
    """The names and shapes of the LoRA tensors that `lora_config` gives `base_model`, with `base_model` unchanged."""
    # Injected into a copy of the base's structure on the meta device: checking an adapter's LoRA tensors must not
    # change the real base if they do not fit.
    with torch.device("meta"):
        shadow = type(base_model)(copy.deepcopy(base_model.config))
    inject_adapter_in_model(lora_config, shadow, adapter_name=LORA_ADAPTER_NAME)
    lora_tensors = get_peft_model_state_dict(shadow, adapter_name=LORA_ADAPTER_NAME)
    return {name: tensor.shape for name, tensor in lora_tensors.items()}


__all__ = ["add_base_lora", "base_lora_config", "lora_tensor_shapes", "merge_base_lora"]
