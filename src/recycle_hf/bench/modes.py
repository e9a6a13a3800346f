# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The decoding modes a speed run compares, and one timed `generate` call of a mode."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig

from ..checkpoint_code.draft_shape_recyclegpt import AUTO, DraftShape
from ..checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from ..checkpoint_code.recycle_stats_recyclegpt import RecycleStats
from .prompts import PromptBatch
from .timing import synchronize


COMPARATOR_MODES = ("hf_generate", "hf_static_compiled", "hf_prompt_lookup")
# transformers' prompt-lookup decoding: candidate tokens copied from the prompt (its own default length).
PROMPT_LOOKUP_TOKENS = 10
DEFAULT_NUM_DRAFT_TOKENS_SWEEP = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class DecodingMode:
    """One way of decoding: `name` is the label in results; comparators run transformers' `generate` on the base."""

    name: str
    recycle_mode: str | None = None
    num_draft_tokens: DraftShape | str | None = None  # a chain, a tree or "auto" (as `generate` takes it)
    comparator: bool = False
    static_compiled: bool = False
    # Recycle modes: None runs the static fast path, "dynamic" the reference loop (`cache_implementation`).
    cache_implementation: str | None = None
    prompt_lookup: bool = False

    @property
    def num_draft_tokens_setting(self) -> Any:
        """`num_draft_tokens` as JSON records it: k, a tree's paths, or "auto" (None for plain modes)."""
        if isinstance(self.num_draft_tokens, DraftShape):
            return self.num_draft_tokens.setting
        return self.num_draft_tokens

    @property
    def uses_recycle_loop(self) -> bool:
        return self.recycle_mode is not None


def tree_mode_name(tree: DraftShape, trees: Sequence[DraftShape]) -> str:
    """`verify_treeN` for a tree of N nodes (`verify_treeN_i` where several given trees have N nodes)."""
    same_size = [other for other in trees if other.num_nodes == tree.num_nodes]
    suffix = f"_{same_size.index(tree) + 1}" if len(same_size) > 1 else ""
    return f"verify_tree{tree.num_nodes}{suffix}"


def decoding_modes(
    num_draft_tokens: Sequence[int | DraftShape] = DEFAULT_NUM_DRAFT_TOKENS_SWEEP, static_compiled: bool = True,
    draft_trees: Sequence[Sequence[Sequence[int]] | DraftShape] = (),
) -> list[DecodingMode]:
    """The modes of a speed run, comparators first: transformers' `generate`, its static-cache compiled path and its
    prompt-lookup decoding; our `recycle_mode=None`; `alternate` and `verify` (each draft count, each draft tree
    as `verify_treeN`, and "auto") on the fast path, on the reference loop (`_loop`) and, with `static_compiled`,
    compiled (`_compiled`)."""
    modes = [DecodingMode("hf_generate", comparator=True)]
    if static_compiled:
        modes.append(DecodingMode("hf_static_compiled", comparator=True, static_compiled=True))
    modes.append(DecodingMode("hf_prompt_lookup", comparator=True, prompt_lookup=True))
    modes.append(DecodingMode("recycle_none"))
    chains = [DraftShape.of(k) for k in num_draft_tokens]
    trees = [DraftShape.of(tree) for tree in draft_trees]
    recycle: list[tuple[str, str, DraftShape | str]] = [("alternate", "alternate", DraftShape.chain(1))]
    recycle += [(f"verify_k{k.num_nodes}", "verify", k) for k in chains]
    recycle += [(tree_mode_name(tree, trees), "verify", tree) for tree in trees]
    recycle += [("verify_auto", "verify", AUTO)]
    for name, recycle_mode, num_draft_tokens in recycle:
        modes.append(DecodingMode(name, recycle_mode=recycle_mode, num_draft_tokens=num_draft_tokens))
    for name, recycle_mode, num_draft_tokens in recycle:
        modes.append(DecodingMode(f"{name}_loop", recycle_mode=recycle_mode, num_draft_tokens=num_draft_tokens,
                                  cache_implementation="dynamic"))
    if static_compiled:
        for name, recycle_mode, num_draft_tokens in recycle:
            modes.append(DecodingMode(f"{name}_compiled", recycle_mode=recycle_mode,
                                      num_draft_tokens=num_draft_tokens, static_compiled=True))
    return modes


@dataclass
class GenerationRun:
    sequences: torch.Tensor
    seconds: float
    recycle_stats: RecycleStats | None = None


@contextlib.contextmanager
def fixed_length_generation(model: RecycleGPTForCausalLM) -> Iterator[None]:
    """Disable end-of-sequence stopping so that every mode produces exactly `max_new_tokens` per row.

    `generate` fills unset values from the model's own generation config, so the EOS id is removed there (on the
    recycle model and its base) for the duration, and restored afterwards.
    """
    configs = [model.generation_config, model.base_lm.generation_config]
    saved = [config.eos_token_id for config in configs]
    try:
        for config in configs:
            config.eos_token_id = None
        yield
    finally:
        for config, eos_token_id in zip(configs, saved):
            config.eos_token_id = eos_token_id


def _static_compile_config(device: torch.device) -> CompileConfig:
    config = CompileConfig()
    # transformers compiles automatically only on accelerators; this flag asks it to compile on the CPU too.
    config._compile_all_devices = device.type != "cuda"
    return config


def generate_once(
    model: RecycleGPTForCausalLM,
    mode: DecodingMode,
    prompts: PromptBatch,
    max_new_tokens: int,
    do_sample: bool,
    pad_token_id: int,
    seed: int = 0,
) -> GenerationRun:
    """One timed `generate` call of `mode` on `prompts`."""
    kwargs: dict[str, Any] = dict(
        attention_mask=prompts.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_token_id,
    )
    if mode.static_compiled:
        kwargs.update(cache_implementation="static", compile_config=_static_compile_config(model.device))
    if mode.comparator:
        generate = model.base_lm.generate
        if mode.prompt_lookup:
            kwargs.update(prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS)
    else:
        generate = model.generate
        kwargs["recycle_mode"] = mode.recycle_mode
        if mode.uses_recycle_loop:
            kwargs.update(num_draft_tokens=mode.num_draft_tokens, return_dict_in_generate=True)
            if mode.cache_implementation is not None:
                kwargs["cache_implementation"] = mode.cache_implementation
    torch.manual_seed(seed)
    synchronize(model.device)
    start = time.perf_counter()
    output = generate(prompts.input_ids, **kwargs)
    synchronize(model.device)
    seconds = time.perf_counter() - start
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return GenerationRun(sequences, seconds, getattr(output, "recycle_stats", None))


def timer_targets(model: RecycleGPTForCausalLM, mode: DecodingMode) -> list[tuple[Any, str, str]] | None:
    """What to time inside `mode`'s forwards; None where wrapping would change what runs (a compiled graph)."""
    if mode.static_compiled or mode.prompt_lookup:
        return None
    if mode.uses_recycle_loop:
        return [
            (model, "base_step", "base_step"),
            (model, "recycle_step", "recycle_step"),
            (model, "vocab_logits", "lm_head"),
        ]
    # transformers' loop (also behind recycle_mode=None): the base's whole forward, LM head included.
    return [(model.base_lm, "forward", "base_forward")]
