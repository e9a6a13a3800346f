# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""A recyclable module as a vLLM drafter: `speculative_config={"method": "eagle", "model": DRAFT_DIR, ...}`.

vLLM's EAGLE proposer picks its drafter class from the draft folder's `architectures` (renaming `X` to `EagleX`
unless it already starts with "Eagle"); `register()`, run by vLLM through the `vllm.general_plugins` entry point,
adds `EagleRecycleForCausalLM` to vLLM's model registry. `recycle-hf export vllm` writes folders that name it.

The drafter computes exactly `RecycleModule` (modeling_recyclegpt.py), built from vLLM's own layers so that its
attention uses vLLM's paged KV cache: `post_norm(blocks(eh_proj([enorm(e), hnorm(h)])))`, with the base family's
decoder blocks (LLaMA, Qwen2, Qwen3), the target's embedding and LM head (shared by vLLM, not copied) and the
module's draft vocabulary. What vLLM passes and what our module reads line up as follows. vLLM feeds the target's
final (normed) state h_i together with token x_{i+1} at position i; our module reads the same pair at position
i + 1 (its indexing: position j holds (h_{j-1}, x_j)), so the drafter adds one to the positions it rotates by. The
output state is returned twice, as logits input and as the next draft's previous state: our chained drafts feed the
module's own post-norm state back in the same way. One difference is vLLM's, not the drafter's: our module also
holds a pair at position 0 (a zero state with the first token), which vLLM's EAGLE layout never computes, so in vLLM
every position attends to one pair fewer than in `generate`. Measured in docs/BENCHMARKS.md.

Importing this module needs vLLM; `register()` does not import vLLM's model code until vLLM asks for the class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


ARCHITECTURE = "EagleRecycleForCausalLM"
# Base families whose decoder blocks the drafter builds from vLLM's classes (model_type -> vLLM module, class).
SUPPORTED_FAMILIES = {
    "llama": ("vllm.model_executor.models.llama", "LlamaDecoderLayer"),
    "qwen2": ("vllm.model_executor.models.qwen2", "Qwen2DecoderLayer"),
    "qwen3": ("vllm.model_executor.models.qwen3", "Qwen3DecoderLayer"),
}
# HF names of weights that vLLM stacks into one parameter: (vLLM name, HF name, shard).
_STACKED_PARAMETERS = (
    (".qkv_proj", ".q_proj", "q"),
    (".qkv_proj", ".k_proj", "k"),
    (".qkv_proj", ".v_proj", "v"),
    (".gate_up_proj", ".gate_proj", 0),
    (".gate_up_proj", ".up_proj", 1),
)


def register() -> None:
    """The `vllm.general_plugins` entry point: make the drafter class known to vLLM's model registry."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:EagleRecycleForCausalLM")


def unsupported_family_message(model_type: str) -> str:
    return (
        f"recycle-hf's vLLM drafter serves bases of the families {', '.join(sorted(SUPPORTED_FAMILIES))}; this "
        f"module's base is {model_type!r}. Decode it with generate(recycle_mode='verify') instead."
    )


def _decoder_layer(family: str, config, vllm_config, prefix: str) -> nn.Module:
    import importlib

    module_name, class_name = SUPPORTED_FAMILIES[family]
    layer_class = getattr(importlib.import_module(module_name), class_name)
    if family == "llama":
        return layer_class(vllm_config, prefix=prefix, config=config)
    return layer_class(config=config, cache_config=vllm_config.cache_config,
                       quant_config=vllm_config.quant_config, prefix=prefix)


class RecycleDraftModel(nn.Module):
    """`RecycleModule` on vLLM layers: enorm, hnorm, eh_proj, the family's decoder blocks, post_norm."""

    def __init__(self, *, vllm_config, prefix: str = "", start_layer_id: int = 0) -> None:
        super().__init__()
        from vllm.model_executor.layers.layernorm import RMSNorm
        from vllm.model_executor.layers.linear import ReplicatedLinear
        from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

        eagle_config = vllm_config.speculative_config.draft_model_config.hf_config
        config = getattr(eagle_config, "model", None) or eagle_config  # the base family's own config class
        family = config.model_type
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(unsupported_family_message(family))
        self.config = config
        hidden_size, eps = config.hidden_size, config.rms_norm_eps
        # Replaced by the target's embedding when vLLM loads the drafter (no weights of ours name it).
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, hidden_size, prefix=f"{prefix}.embed_tokens")
        self.enorm = RMSNorm(hidden_size, eps=eps)
        self.hnorm = RMSNorm(hidden_size, eps=eps)
        self.eh_proj = ReplicatedLinear(2 * hidden_size, hidden_size, bias=False, return_bias=False,
                                        params_dtype=vllm_config.model_config.dtype, prefix=f"{prefix}.eh_proj")
        # Attention layers are named after the target's (vLLM keys its KV caches by layer name).
        self.layers = nn.ModuleList([
            _decoder_layer(family, config, vllm_config, f"{prefix}.layers.{start_layer_id + index}")
            for index in range(config.num_hidden_layers)
        ])
        self.post_norm = RMSNorm(hidden_size, eps=eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed_tokens(input_ids)
        states = self.eh_proj(torch.cat([self.enorm(embeddings), self.hnorm(hidden_states)], dim=-1))
        # vLLM's position i carries (h_i, x_{i+1}); our module rotates that pair as position i + 1.
        module_positions = positions + 1
        residual = None
        for layer in self.layers:
            states, residual = layer(module_positions, states, residual)
        states, _ = self.post_norm(states, residual)
        return states


class EagleRecycleForCausalLM(nn.Module):
    """vLLM's EAGLE drafter interface around `RecycleDraftModel`: forward, compute_logits, load_weights."""

    supports_eagle = True  # vLLM's SupportsEagle flag: the proposer shares embedding and LM head on this basis
    has_own_lm_head = False
    has_own_embed_tokens = False

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
        from vllm.model_executor.models.utils import maybe_prefix

        target_layers = vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
        self.model = RecycleDraftModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"),
                                       start_layer_id=target_layers)
        self.config = self.model.config
        self.logits_processor = LogitsProcessor(self.config.vocab_size)
        # The draft vocabulary (`draft_token_ids`): a mask over the full vocabulary, set when the weights load.
        self.register_buffer("draft_vocabulary", torch.ones(self.config.vocab_size, dtype=torch.bool),
                             persistent=False)
        self.has_draft_vocabulary = False

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs_embeds is not None:  # vLLM passes them only for multimodal targets, as to its own EAGLE drafters
            raise NotImplementedError("The recycle drafter reads token ids, not input embeddings (multimodal "
                                      "targets are not supported).")
        states = self.model(input_ids, positions, hidden_states)
        return states, states

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = self.logits_processor(self.lm_head, hidden_states)
        if logits is None:
            return None
        if self.has_draft_vocabulary:  # drafting picks among it only, as the module does in generate
            logits = logits.masked_fill(~self.draft_vocabulary[: logits.shape[-1]], float("-inf"))
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        from vllm.model_executor.model_loader.weight_utils import default_weight_loader

        parameters = dict(self.model.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name == "draft_token_ids":
                mask = torch.zeros_like(self.draft_vocabulary)
                mask[tensor.long().to(mask.device)] = True
                self.draft_vocabulary.copy_(mask)
                self.has_draft_vocabulary = True
                continue
            for vllm_name, hf_name, shard in _STACKED_PARAMETERS:
                if hf_name in name:
                    parameter = parameters[name.replace(hf_name, vllm_name)]
                    parameter.weight_loader(parameter, tensor, shard)
                    loaded.add("model." + name.replace(hf_name, vllm_name))
                    break
            else:
                if name not in parameters:
                    raise ValueError(f"The draft folder holds {name!r}, which the recycle drafter has no place for: "
                                     "export it again with `recycle-hf export vllm`.")
                parameter = parameters[name]
                getattr(parameter, "weight_loader", default_weight_loader)(parameter, tensor)
                loaded.add("model." + name)
        return loaded


__all__ = ["ARCHITECTURE", "SUPPORTED_FAMILIES", "EagleRecycleForCausalLM", "RecycleDraftModel", "register"]
