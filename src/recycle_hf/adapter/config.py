# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""What a recycle adapter records, `adapter_config.json`, as a dataclass (PEFT's `PeftConfig` idea).

`format_version` (absent in the first adapters: 1) is the layout of the adapter files; an adapter in a newer format
than this package reads is refused with a hint to upgrade, and unknown keys (from a newer recycle-hf) are logged and
ignored, as peft ignores unknown `LoraConfig` keys with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from transformers import PreTrainedModel

from .._version import __version__
from ..errors import InvalidInputError


logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPE = "recyclegpt"
# The layout of the adapter files that this version writes and the newest it reads; raise it on incompatible changes.
ADAPTER_FORMAT_VERSION = 1
# The first adapters were written without a `format_version`.
_UNVERSIONED_FORMAT = 1
# Name prefixes of the tensors in the weights file: the module's, and the LoRA weights on the base.
MODULE_PREFIX = "recycle_module."
LORA_PREFIX = "base_lm."


@dataclass
class RecycleAdapterConfig:
    r"""
    The content of a recycle adapter's `adapter_config.json`.

    Args:
        base_model_name_or_path (`str`, *optional*): the base the adapter was trained on, as named when saving.
        base_model_type (`str`, *optional*), base_architecture (`str`, *optional*), hidden_size (`int`, *optional*),
            vocab_size (`int`, *optional*): what a base must match to take the adapter ([`base_description`]).
        recycle_settings (`dict`, *optional*): the module's `RecycleGPTConfig` fields (`RECYCLE_SETTING_NAMES`).
        dtype (`str`, *optional*): the dtype the weights are stored in; loading casts them to the base's, which the
            module must share because it reads the base's states and feeds its LM head.
        lora (`LoraConfig`, *optional*): the LoRA layers trained on the base together with the module, if any.
        recycle_hf_version (`str`, *optional*): the recycle-hf version that wrote the adapter.
        format_version (`int`, defaults to `ADAPTER_FORMAT_VERSION`): the layout of the adapter files.
        adapter_type (`str`, defaults to `"recyclegpt"`): tells a recycle adapter from a plain PEFT one.
    """

    base_model_name_or_path: str | None = None
    base_model_type: str | None = None
    base_architecture: str | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    recycle_settings: dict[str, Any] | None = None
    dtype: str | None = None
    lora: LoraConfig | None = None
    recycle_hf_version: str | None = None
    format_version: int = ADAPTER_FORMAT_VERSION
    adapter_type: str = ADAPTER_TYPE

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `adapter_config.json`; `lora` is peft's `LoraConfig.to_dict()`."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        if self.lora is not None:
            # peft's own `save_pretrained` turns the sets of a LoraConfig (target modules) into lists for JSON;
            # sorted, the file is the same on every save.
            values["lora"] = {
                name: sorted(value) if isinstance(value, set) else value for name, value in self.lora.to_dict().items()
            }
        return values

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], source: str | os.PathLike = ADAPTER_CONFIG_NAME
    ) -> RecycleAdapterConfig:
        """Check `values` (the JSON object read from `source`, which error messages name) and build the config.

        Raises `InvalidInputError` (a ValueError) when they are not a recycle adapter's, are in a newer format than
        this package reads, or have malformed fields. Unknown keys are logged and ignored; unknown `lora` keys too,
        with peft's warning (`LoraConfig.from_peft_type`).
        """
        if values.get("adapter_type") != ADAPTER_TYPE:
            raise InvalidInputError(
                f"{source} is not a recycle adapter (adapter_type {values.get('adapter_type')!r}, expected "
                f"{ADAPTER_TYPE!r}). Plain PEFT adapters load with peft's PeftModel.from_pretrained."
            )
        written_by = f"written by recycle-hf {values.get('recycle_hf_version', '(unknown)')}"
        format_version = values.get("format_version", _UNVERSIONED_FORMAT)
        if isinstance(format_version, bool) or not isinstance(format_version, int) or format_version < 1:
            raise InvalidInputError(f"{source}: format_version must be a positive integer, got {format_version!r}.")
        if format_version > ADAPTER_FORMAT_VERSION:
            raise InvalidInputError(
                f"{source} is in adapter format {format_version} ({written_by}); recycle-hf {__version__} reads "
                f"format {ADAPTER_FORMAT_VERSION} and older. Upgrade recycle-hf: pip install --upgrade recycle-hf."
            )
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            logger.warning(
                "%s: ignoring unknown keys %s (%s; this is recycle-hf %s).", source, ", ".join(unknown), written_by,
                __version__,
            )
        for name in ("recycle_settings", "lora"):
            if not isinstance(values.get(name), (dict, type(None))):
                raise InvalidInputError(f"{source}: {name!r} must be a JSON object or null, got {values[name]!r}.")
        dtype = values.get("dtype")
        if dtype is not None and not (
            isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
            and getattr(torch, dtype).is_floating_point
        ):
            raise InvalidInputError(f"{source}: dtype must name a floating-point torch dtype, got {dtype!r}.")
        known = {name: values[name] for name in names if name in values}
        known["format_version"] = format_version
        if known.get("lora") is not None:
            known["lora"] = _lora_config_from_dict(known["lora"], source)
        return cls(**known)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RecycleAdapterConfig:
        """Read and check an `adapter_config.json` (see `from_dict`); a damaged file gets an error that names it."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidInputError(
                f"{path} is not valid JSON ({error}): the adapter is damaged; save or download it again."
            ) from error
        if not isinstance(values, dict):
            raise InvalidInputError(
                f"{path} must hold a JSON object, not a {type(values).__name__}: it is not a recycle adapter."
            )
        return cls.from_dict(values, source=path)

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write `to_dict()` as `adapter_config.json` is written: indented, keys sorted."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _lora_config_from_dict(values: dict[str, Any], source: str | os.PathLike) -> LoraConfig:
    try:
        # peft's own loading: the config class named by `peft_type`, unknown keys dropped with a warning.
        return LoraConfig.from_peft_type(**values)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{source}: 'lora' is not a LoRA config that peft can read ({error}).") from error


def base_description(base_model: PreTrainedModel) -> dict[str, Any]:
    """What an adapter records of its base, and a base must match: architecture, hidden size and vocabulary."""
    config = base_model.config
    return {
        "base_model_type": config.model_type,
        "base_architecture": type(base_model).__name__,
        "hidden_size": config.hidden_size,
        "vocab_size": base_model.get_input_embeddings().weight.shape[0],
    }


def check_adapter_matches_base(adapter_config: RecycleAdapterConfig, base_model: PreTrainedModel) -> None:
    """Raise a `ValueError` listing every way `base_model` differs from the base the adapter was trained on."""
    mismatches = [
        f"{name}: adapter {getattr(adapter_config, name)!r}, base {value!r}"
        for name, value in base_description(base_model).items()
        if getattr(adapter_config, name) != value
    ]
    if mismatches:
        raise InvalidInputError(
            f"The adapter was trained on another base ({adapter_config.base_model_name_or_path!r}): "
            + "; ".join(mismatches)
            + ". Load it onto the base it was trained on."
        )


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT_VERSION",
    "ADAPTER_WEIGHTS_NAME",
    "RecycleAdapterConfig",
    "base_description",
    "check_adapter_matches_base",
]
