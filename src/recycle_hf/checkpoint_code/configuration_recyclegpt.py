# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""RecycleGPT configuration: a decoder-only base network plus a recyclable module (arXiv 2308.03421).

This file is remote code: a checkpoint folder carries it, so it imports only torch, transformers and its
sibling files.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Families whose decoding is covered by the test suite; others that pass validation may work but are untested.
TESTED_BASE_MODEL_TYPES = ("llama", "opt", "qwen2", "gpt_neox", "gpt2")

# The recyclable module's settings: the `RecycleGPTConfig` fields besides `base_config` (a recycle adapter records
# them, and grafting accepts them without the `recycle_` prefix).
RECYCLE_SETTING_NAMES = (
    "recycle_num_layers",
    "recycle_num_attention_heads",
    "recycle_num_key_value_heads",
    "recycle_intermediate_size",
    "recycle_loss_weight",
    "recycle_draft_vocab_size",
)

# Names the families use for the width of the MLP inside a decoder block.
_INTERMEDIATE_SIZE_NAMES = ("intermediate_size", "ffn_dim", "n_inner")


class RecycleGPTCheckpointError(OSError, ValueError):
    """A folder or repository that is not a complete, intact RecycleGPT checkpoint; the message says what to do.

    Both an OSError (as transformers' own "cannot load this checkpoint" errors) and a ValueError (as its
    "unrecognized model" error), so that code catching either keeps working.
    """


class RecycleGPTConfig(PretrainedConfig):
    r"""
    Configuration of a [`RecycleGPTForCausalLM`]: the configuration of the base network, nested as `base_config`,
    and the settings of the recyclable module.

    Args:
        base_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of the base decoder-only network (any `model_type` that `AutoModelForCausalLM` knows;
            LLaMA, OPT, Qwen2, GPT-NeoX and GPT-2 are tested). Defaults to a default `LlamaConfig`.
        recycle_num_layers (`int`, *optional*, defaults to 1):
            Number of decoder blocks (of the base's own block class) in the recyclable module.
        recycle_num_attention_heads (`int`, *optional*):
            Attention heads of the module's blocks. Defaults to the base's.
        recycle_num_key_value_heads (`int`, *optional*):
            Key/value heads of the module's blocks, for bases with grouped-query attention. Defaults to the base's
            when the head count is the base's, else to `recycle_num_attention_heads`.
        recycle_intermediate_size (`int`, *optional*):
            MLP width of the module's blocks. Defaults to the base's.
        recycle_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the module's cross-entropy in `loss = lm_loss + recycle_loss_weight * recycle_loss`.
        recycle_draft_vocab_size (`int`, *optional*):
            When set, verify mode drafts only among this many token ids (the module's `draft_token_ids`, usually the
            most frequent tokens of the training data), so each draft step reads a small slice of the LM head
            instead of all of it. Verification always uses the full vocabulary, so output is unchanged.
    """

    model_type = "recyclegpt"
    sub_configs = {"base_config": AutoConfig}

    def __init__(
        self,
        base_config: dict | PretrainedConfig | None = None,
        recycle_num_layers: int = 1,
        recycle_num_attention_heads: int | None = None,
        recycle_num_key_value_heads: int | None = None,
        recycle_intermediate_size: int | None = None,
        recycle_loss_weight: float = 1.0,
        recycle_draft_vocab_size: int | None = None,
        **kwargs: Any,
    ):
        self.base_config = _as_base_config(base_config)
        self.recycle_num_layers = recycle_num_layers
        self.recycle_num_attention_heads = recycle_num_attention_heads
        self.recycle_num_key_value_heads = recycle_num_key_value_heads
        self.recycle_intermediate_size = recycle_intermediate_size
        self.recycle_loss_weight = recycle_loss_weight
        self.recycle_draft_vocab_size = recycle_draft_vocab_size
        kwargs.setdefault("tie_word_embeddings", getattr(self.base_config, "tie_word_embeddings", False))
        for token_name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(token_name, getattr(self.base_config, token_name, None))
        base_attention = getattr(self.base_config, "_attn_implementation", None)
        super().__init__(**kwargs)
        # PretrainedConfig.__init__ pushes its own (unset) attention backend into sub-configs; a base config passed
        # in by a caller (grafting) keeps the backend its model was built with.
        if base_attention is not None and kwargs.get("attn_implementation") is None:
            self.base_config._attn_implementation = base_attention
        self.validate_recycle_settings()

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        # Checked before anything is built: another model's config.json would otherwise fill only the fields the two
        # configs share and leave `base_config` at its default, a 7B LLaMA that then runs out of memory.
        model_type = config_dict.get("model_type")
        if model_type != cls.model_type:
            path = os.fspath(pretrained_model_name_or_path)
            raise RecycleGPTCheckpointError(
                f"{path} is not a RecycleGPT checkpoint: its config.json has model_type {model_type!r}, not "
                f"{cls.model_type!r}. To decode a plain model with a recyclable module, load it as the base: "
                f"`recycle-hf generate --base {path} --adapter ADAPTER_DIR` (a trained recycle adapter), or in Python "
                f"`recycle_hf.graft_recycle_module(AutoModelForCausalLM.from_pretrained({path!r}))` for a fresh "
                "module to train."
            )
        return config_dict, kwargs

    # The generation utilities read vocabulary size, caches and special tokens from the text config.
    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        return self.base_config.get_text_config(decoder=decoder, encoder=encoder)

    # The `recycle_num_*` fields are the settings as given and saved (None: the base's); the `resolved_*` properties
    # are the counts the module's blocks are built with.
    @property
    def resolved_recycle_num_attention_heads(self) -> int:
        """The module's attention heads: `recycle_num_attention_heads`, or the base's when that is None."""
        return self.recycle_num_attention_heads or self.base_config.num_attention_heads

    @property
    def resolved_recycle_num_key_value_heads(self) -> int | None:
        """The module's key/value heads: `recycle_num_key_value_heads`; when None, the base's if the module keeps the
        base's head count, else one per attention head. None for bases without grouped-query attention."""
        if not hasattr(self.base_config, "num_key_value_heads"):
            return None
        if self.recycle_num_key_value_heads is not None:
            return self.recycle_num_key_value_heads
        if self.recycle_num_attention_heads in (None, self.base_config.num_attention_heads):
            return self.base_config.num_key_value_heads
        return self.recycle_num_attention_heads

    def validate_recycle_settings(self) -> None:
        """Raise a `ValueError` naming the offending field and the values it accepts."""
        base = self.base_config
        if getattr(base, "is_encoder_decoder", False):
            raise ValueError(
                f"base_config: model_type '{base.model_type}' is an encoder-decoder model; RecycleGPT needs a "
                f"decoder-only base (tested: {', '.join(TESTED_BASE_MODEL_TYPES)})."
            )
        if base.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"base_config: model_type '{base.model_type}' has no causal-LM class in transformers; use a "
                f"decoder-only architecture (tested: {', '.join(TESTED_BASE_MODEL_TYPES)})."
            )
        if not isinstance(self.recycle_num_layers, int) or self.recycle_num_layers < 1:
            raise ValueError(f"recycle_num_layers must be an integer >= 1, got {self.recycle_num_layers!r}.")
        heads = self.resolved_recycle_num_attention_heads
        if not isinstance(heads, int) or heads < 1 or base.hidden_size % heads != 0:
            raise ValueError(
                f"recycle_num_attention_heads must be a positive divisor of the hidden size {base.hidden_size}, "
                f"got {heads!r}."
            )
        kv_heads = self.resolved_recycle_num_key_value_heads
        if kv_heads is not None and (not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads != 0):
            raise ValueError(
                f"recycle_num_key_value_heads must be a positive divisor of the module's {heads} attention heads, "
                f"got {kv_heads!r}."
            )
        if self.recycle_intermediate_size is not None and (
            not isinstance(self.recycle_intermediate_size, int) or self.recycle_intermediate_size < 1
        ):
            raise ValueError(
                f"recycle_intermediate_size must be a positive integer, got {self.recycle_intermediate_size!r}."
            )
        draft_size = self.recycle_draft_vocab_size
        if draft_size is not None and (not isinstance(draft_size, int) or not 1 <= draft_size <= base.vocab_size):
            raise ValueError(
                f"recycle_draft_vocab_size must be None or an integer in [1, {base.vocab_size}], got {draft_size!r}."
            )
        if not isinstance(self.recycle_loss_weight, (int, float)) or self.recycle_loss_weight < 0:
            raise ValueError(f"recycle_loss_weight must be a number >= 0, got {self.recycle_loss_weight!r}.")

    def get_recycle_module_config(self) -> PretrainedConfig:
        """The base config reshaped for the module's blocks: layer count, heads and MLP width overridden."""
        base = self.base_config
        module_config = copy.deepcopy(base)
        module_config.num_hidden_layers = self.recycle_num_layers
        heads = self.resolved_recycle_num_attention_heads
        if heads != base.num_attention_heads:
            module_config.num_attention_heads = heads
            if getattr(base, "head_dim", None) is not None:
                module_config.head_dim = base.hidden_size // heads
        kv_heads = self.resolved_recycle_num_key_value_heads
        if kv_heads is not None:
            module_config.num_key_value_heads = kv_heads
        if self.recycle_intermediate_size is not None:
            name = next((n for n in _INTERMEDIATE_SIZE_NAMES if hasattr(base, n)), "intermediate_size")
            setattr(module_config, name, self.recycle_intermediate_size)
        if getattr(base, "layer_types", None) is not None:
            # The module attends over its whole sequence, whatever window pattern the base uses.
            module_config.layer_types = ["full_attention"] * self.recycle_num_layers
        module_config._attn_implementation = getattr(base, "_attn_implementation", None)
        return module_config


def _as_base_config(base_config: dict | PretrainedConfig | None) -> PretrainedConfig:
    if base_config is None:
        logger.info("base_config is None: using a default LlamaConfig.")
        return AutoConfig.for_model("llama")
    if isinstance(base_config, PretrainedConfig):
        return base_config
    if isinstance(base_config, dict):
        base_config = dict(base_config)
        model_type = base_config.pop("model_type", None)
        if model_type is None:
            raise ValueError("base_config: a dict must name its architecture with a 'model_type' key, e.g. 'llama'.")
        try:
            return AutoConfig.for_model(model_type, **base_config)
        except ValueError as error:
            raise ValueError(
                f"base_config: model_type '{model_type}' is not an architecture transformers knows. Tested bases: "
                f"{', '.join(TESTED_BASE_MODEL_TYPES)}."
            ) from error
    raise ValueError(f"base_config must be a dict, a PretrainedConfig or None, got {type(base_config).__name__}.")


__all__ = ["RECYCLE_SETTING_NAMES", "RecycleGPTCheckpointError", "RecycleGPTConfig", "TESTED_BASE_MODEL_TYPES"]
