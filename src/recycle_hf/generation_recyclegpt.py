# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Recycle decoding inside `generate`: the paper's alternating mode and a lossless draft-and-verify mode.

Each step the recyclable module drafts `k` tokens from states the base already computed, then one base forward
runs over the last committed token and the drafts:

- `alternate` (the paper): k = 1 and the draft is always kept, so each base forward yields two tokens, one from the
  module and one from the base. Lossy: the module's token is never checked.
- `verify`: the base checks every draft (greedy: equal argmax; sampling: the speculative-sampling rule), keeps the
  longest agreeing prefix plus its own next token, and both caches drop what was rejected. Lossless.

This file holds `generate`'s side: the arguments, their checks, and the choice between two implementations of
the modes: the static fast path (`static_generation_recyclegpt.py`: device tensors, fixed shapes, optionally
compiled), used whenever the call allows it, and the reference loop (`reference_loop_recyclegpt.py`), which also
runs processors and stopping criteria that read the whole context, and custom drafters. On the CPU both run their
products over a few rows in the form that is faster there (`few_row_products_recyclegpt.py`).

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, GenerationMixin
from transformers.generation import EosTokenCriteria, LogitsProcessorList, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import logging

from .draft_length_recyclegpt import calibration_key, draft_length_choices, measure_draft_length
from .few_row_products_recyclegpt import few_row_products
from .reference_loop_recyclegpt import CONTEXT_FREE_PROCESSORS, RecycleDecoder, RecycleDrafter
from .static_generation_recyclegpt import DecodingSettings, StaticRecycleDecoder, speculative_acceptance


logger = logging.get_logger(__name__)

RECYCLE_MODES = (None, "alternate", "verify")
# The best k depends on the machine, the batch size and the module (on a 2-core CPU with the shipped SmolLM2 module
# k=3 is best at batch 1 and k=1 at batch 4; on a GPU, where a forward over 4 tokens costs about one over 1, more
# drafts pay): "auto" measures it once per model, device and batch size (draft_length_recyclegpt.py).
DEFAULT_NUM_DRAFT_TOKENS = "auto"
# More drafts than this never pay: acceptance falls with depth, and every draft costs a module forward.
MAX_NUM_DRAFT_TOKENS = 16
# `generate` options that recycle modes cannot honour; each is refused with the reason, never silently ignored.
_UNSUPPORTED_IN_RECYCLE_MODES = {
    "num_beams": "beam search",
    "num_return_sequences": "several return sequences",
    "assistant_model": "assisted decoding",
    "prompt_lookup_num_tokens": "prompt-lookup decoding",
    "output_scores": "per-step scores",
    "output_logits": "per-step logits",
    "output_hidden_states": "hidden states",
    "output_attentions": "attention weights",
}
_UNSET = object()


@dataclass
class RecycleGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus `recycle_stats`: counts of forwards, drafts and tokens for this call."""

    recycle_stats: dict[str, Any] | None = None


def resolve_recycle_mode(mode: Any) -> str | None:
    """Normalise a mode name; `None` and "none" mean plain decoding. Unknown names raise a `ValueError`."""
    if mode is None or mode == "none":
        return None
    if mode not in RECYCLE_MODES:
        raise ValueError(
            f"Unknown recycle_mode {mode!r}. Valid modes: None (or 'none', plain decoding), 'alternate' (the paper's "
            "lossy alternating schedule), 'verify' (lossless draft-and-verify)."
        )
    return mode


class RecycleGenerationMixin:
    """Adds `recycle_mode` and `num_draft_tokens` to `generate`; meant to be listed before `GenerationMixin`."""

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        recycle_mode: Any = _UNSET,
        num_draft_tokens: int | str | None = None,
        recycle_compile: bool | None = None,
        recycle_drafter: RecycleDrafter | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> torch.LongTensor | RecycleGenerateOutput:
        r"""
        `GenerationMixin.generate` with more arguments (the first two can also be set in the `GenerationConfig` or
        the checkpoint's `generation_config.json`):

            recycle_mode (`str` or `None`): `None`/"none" (plain decoding, exactly the base model's own `generate`),
                "alternate" (the paper's schedule: module and base take turns) or "verify" (lossless: the module
                drafts, the base checks).
            num_draft_tokens (`int` or "auto"): drafts per base forward in "verify" mode, 1 to
                `MAX_NUM_DRAFT_TOKENS`; "auto" (default) measures the fastest k for this model, device and batch
                size once, 0 meaning plain decoding.
            recycle_compile (`bool`, *optional*): compile the fast path's step. By default it is compiled as
                transformers compiles its own decoding: with `cache_implementation="static"` or a `compile_config`,
                on CUDA, or anywhere when `compile_config._compile_all_devices` is set.
            recycle_drafter (`RecycleDrafter`, *optional*): proposes the drafts in place of the module (an object
                with `draft(decoder, num_drafts)` and `update(decoder, num_drafts, accepted)`, see
                `reference_loop_recyclegpt.py`); runs on the reference loop and needs an integer `num_draft_tokens`.

        Recycle modes decode on the static fast path (`static_generation_recyclegpt.py`) unless the call needs the
        reference loop (processors or stopping criteria that read the whole context, `cache_implementation=
        "dynamic"`); `cache_implementation="static"` insists on the fast path. With `return_dict_in_generate=True`
        the output also carries `recycle_stats`.
        """
        base_generation_config = generation_config if generation_config is not None else self.generation_config
        if recycle_mode is _UNSET:
            recycle_mode = getattr(base_generation_config, "recycle_mode", None)
        mode = resolve_recycle_mode(recycle_mode)
        if num_draft_tokens is None:
            num_draft_tokens = getattr(base_generation_config, "num_draft_tokens", None) or DEFAULT_NUM_DRAFT_TOKENS
        check_num_draft_tokens(num_draft_tokens)
        check_drafter(recycle_drafter, mode, num_draft_tokens)
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 0:
            raise ValueError("generate got an empty prompt: give every row at least one token (e.g. the BOS token).")

        # Merge the call's generation arguments here, so that `generate` below sees one complete config.
        generation_config = _without_recycle_settings(base_generation_config)
        kwargs = generation_config.update(**kwargs)
        if mode == "verify" and num_draft_tokens == "auto":
            num_draft_tokens = self.auto_draft_length(input_ids, kwargs.get("attention_mask"), generation_config)
            if num_draft_tokens == 0:
                logger.info("num_draft_tokens='auto': plain decoding is fastest for this batch here.")
                mode = None
        if mode is None:
            return self.base_lm.generate(inputs, generation_config=generation_config, streamer=streamer, **kwargs)

        for name, feature in _UNSUPPORTED_IN_RECYCLE_MODES.items():
            value = kwargs.get(name, getattr(generation_config, name, None))
            if value is not None and value is not False and not (value == 1 and type(value) is int):
                raise ValueError(
                    f"{name}={value!r} is not supported with recycle_mode={mode!r} ({feature}); use "
                    "recycle_mode=None for it."
                )
        # The caches are the decoding loop's own: transformers must not build one for the composite config.
        cache_implementation = generation_config.cache_implementation
        compile_config = generation_config.compile_config
        generation_config.cache_implementation = None
        generation_config.compile_config = None
        if cache_implementation not in (None, "static", "dynamic"):
            raise ValueError(
                f"cache_implementation={cache_implementation!r} is not supported with recycle_mode={mode!r}: use "
                "'static' (the compiled fast path), 'dynamic' (the reference loop) or leave it unset."
            )
        if recycle_compile is None:
            recycle_compile = _compiles_like_transformers(
                cache_implementation, compile_config, generation_config.disable_compile, self.device
            )
        decoding = functools.partial(
            recycle_decoding,
            recycle_mode=mode,
            num_draft_tokens=1 if mode == "alternate" else num_draft_tokens,
            recycle_streamer=streamer,
            recycle_drafter=recycle_drafter,
            recycle_cache_implementation=cache_implementation,
            recycle_compile_options=_compile_options(compile_config, self.device) if recycle_compile else None,
        )
        return GenerationMixin.generate(
            self,
            inputs,
            generation_config=generation_config,
            streamer=streamer,
            custom_generate=decoding,
            **kwargs,
        )

    def auto_draft_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, generation_config: GenerationConfig
    ) -> int:
        """`num_draft_tokens="auto"` for this batch: measured once per model, dtype, device and batch size."""
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError("num_draft_tokens='auto' needs input_ids; pass an integer num_draft_tokens instead.")
        key = calibration_key(self, input_ids.shape[0], "verify")
        return draft_length_choices(self).resolve(key, lambda: measure_draft_length(self, input_ids, attention_mask))


def check_num_draft_tokens(num_draft_tokens: Any) -> None:
    """`num_draft_tokens` is "auto" or an integer from 1 to MAX_NUM_DRAFT_TOKENS (not a bool); else a ValueError."""
    if num_draft_tokens == "auto" and isinstance(num_draft_tokens, str):
        return
    if type(num_draft_tokens) is not int or not 1 <= num_draft_tokens <= MAX_NUM_DRAFT_TOKENS:
        raise ValueError(
            f"num_draft_tokens must be 'auto' or an integer from 1 to {MAX_NUM_DRAFT_TOKENS}, got "
            f"{num_draft_tokens!r}."
        )


def check_drafter(drafter: Any, mode: str | None, num_draft_tokens: int | str) -> None:
    """A custom drafter needs a recycle mode, a fixed draft length and both of `RecycleDrafter`'s methods."""
    if drafter is None:
        return
    if mode is None:
        raise ValueError("recycle_drafter drafts for recycle modes only: pass recycle_mode='verify' or 'alternate'.")
    if num_draft_tokens == "auto":
        raise ValueError("num_draft_tokens='auto' measures the module, not a custom drafter: pass an integer.")
    if not all(callable(getattr(drafter, name, None)) for name in ("draft", "update")):
        raise ValueError(f"recycle_drafter must have draft(decoder, num_drafts) and update(decoder, num_drafts, "
                         f"accepted) methods; {type(drafter).__name__} lacks one.")


def _compiles_like_transformers(
    cache_implementation: str | None, compile_config: CompileConfig | None, disable_compile: bool, device: torch.device
) -> bool:
    """transformers' rule for compiling its decoding step: asked for (static cache or a compile config), not
    disabled, and on an accelerator unless `compile_config._compile_all_devices` is set."""
    asked = cache_implementation == "static" or compile_config is not None
    all_devices = compile_config is not None and bool(compile_config._compile_all_devices)
    return asked and not disable_compile and (device.type != "cpu" or all_devices)


def _compile_options(compile_config: CompileConfig | None, device: torch.device) -> dict[str, Any]:
    """`torch.compile` arguments for the fast path's step: the user's backend, mode and options, one whole graph of
    static shapes (the step is written for that). CUDA graphs ("reduce-overhead") only where there is CUDA."""
    config = compile_config or CompileConfig()
    mode = config.mode if device.type == "cuda" else None
    options = {"fullgraph": True, "dynamic": False, "backend": config.backend}
    if config.options:
        options["options"] = config.options
    elif mode is not None:
        options["mode"] = mode
    return options


def _without_recycle_settings(generation_config: GenerationConfig) -> GenerationConfig:
    generation_config = copy.deepcopy(generation_config)
    for name in ("recycle_mode", "num_draft_tokens"):
        if hasattr(generation_config, name):
            delattr(generation_config, name)
    return generation_config


def recycle_decoding(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    recycle_mode: str = "alternate",
    num_draft_tokens: int = 1,
    recycle_streamer: Any = None,
    recycle_drafter: RecycleDrafter | None = None,
    recycle_cache_implementation: str | None = None,
    recycle_compile_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor | RecycleGenerateOutput:
    """The decoding loop `generate` calls (as its `custom_generate`) after its usual preparation: the static fast
    path where the call allows it, else the reference loop (`RecycleDecoder`)."""
    pad_token_id = generation_config._pad_token_tensor
    settings = DecodingSettings(
        mode=recycle_mode,
        num_draft_tokens=num_draft_tokens,
        do_sample=bool(generation_config.do_sample),
        logits_processor=logits_processor,
        stopping_criteria=stopping_criteria,
        streamer=recycle_streamer,
        pad_token_id=int(pad_token_id) if pad_token_id is not None else 0,
        max_new_tokens=generation_config.max_length - input_ids.shape[1],
    )
    attention_mask = model_kwargs.get("attention_mask")
    reason = None if recycle_cache_implementation != "dynamic" else "cache_implementation='dynamic' was asked for"
    reason = reason or static_path_obstacle(model, settings, recycle_drafter)
    if reason is not None and recycle_cache_implementation == "static":
        raise ValueError(f"cache_implementation='static' cannot decode this call: {reason}. Leave it unset to use the "
                         "reference loop.")
    use_static_path = reason is None and settings.max_new_tokens > 0
    with few_row_products(model, input_ids.device):
        if use_static_path:
            decoder = StaticRecycleDecoder(model, input_ids, attention_mask, settings,
                                           generation_config._eos_token_tensor, recycle_compile_options)
            sequences, stats = decoder.run()
        else:
            if reason is not None and recycle_cache_implementation is None:
                _log_reference_loop_once(reason)
            loop = RecycleDecoder(model, input_ids, attention_mask, settings, recycle_drafter)
            sequences = loop.run()
            stats = loop.stats.as_dict()
    if generation_config.return_dict_in_generate:
        stats.update(batch_size=input_ids.shape[0], mode=recycle_mode, num_draft_tokens=num_draft_tokens,
                     decoding_path="static" if use_static_path else "reference_loop")
        return RecycleGenerateOutput(sequences=sequences, recycle_stats=stats)
    return sequences


# Stopping criteria the fast path applies inside its step (the token budget and EOS).
_STATIC_STOPPING_CRITERIA = (MaxLengthCriteria, EosTokenCriteria)


def static_path_obstacle(model: Any, settings: DecodingSettings, drafter: RecycleDrafter | None = None) -> str | None:
    """Why this call cannot run on the static fast path, or None when it can."""
    if drafter is not None:
        return "a custom recycle_drafter was given"
    for processor in settings.logits_processor:
        if not isinstance(processor, CONTEXT_FREE_PROCESSORS):
            return f"the logits processor {type(processor).__name__} reads the generated context"
    for criterion in settings.stopping_criteria:
        if not isinstance(criterion, _STATIC_STOPPING_CRITERIA):
            return f"the stopping criterion {type(criterion).__name__} runs on the host"
    base_config = model.config.base_config
    if base_config._attn_implementation not in ("sdpa", "eager"):
        return f"attention implementation {base_config._attn_implementation!r} (the fast path builds sdpa/eager masks)"
    layer_types = getattr(base_config, "layer_types", None) or ["full_attention"]
    sliding = getattr(base_config, "use_sliding_window", False)
    if sliding or any(layer_type != "full_attention" for layer_type in layer_types):
        return "the base has sliding-window layers"
    return None


@functools.lru_cache(maxsize=None)
def _log_reference_loop_once(reason: str) -> None:
    logger.info("Recycle decoding runs on the reference loop: %s.", reason)


__all__ = [
    "DEFAULT_NUM_DRAFT_TOKENS",
    "MAX_NUM_DRAFT_TOKENS",
    "check_drafter",
    "check_num_draft_tokens",
    "static_path_obstacle",
    "RECYCLE_MODES",
    "RecycleDecoder",
    "RecycleGenerateOutput",
    "RecycleGenerationMixin",
    "recycle_decoding",
    "resolve_recycle_mode",
    "speculative_acceptance",
]
