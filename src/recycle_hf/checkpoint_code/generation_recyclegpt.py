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
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, GenerationMixin
from transformers.generation import EosTokenCriteria, LogitsProcessorList, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import logging

from .draft_length_recyclegpt import ResolvedChoice, calibration_key, draft_length_choices, measure_draft_length
from .draft_shape_recyclegpt import AUTO, MAX_NUM_DRAFT_TOKENS, DraftShape, check_tree_decoding, draft_request
from .few_row_products_recyclegpt import few_row_products
from .recycle_stats_recyclegpt import RecycleStats
from .reference_loop_recyclegpt import CONTEXT_FREE_PROCESSORS, RecycleDecoder, RecycleDrafter
from .runtime_recyclegpt import decoding_runtime
from .static_generation_recyclegpt import DecodingSettings, speculative_acceptance
from .tree_generation_recyclegpt import static_decoder_class


logger = logging.get_logger(__name__)

RECYCLE_MODES = (None, "alternate", "verify")
# The best shape depends on the machine, the batch size and the module (docs/BENCHMARKS.md has the measurements): so
# "auto" measures it once per model, device and batch size (draft_length_recyclegpt.py).
DEFAULT_NUM_DRAFT_TOKENS = AUTO
# Inductor options of the compiled step on the CPU (see `_compile_options`).
CPU_INDUCTOR_OPTIONS = {"cpp_wrapper": True}
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

    recycle_stats: RecycleStats | None = None


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
        num_draft_tokens: int | str | list[list[int]] | DraftShape | None = None,
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
            num_draft_tokens (`int`, "auto", a draft tree or a `DraftShape`): drafts per base forward in "verify"
                mode, 0 to `MAX_NUM_DRAFT_TOKENS` (a chain), 0 meaning plain decoding; or a tree of drafts as a list
                of paths of candidate ranks, e.g. `[[0], [1], [0, 0]]` (`draft_shape_recyclegpt.py`: greedy
                decoding only, all its nodes checked in one base forward); "auto" (default) measures the fastest
                chain or tree for this model, device and batch size once (it may choose 0; sampling calls choose
                among chains). Built once into a `DraftShape`, the one value settings and the step carry.
                Alternate mode drafts one token per base forward: it takes "auto" or 1 and refuses other values (a
                value from a generation config is verify mode's).
            recycle_compile (`bool`, *optional*): compile the fast path's step. By default it is compiled as
                transformers compiles its own decoding: with `cache_implementation="static"` or a `compile_config`,
                on CUDA, or anywhere when `compile_config._compile_all_devices` is set.
            recycle_drafter (`RecycleDrafter`, *optional*): proposes the drafts in place of the module (an object
                with `draft(decoder, num_draft_tokens)` and `update(decoder, num_draft_tokens, accepted)`, see
                `reference_loop_recyclegpt.py`); runs on the reference loop and, in verify mode, needs an integer
                `num_draft_tokens` of at least 1.

        Recycle modes decode on the static fast path (`static_generation_recyclegpt.py`) unless the call needs the
        reference loop (processors or stopping criteria that read the whole context, an attention mask that is not
        left padding, `cache_implementation="dynamic"`); `cache_implementation="static"` insists on the fast path.
        With `return_dict_in_generate=True` the output is a `RecycleGenerateOutput` with `recycle_stats`, also when
        verify mode decodes plainly (k = 0, asked for or chosen by "auto").

        Calls in recycle modes on one model object run one at a time (a lock held for the call: the fast path pools
        its caches for the model, in its `DecodingRuntime`, and redirects some of its layers while it decodes);
        other threads' plain decoding of the same model is not held up and never sees the redirection. Use one
        model object per thread to decode in parallel.
        """
        base_generation_config = generation_config if generation_config is not None else self.generation_config
        if recycle_mode is _UNSET:
            recycle_mode = getattr(base_generation_config, "recycle_mode", None)
        mode = resolve_recycle_mode(recycle_mode)
        draft_shape = resolve_num_draft_tokens(mode, num_draft_tokens, base_generation_config)
        check_drafter(recycle_drafter, mode, draft_shape)
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        check_token_ids(input_ids, self.get_input_embeddings().weight.shape[0])

        # Merge the call's generation arguments here, so that `generate` below sees one complete config.
        generation_config = _without_recycle_settings(base_generation_config)
        kwargs = generation_config.update(**kwargs)
        if mode == "verify" and draft_shape != AUTO and not draft_shape.is_chain:
            check_tree_decoding(mode, bool(generation_config.do_sample))
        if mode is None:
            return self.base_lm.generate(inputs, generation_config=generation_config, streamer=streamer, **kwargs)

        for name, feature in _UNSUPPORTED_IN_RECYCLE_MODES.items():
            value = kwargs.get(name, getattr(generation_config, name, None))
            if value is not None and value is not False and not (value == 1 and type(value) is int):
                raise ValueError(
                    f"{name}={value!r} is not supported with recycle_mode={mode!r} ({feature}); use "
                    "recycle_mode=None for it."
                )
        check_recycle_prompt(self, input_ids, kwargs.get("attention_mask"), generation_config)
        with decoding_runtime(self).lock:  # recycle-mode calls on one model run one at a time
            draft_source = "given"
            if draft_shape == AUTO:
                resolved = self.auto_draft_length(input_ids, kwargs.get("attention_mask"), generation_config)
                draft_shape, draft_source = resolved.value, f"auto, {resolved.source}"
            if draft_shape.num_nodes == 0:
                logger.info("num_draft_tokens=0: verify mode decodes plainly (the base's own generate).")
                return plain_verify_decoding(self, inputs, generation_config, streamer, kwargs, draft_source)
            return self._recycle_generate(inputs, generation_config, mode, draft_shape, recycle_compile,
                                          recycle_drafter, streamer, kwargs, draft_source)

    def _recycle_generate(
        self,
        inputs: torch.Tensor | None,
        generation_config: GenerationConfig,
        mode: str,
        draft_shape: DraftShape,
        recycle_compile: bool | None,
        recycle_drafter: RecycleDrafter | None,
        streamer: Any,
        kwargs: dict[str, Any],
        draft_source: str = "given",
    ) -> torch.LongTensor | RecycleGenerateOutput:
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
            recycle_draft_shape=draft_shape,
            recycle_streamer=streamer,
            recycle_drafter=recycle_drafter,
            recycle_cache_implementation=cache_implementation,
            recycle_compile_options=_compile_options(compile_config, self.device) if recycle_compile else None,
            recycle_draft_source=draft_source,
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
    ) -> ResolvedChoice:
        """`num_draft_tokens="auto"` for this batch, and where it came from: measured once per model, dtype,
        device and batch size (and whether the call samples: sampling decodes chains only)."""
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError("num_draft_tokens='auto' needs input_ids; pass an integer num_draft_tokens instead.")
        trees = not generation_config.do_sample
        key = calibration_key(self, input_ids.shape[0], "verify" if trees else "verify-chains")
        return draft_length_choices(self).resolve(
            key, input_ids.shape[0], lambda: measure_draft_length(self, input_ids, attention_mask, trees=trees)
        )


def resolve_num_draft_tokens(
    mode: str | None, num_draft_tokens: Any, generation_config: GenerationConfig
) -> DraftShape | str:
    """The draft shape a call decodes with (a `DraftShape`, or `AUTO` to measure one): the argument, else the
    generation config's, else "auto"; built and checked once, here (`draft_request`). Alternate mode drafts one
    token per base forward: a chain of 1."""
    explicit = num_draft_tokens is not None
    if not explicit:
        num_draft_tokens = getattr(generation_config, "num_draft_tokens", None)
        num_draft_tokens = DEFAULT_NUM_DRAFT_TOKENS if num_draft_tokens is None else num_draft_tokens
    request = draft_request(num_draft_tokens)
    if mode != "alternate":
        return request
    if explicit and request not in (AUTO, DraftShape.chain(1)):
        raise ValueError(
            f"num_draft_tokens={num_draft_tokens!r} does not apply to recycle_mode='alternate', which drafts one "
            "token per base forward: drop it, or use recycle_mode='verify'."
        )
    return DraftShape.chain(1)


def check_drafter(drafter: Any, mode: str | None, draft_shape: DraftShape | str) -> None:
    """A custom drafter needs a recycle mode, in verify mode a fixed draft count of at least 1, and both of
    `RecycleDrafter`'s methods."""
    if drafter is None:
        return
    if mode is None:
        raise ValueError("recycle_drafter drafts for recycle modes only: pass recycle_mode='verify' or 'alternate'.")
    if draft_shape == AUTO:
        raise ValueError("num_draft_tokens='auto' measures the module, not a custom drafter: pass an integer.")
    if not draft_shape.is_chain:
        raise ValueError("A recycle_drafter drafts chains: pass an integer num_draft_tokens, not a tree.")
    if draft_shape.num_nodes == 0:
        raise ValueError("num_draft_tokens=0 decodes without drafts: a recycle_drafter needs at least 1.")
    if not all(callable(getattr(drafter, name, None)) for name in ("draft", "update")):
        raise ValueError(f"recycle_drafter must have draft(decoder, num_draft_tokens) and update(decoder, "
                         f"num_draft_tokens, accepted) methods; {type(drafter).__name__} lacks one.")


def check_token_ids(input_ids: Any, vocab_size: int) -> None:
    """`input_ids` must be [batch, tokens] with at least one token per row, every id in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor):
        return  # inputs_embeds: transformers checks those
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D [batch, tokens], got shape {tuple(input_ids.shape)}: for one "
                         "prompt pass input_ids.unsqueeze(0) (a tokenizer with return_tensors='pt' does).")
    if input_ids.shape[1] == 0:
        raise ValueError("generate got an empty prompt: give every row at least one token (e.g. the BOS token).")
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if bool(outside.any()):
        row, column = (int(i) for i in outside.nonzero()[0])
        raise ValueError(f"input_ids[{row}, {column}] = {int(input_ids[row, column])} is not a token id of this "
                         f"model (vocabulary size {vocab_size}): encode the prompt with the model's own tokenizer.")


def check_recycle_prompt(
    model: Any, input_ids: Any, attention_mask: torch.Tensor | None, generation_config: GenerationConfig
) -> None:
    """What recycle modes refuse before decoding, where they could not match plain decoding: a row without a real
    token, and positions past the learned position embeddings of a base that has them (OPT, GPT-2, ...)."""
    if attention_mask is not None and attention_mask.dim() == 2:
        empty = ~attention_mask.bool().any(dim=1)
        if bool(empty.any()):
            raise ValueError(f"attention_mask row {int(empty.nonzero()[0])} is all zeros (only padding): every row "
                             "needs at least one real token; drop the row or give it the BOS token.")
    if not isinstance(input_ids, torch.Tensor):
        return
    max_positions = getattr(model.config.base_config, "max_position_embeddings", None)
    if not max_positions or not has_learned_positions(model):
        return
    width = input_ids.shape[1]
    longest_prompt = int(attention_mask.sum(dim=1).max()) if attention_mask is not None else width
    budget = generation_config.max_new_tokens
    budget = budget if budget is not None else generation_config.max_length - width
    # The last new token is never fed back: a sequence may be one longer than the positions.
    if longest_prompt + budget > max_positions + 1:
        raise ValueError(
            f"The prompt ({longest_prompt} tokens) plus max_new_tokens ({budget}) runs past the base's "
            f"{max_positions} learned positions (max_position_embeddings): ask for at most "
            f"{max_positions + 1 - longest_prompt} new tokens."
        )


def has_learned_positions(model: Any) -> bool:
    """Whether the base looks positions up in a table (OPT, GPT-2, ...) rather than rotating (LLaMA, Qwen2, ...):
    then positions past `max_position_embeddings` do not exist."""
    return model.rotary_embedding is None


def plain_verify_decoding(
    model: Any,
    inputs: torch.Tensor | None,
    generation_config: GenerationConfig,
    streamer: Any,
    kwargs: dict[str, Any],
    draft_source: str = "given",
) -> torch.LongTensor | RecycleGenerateOutput:
    """Verify mode with k = 0: the base's own `generate`, returned as verify mode returns (with `recycle_stats`)."""
    started = time.perf_counter()
    output = model.base_lm.generate(inputs, generation_config=generation_config, streamer=streamer, **kwargs)
    if not generation_config.return_dict_in_generate:
        return output
    input_ids = inputs if inputs is not None else kwargs.get("input_ids")
    new_ids = output.sequences[:, input_ids.shape[1]:]
    eos = generation_config.eos_token_id
    eos = model.generation_config.eos_token_id if eos is None else eos
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=new_ids.device)
    is_eos = (new_ids.unsqueeze(-1) == eos_ids).any(dim=-1) if eos_ids.numel() else torch.zeros_like(new_ids).bool()
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, new_ids.shape[1])
    tokens_per_row = first_eos.tolist()
    stats = RecycleStats(
        batch_size=new_ids.shape[0],
        mode="verify",
        num_draft_tokens=0,
        num_draft_tokens_source=draft_source,
        decoding_path="plain",
        base_forwards=new_ids.shape[1],
        row_base_forwards=sum(tokens_per_row),
        new_tokens=sum(tokens_per_row),
        tokens_per_row=tokens_per_row,
        decoding_seconds=time.perf_counter() - started,
    )
    return RecycleGenerateOutput(**dict(output), recycle_stats=stats)


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
    static shapes (the step is written for that). CUDA graphs ("reduce-overhead") only where there is CUDA.

    On the CPU, inductor's graph is called through its C++ wrapper (`CPU_INDUCTOR_OPTIONS`) unless the user gives
    options: a step calls some hundreds of kernels and products, and where no CUDA graph replays them the Python
    wrapper's per-call cost is a sizeable part of the step. The kernels, and so the tokens, are the same."""
    config = compile_config or CompileConfig()
    mode = config.mode if device.type == "cuda" else None
    options = {"fullgraph": True, "dynamic": False, "backend": config.backend}
    if config.options:
        options["options"] = config.options
    elif mode is not None:
        options["mode"] = mode
    elif device.type == "cpu" and config.backend == "inductor":
        options["options"] = dict(CPU_INDUCTOR_OPTIONS)
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
    recycle_draft_shape: DraftShape = DraftShape.chain(1),
    recycle_streamer: Any = None,
    recycle_drafter: RecycleDrafter | None = None,
    recycle_cache_implementation: str | None = None,
    recycle_compile_options: dict[str, Any] | None = None,
    recycle_draft_source: str = "given",
    **model_kwargs: Any,
) -> torch.LongTensor | RecycleGenerateOutput:
    """The decoding loop `generate` calls (as its `custom_generate`) after its usual preparation: the static fast
    path where the call allows it, else the reference loop (`RecycleDecoder`)."""
    pad_token_id = generation_config._pad_token_tensor
    settings = DecodingSettings(
        mode=recycle_mode,
        draft_shape=recycle_draft_shape,
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
    if reason is None and attention_mask is not None and not is_left_padding(attention_mask):
        reason = "the attention mask is not left padding (a 0 after a 1; tokenizers pad left with padding_side='left')"
    if reason is not None and recycle_cache_implementation == "static":
        raise ValueError(f"cache_implementation='static' cannot decode this call: {reason}. Leave it unset to use the "
                         "reference loop.")
    use_static_path = reason is None and settings.max_new_tokens > 0
    with few_row_products(model, input_ids.device):
        if use_static_path:
            decoder_class = static_decoder_class(settings)
            decoder = decoder_class(model, input_ids, attention_mask, settings, generation_config._eos_token_tensor,
                                    recycle_compile_options)
            sequences, stats = decoder.run()
        else:
            if reason is not None and recycle_cache_implementation is None:
                _log_reference_loop_once(reason)
            if not settings.draft_shape.is_chain:
                # The reference loop drafts chains; verify mode is lossless with either, only the speed differs.
                depth = settings.draft_shape.depth
                _log_reference_loop_once(f"it drafts a chain of the tree's depth, {depth}")
                settings.draft_shape = DraftShape.chain(depth)
            loop = RecycleDecoder(model, input_ids, attention_mask, settings, recycle_drafter)
            sequences = loop.run()
            stats = loop.stats
    if generation_config.return_dict_in_generate:
        stats.num_draft_tokens, stats.num_draft_tokens_source = recycle_draft_shape.setting, recycle_draft_source
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


def is_left_padding(attention_mask: torch.Tensor) -> bool:
    """Whether every row of a 2-D mask is zeros, then ones (the fast path lays rows out so)."""
    return bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all())


@functools.lru_cache(maxsize=None)
def _log_reference_loop_once(reason: str) -> None:
    logger.info("Recycle decoding runs on the reference loop: %s.", reason)


__all__ = [
    "DEFAULT_NUM_DRAFT_TOKENS",
    "MAX_NUM_DRAFT_TOKENS",
    "check_drafter",
    "check_recycle_prompt",
    "check_token_ids",
    "resolve_num_draft_tokens",
    "static_path_obstacle",
    "RECYCLE_MODES",
    "RecycleDecoder",
    "RecycleGenerateOutput",
    "RecycleGenerationMixin",
    "recycle_decoding",
    "resolve_recycle_mode",
    "speculative_acceptance",
]
