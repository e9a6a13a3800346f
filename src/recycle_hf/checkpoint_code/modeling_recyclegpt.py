# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""RecycleGPT: a decoder-only base network plus a recyclable module (arXiv 2308.03421).

Indexing convention (used everywhere in this package): tokens x_0 .. x_{T-1}. The base network at position j
reads x_0..x_j and produces h_j (its final hidden state, the one that feeds the LM head) and `logits[:, j]`, a
prediction of x_{j+1}. The recyclable module at position j reads the pair (h_{j-1}, x_j) and, through its own
causal layers over all earlier pairs, produces `recycle_logits[:, j]`, also a prediction of x_{j+1}. Position 0,
and any position whose predecessor is left padding, has no h_{j-1}: the module reads a zero vector there.

This file is remote code: a checkpoint folder carries it, so it imports only torch, transformers and its
sibling files.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.utils import ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_recyclegpt import RecycleGPTCheckpointError, RecycleGPTConfig
from .generation_recyclegpt import RecycleGenerationMixin
from .masks_recyclegpt import positions_from_attention_mask
from .publishing_recyclegpt import check_safetensors_file, interrupted_save_version, is_checkpoint_file, staged_folder
from .runtime_recyclegpt import free_decoding_caches


logger = logging.get_logger(__name__)


@dataclass
class RecycleCache:
    """The two key/value caches of a RecycleGPT model and the base state the module reads next.

    `base` holds the base network's keys and values, `module` the recyclable module's. `last_hidden_state` is the
    base's final state at the last position the base has processed ([batch, 1, dim]), the h_{j-1} of the next call.
    """

    base: DynamicCache
    module: DynamicCache
    last_hidden_state: torch.Tensor | None = None

    def get_seq_length(self) -> int:
        return self.base.get_seq_length()


@dataclass
class RecycleGPTOutput(ModelOutput):
    """Output of [`RecycleGPTForCausalLM`]; `logits[:, j]` and `recycle_logits[:, j]` both predict token j+1."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    recycle_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    recycle_logits: torch.Tensor | None = None
    cache: RecycleCache | None = None
    last_hidden_state: torch.Tensor | None = None
    recycle_hidden_state: torch.Tensor | None = None


def find_decoder_blocks(backbone: nn.Module, num_layers: int) -> nn.ModuleList:
    """The backbone's list of decoder blocks (`layers`, `decoder.layers`, `h`, ...): its ModuleList of `num_layers`."""
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"Could not find the {num_layers} decoder blocks of {type(backbone).__name__}; RecycleGPT needs a "
        "decoder-only backbone that keeps its blocks in one nn.ModuleList."
    )


def _norm_class_of(block: nn.Module) -> type[nn.Module]:
    for module in block.modules():
        if "norm" in type(module).__name__.lower():
            return type(module)
    return nn.LayerNorm


def _norm_epsilon(config: Any) -> float:
    for name in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"):
        value = getattr(config, name, None)
        if value is not None:
            return value
    return 1e-5


def _cache_argument_name(block: nn.Module) -> str:
    parameters = inspect.signature(block.forward).parameters
    for name in ("cache", "past_key_values", "layer_past"):
        if name in parameters:
            return name
    raise ValueError(
        f"{type(block).__name__}.forward takes no key/value cache argument; RecycleGPT needs a base whose decoder "
        "blocks accept a cache."
    )


class RecycleModule(nn.Module):
    """The recyclable module: MTP-style input fusion followed by decoder blocks of the base's own class.

    Weight layout follows `transformers.modeling_layers.MtpLayer`: `enorm` (token embedding), `hnorm` (previous base
    state), `eh_proj` (2d -> d on the concatenation [enorm(e), hnorm(h)], no bias), the decoder blocks in `mtp_block`
    (a list, so that `recycle_num_layers` > 1 stacks several) and `post_norm`. With one layer the MTP key
    `mtp_block.<name>` is our `mtp_block.0.<name>`.
    """

    def __init__(
        self,
        module_config: Any,
        block_class: type[nn.Module],
        norm_class: type[nn.Module],
        draft_vocab_size: int | None = None,
    ):
        super().__init__()
        hidden_size = module_config.hidden_size
        eps = _norm_epsilon(module_config)
        self.config = module_config
        self.enorm = norm_class(hidden_size, eps=eps)
        self.hnorm = norm_class(hidden_size, eps=eps)
        self.eh_proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.mtp_block = nn.ModuleList(
            [block_class(module_config, layer_idx) for layer_idx in range(module_config.num_hidden_layers)]
        )
        self.post_norm = norm_class(hidden_size, eps=eps)
        if draft_vocab_size is not None:
            # Token ids verify mode may draft; set from training-data frequencies (`set_draft_vocabulary`).
            self.register_buffer("draft_token_ids", torch.arange(draft_vocab_size, dtype=torch.long))
        block_parameters = inspect.signature(self.mtp_block[0].forward).parameters
        self._cache_argument = _cache_argument_name(self.mtp_block[0])
        self._takes_position_embeddings = "position_embeddings" in block_parameters

    def forward(
        self,
        token_embeddings: torch.Tensor,
        previous_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
        rotary_embedding: nn.Module | None,
        mask_function: Callable | None = None,
    ) -> torch.Tensor:
        """`mask_function(batch_idx, head_idx, q_idx, kv_idx)`, if given, further restricts the causal mask."""
        hidden_states = self.eh_proj(torch.cat([self.enorm(token_embeddings), self.hnorm(previous_states)], dim=-1))
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            and_mask_function=mask_function,
        )
        block_kwargs: dict[str, Any] = {
            "attention_mask": causal_mask,
            "position_ids": position_ids,
            "use_cache": cache is not None,
            self._cache_argument: cache,
        }
        if self._takes_position_embeddings and rotary_embedding is not None:
            block_kwargs["position_embeddings"] = rotary_embedding(hidden_states, position_ids=position_ids)
        for block in self.mtp_block:
            hidden_states = block(hidden_states, **block_kwargs)
            if isinstance(hidden_states, tuple):
                hidden_states = hidden_states[0]
        return self.post_norm(hidden_states)


class RecycleGPTPreTrainedModel(PreTrainedModel):
    config_class = RecycleGPTConfig
    config: RecycleGPTConfig
    base_model_prefix = "base_lm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.base_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif "norm" in type(module).__name__.lower():
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class RecycleGPTForCausalLM(RecycleGenerationMixin, RecycleGPTPreTrainedModel, GenerationMixin):
    """A causal LM (`base_lm`, any decoder-only transformers architecture) plus a recyclable module.

    `forward` returns the base's `logits` and the module's teacher-forced `recycle_logits` (aligned: both predict
    token j+1 at index j) and, with `labels`, `loss = lm_loss + recycle_loss_weight * recycle_loss`.
    `generate(..., recycle_mode="alternate" | "verify")` decodes with the module (see `generation_recyclegpt.py`).
    """

    def __init__(self, config: RecycleGPTConfig, base_lm: PreTrainedModel | None = None):
        if base_lm is not None:
            # Grafting passes an existing model: its tensors and config are used as they are, never copied.
            config.base_config = base_lm.config
        super().__init__(config)
        self.base_lm = base_lm if base_lm is not None else AutoModelForCausalLM.from_config(config.base_config)
        blocks = find_decoder_blocks(self.base_backbone, config.base_config.num_hidden_layers)
        module_config = config.get_recycle_module_config()
        module_config._attn_implementation = self.base_lm.config._attn_implementation
        self.recycle_module = RecycleModule(
            module_config, type(blocks[-1]), _norm_class_of(blocks[-1]), config.recycle_draft_vocab_size
        )
        self._draft_head: tuple[tuple, torch.Tensor] | None = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        # Pickled weights can execute code when loaded: only safetensors are read.
        if kwargs.setdefault("use_safetensors", True) is not True:
            raise ValueError("RecycleGPT checkpoints load from safetensors only; pass use_safetensors=True (default).")
        version = None if os.path.exists(pretrained_model_name_or_path) else interrupted_save_version(
            pretrained_model_name_or_path)
        if version is not None:
            raise RecycleGPTCheckpointError(
                f"{pretrained_model_name_or_path} does not exist: a save of it was interrupted. Its newest complete "
                f"version is {version}; rename that folder to {Path(pretrained_model_name_or_path).name}."
            )
        if os.path.isdir(pretrained_model_name_or_path):
            folder = os.path.join(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            # Without this check a folder with no config.json would load the default (7B) config.
            if kwargs.get("config") is None and not os.path.isfile(os.path.join(folder, "config.json")):
                raise RecycleGPTCheckpointError(
                    f"{pretrained_model_name_or_path} has no config.json: it is not a (complete) RecycleGPT "
                    "checkpoint. Save the model there again, or name the checkpoint folder itself."
                )
            # A truncated weight file would otherwise fail deep inside safetensors without naming the file.
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
                if fnmatch.fnmatch(name, "model*.safetensors"):
                    check_safetensors_file(os.path.join(folder, name))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, made safe against interruption.

        The complete checkpoint is written to a fresh folder beside `save_directory`, which then takes the place of
        the old one (`publish_folder`): the folder holds the previous checkpoint or the new one, whatever fails when.
        Files in it that are not part of a checkpoint (a README, tokenizer files, ...) are kept.
        """
        if kwargs.get("safe_serialization") is False:
            raise ValueError("RecycleGPT saves safetensors only; drop safe_serialization=False.")
        if any("lora_" in name for name, _ in self.base_lm.named_parameters()):
            raise ValueError(
                "The base carries unmerged LoRA layers: merge them first (recycle_hf.adapter.merge_base_lora(model)) "
                "or save the small adapter with save_adapter()."
            )
        if Path(save_directory).is_file():
            raise ValueError(f"save_directory {save_directory} is a file; give a folder path.")
        saves_here = kwargs.get("is_main_process", True)
        if hasattr(self, "should_save_on_this_rank"):
            saves_here = self.should_save_on_this_rank(saves_here)
        if not saves_here:
            # Other ranks of a distributed run write no checkpoint files: publishing their empty staging folder
            # would drop the checkpoint that the main process writes.
            return super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).resolve().name)  # not the staging folder's name
        with staged_folder(save_directory, replaced=is_checkpoint_file) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            _register_auto_model_in_config(staging / "config.json")

    def save_adapter(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save only the recyclable module (plus LoRA weights on the base, if any) as a small PEFT-style adapter.

        A thin entry to `recycle_hf.adapter.save_recycle_adapter`, which owns the adapter format and takes the
        `kwargs` (`base_model_name_or_path`, `state_dict`, `push_to_hub`, `repo_id`, `token`, ...). It is imported
        when called: this file is remote code, which loads without recycle-hf, while saving an adapter needs the
        package (`pip install recycle-hf`). Reload with `recycle_hf.load_recycle_adapter`.
        """
        try:
            from recycle_hf.adapter.saving import save_recycle_adapter
        except ImportError as error:
            raise ImportError("save_adapter needs the recycle-hf package: pip install recycle-hf") from error
        save_recycle_adapter(self, save_directory, **kwargs)

    def free_decoding_caches(self) -> None:
        """Free the static caches that recycle decoding keeps between `generate` calls (reused by later calls of the
        same batch size, so that compiled steps see the same tensors). The next call allocates them again."""
        free_decoding_caches(self)

    # Accessors for the pieces of the base the module shares. They are looked up on every call rather than stored,
    # so that wrappers (peft, FSDP, accelerate hooks) that replace submodules are always seen.
    @property
    def base_backbone(self) -> nn.Module:
        return self.base_lm.base_model

    @property
    def rotary_embedding(self) -> nn.Module | None:
        return getattr(self.base_backbone, "rotary_emb", None)

    def _embedding_projection(self, name: str) -> nn.Module | None:
        # OPT keeps token embeddings in `word_embed_proj_dim` and projects them in and out of the hidden size.
        backbone = self.base_backbone
        for owner in (backbone, getattr(backbone, "decoder", None)):
            projection = getattr(owner, name, None) if owner is not None else None
            if projection is not None:
                return projection
        return None

    def to_hidden_size(self, states: torch.Tensor) -> torch.Tensor:
        """Bring embedding-space vectors (token embeddings, LM-head inputs) to the hidden size, as the base does."""
        projection = self._embedding_projection("project_in")
        return projection(states) if projection is not None else states

    def from_hidden_size(self, states: torch.Tensor) -> torch.Tensor:
        """Bring hidden-size vectors to the LM head's input size, as the base does."""
        projection = self._embedding_projection("project_out")
        return projection(states) if projection is not None else states

    def get_input_embeddings(self) -> nn.Module:
        return self.base_lm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_lm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.base_lm.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.base_lm.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.base_backbone

    def new_cache(self) -> RecycleCache:
        """An empty cache for incremental `forward` calls."""
        return RecycleCache(
            base=DynamicCache(config=self.config.base_config),
            module=DynamicCache(config=self.recycle_module.config),
        )

    def base_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """Run the base backbone over new tokens; returns the final states that feed the LM head."""
        outputs = self.base_backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return outputs.last_hidden_state

    def recycle_step(
        self,
        input_ids: torch.Tensor,
        previous_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
        mask_function: Callable | None = None,
    ) -> torch.Tensor:
        """Run the module over new pairs (h_{j-1}, x_j); returns states in the LM head's input space.

        `mask_function` (see `create_causal_mask`'s `and_mask_function`) narrows which pairs each pair attends to;
        training uses it to run chained drafts in one call.
        """
        token_embeddings = self.to_hidden_size(self.get_input_embeddings()(input_ids))
        states = self.recycle_module(
            token_embeddings,
            self.to_hidden_size(previous_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            rotary_embedding=self.rotary_embedding,
            mask_function=mask_function,
        )
        return self.from_hidden_size(states)

    def vocab_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The shared LM head applied to states in its input space (base states or module states)."""
        return self.get_output_embeddings()(states)

    @property
    def draft_token_ids(self) -> torch.Tensor | None:
        return getattr(self.recycle_module, "draft_token_ids", None)

    def set_draft_vocabulary(self, token_ids: torch.Tensor) -> None:
        """Restrict verify-mode drafting to `token_ids` (e.g. the most frequent tokens of the training data)."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        vocab_size = self.get_output_embeddings().weight.shape[0]
        if token_ids.numel() == 0 or token_ids.min() < 0 or token_ids.max() >= vocab_size:
            raise ValueError(f"Draft token ids must be a non-empty set of ids in [0, {vocab_size}).")
        if len(set(token_ids.tolist())) != token_ids.numel():
            raise ValueError("Draft token ids must not repeat.")
        self.config.recycle_draft_vocab_size = token_ids.numel()
        device = self.get_output_embeddings().weight.device
        if "draft_token_ids" in self.recycle_module._buffers:
            del self.recycle_module._buffers["draft_token_ids"]
        self.recycle_module.register_buffer("draft_token_ids", token_ids.to(device))

    def draft_head(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
        """(weight, bias, token ids) of the LM head's rows for the draft vocabulary, or None when there is none.

        The row slice is rebuilt only when the head or the ids change.
        """
        token_ids = self.draft_token_ids
        if token_ids is None:
            return None
        head = self.get_output_embeddings()
        key = (head.weight.data_ptr(), head.weight._version, token_ids.data_ptr(), token_ids._version)
        if self._draft_head is None or self._draft_head[0] != key:
            self._draft_head = (key, head.weight.detach().index_select(0, token_ids))
        bias = head.bias.detach().index_select(0, token_ids) if getattr(head, "bias", None) is not None else None
        return self._draft_head[1], bias, token_ids

    def draft_logits(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Module logits for drafting: over the draft vocabulary when one is set (then also returns its ids)."""
        draft_head = self.draft_head()
        if draft_head is None:
            return self.vocab_logits(states), None
        weight, bias, token_ids = draft_head
        return F.linear(states, weight, bias), token_ids

    @staticmethod
    def shift_states(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        last_hidden_state: torch.Tensor | None,
    ) -> torch.Tensor:
        """h_{j-1} for every new position j: the states shifted right by one, zero where j-1 is padding or absent.

        `attention_mask` covers cached and new positions; `last_hidden_state` is the state before the first new one.
        """
        batch_size, num_new, _ = hidden_states.shape
        first = last_hidden_state
        if first is None:
            first = hidden_states.new_zeros(batch_size, 1, hidden_states.shape[-1])
        previous = torch.cat([first, hidden_states[:, :-1]], dim=1)
        if attention_mask is None:
            if last_hidden_state is None:
                previous[:, 0] = 0
            return previous
        num_past = attention_mask.shape[1] - num_new
        if num_past > 0:
            previous_valid = attention_mask[:, num_past - 1 : num_past - 1 + num_new].bool()
        else:
            previous_valid = torch.cat(
                [attention_mask.new_zeros(batch_size, 1), attention_mask[:, : num_new - 1]], dim=1
            ).bool()
        # `where`, not a product: padded query rows of sdpa can hold NaN, and NaN * 0 is NaN.
        return torch.where(previous_valid.unsqueeze(-1), previous, torch.zeros_like(previous))

    # transformers' name for the cache; ours holds two caches (base and module), hence its own name.
    @deprecate_kwarg("past_key_values", version="6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: RecycleCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_recycle_logits: bool = True,
        **kwargs: Any,
    ) -> RecycleGPTOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, new_tokens)`): tokens to process.
            attention_mask (`torch.Tensor` of shape `(batch, cached + new_tokens)`, *optional*): 1 for real tokens,
                0 for (left) padding.
            position_ids (`torch.LongTensor`, *optional*): defaults to the count of real tokens before each one.
            cache ([`RecycleCache`], *optional*): caches from an earlier call (see `new_cache`), updated in place.
                `past_key_values=` is accepted as its older name, with a deprecation warning.
            labels (`torch.LongTensor`, *optional*): targets, shifted inside as for any causal LM; -100 is ignored.
            use_cache (`bool`, *optional*): return a cache (a new one when `past_key_values` is None).
            return_recycle_logits (`bool`, defaults to True): also run the module.
        """
        if use_cache and cache is None:
            cache = self.new_cache()
        num_new = input_ids.shape[1]
        num_past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_attention_mask(attention_mask, num_new)
            else:
                position_ids = torch.arange(num_past, num_past + num_new, device=input_ids.device).unsqueeze(0)
                position_ids = position_ids.expand(input_ids.shape[0], -1)

        base_cache = cache.base if cache is not None else None
        hidden_states = self.base_step(input_ids, attention_mask, position_ids, base_cache)
        logits = self.vocab_logits(hidden_states)

        recycle_logits = recycle_states = None
        if return_recycle_logits:
            last_state = cache.last_hidden_state if cache is not None else None
            previous_states = self.shift_states(hidden_states, attention_mask, last_state)
            module_cache = cache.module if cache is not None else None
            recycle_states = self.recycle_step(input_ids, previous_states, attention_mask, position_ids, module_cache)
            recycle_logits = self.vocab_logits(recycle_states)
        if cache is not None:
            cache.last_hidden_state = hidden_states[:, -1:]

        loss = lm_loss = recycle_loss = None
        if labels is not None:
            # transformers' shared causal-LM loss: shifts labels, upcasts to float32, ignores -100.
            vocab_size = logits.shape[-1]
            lm_loss = self.loss_function(logits, labels, vocab_size)
            loss = lm_loss
            if recycle_logits is not None:
                recycle_loss = self.loss_function(recycle_logits, labels, vocab_size)
                loss = lm_loss + self.config.recycle_loss_weight * recycle_loss

        return RecycleGPTOutput(
            loss=loss,
            lm_loss=lm_loss,
            recycle_loss=recycle_loss,
            logits=logits,
            recycle_logits=recycle_logits,
            cache=cache,
            last_hidden_state=hidden_states,
            recycle_hidden_state=recycle_states,
        )


def _register_auto_model_in_config(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    auto_map = config.setdefault("auto_map", {})
    if "AutoModelForCausalLM" in auto_map:
        auto_map.setdefault("AutoModel", auto_map["AutoModelForCausalLM"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")



__all__ = [
    "RecycleCache",
    "RecycleGPTForCausalLM",
    "RecycleGPTOutput",
    "RecycleGPTPreTrainedModel",
    "RecycleModule",
]
