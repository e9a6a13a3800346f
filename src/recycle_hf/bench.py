# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Speed and quality benchmarks of recycle decoding, side by side with transformers' own `generate`.

This is the code behind `recycle-hf bench speed|quality` and `benchmarks/{speed,quality}.py`; both run it unchanged.

Speed: for one model, every decoding mode runs on the same prompts with the same number of new tokens, interleaved
(each repeat visits every mode, in a rotated order) after warm-up, and every ratio is taken between medians of the
same run. The comparators are what users would otherwise run: transformers' default `generate` (dynamic cache,
eager) and its static-cache compiled path (`cache_implementation="static"` + `compile_config`). One extra
instrumented pass per mode times the time spent inside the forwards; what is left is the decoding loop's overhead.

Quality: on held-out text, how often the module's top-1 token equals the base's, the perplexity of the teacher-forced
alternating schedule against the base alone, and verify mode's tokens per base forward (with its output checked
against plain decoding).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CompileConfig, LlamaConfig, OPTConfig, PreTrainedTokenizerBase

from .configuration_recyclegpt import RecycleGPTConfig
from .defaults import DEFAULT_ADAPTER_DIR, DEFAULT_BASE_NAME
from .generation_recyclegpt import DEFAULT_NUM_DRAFT_TOKENS
from .graft import DEFAULT_GRAFT_INIT, graft_recycle_module
from .modeling_recyclegpt import RecycleGPTForCausalLM
from .presets import preset_config


logger = logging.getLogger(__name__)

# Written for these benchmarks (varied tasks and lengths of answer); none is a training prompt of the shipped module.
BENCHMARK_PROMPTS: tuple[str, ...] = (
    "Write a Python function that checks whether a string is a palindrome, and explain how it works.",
    "A train leaves at 3:15 pm and the trip takes 2 hours and 50 minutes. When does it arrive? Show your reasoning.",
    "Tell me a bedtime story about a fox who learns to share.",
    "What is the difference between weather and climate?",
    "Give me five tips for writing a clear cover letter.",
    "Translate into French: 'The library opens at nine and closes at six.'",
    "Explain what a hash table is and when I should use one.",
    "Plan a three-day trip to Rome for someone who loves food and history.",
    "Why is the sky blue? Answer in two or three sentences.",
    "Write a limerick about a cat who hates Mondays.",
    "How do I convert a temperature from Celsius to Fahrenheit? Give an example.",
    "Describe the rules of tic-tac-toe to someone who has never played it.",
    "What should I pack for a weekend hike in the mountains?",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "List the planets of the solar system in order, with one fact about each.",
    "How can a small team keep track of its tasks without special software?",
)

COMPARATOR_MODES = ("hf_generate", "hf_static_compiled", "hf_prompt_lookup")
# transformers' prompt-lookup decoding: candidate tokens copied from the prompt (its own default length).
PROMPT_LOOKUP_TOKENS = 10
DEFAULT_BATCH_SIZES = (1, 4, 16)
DEFAULT_DRAFT_TOKEN_COUNTS = (1, 2, 3, 4, 5)
SPEED_STEM = "speed"
QUALITY_STEM = "quality"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------------------ model shapes
def _llama_7b_shape() -> RecycleGPTConfig:
    # LLaMA-7B's dimensions (Touvron et al. 2023) on the recyclegpt-1.3b preset, with the same 4-block module.
    preset = preset_config("recyclegpt-1.3b")
    llama_7b_dimensions = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    base = LlamaConfig(**{**preset.base_config.to_dict(), **llama_7b_dimensions})
    return RecycleGPTConfig(base_config=base, recycle_num_layers=preset.recycle_num_layers)


def _opt_1_3b_shape() -> RecycleGPTConfig:
    # facebook/opt-1.3b's shape (LayerNorm, learned positions, tied embeddings) with a 4-block module.
    base = OPTConfig(
        vocab_size=50272,
        hidden_size=2048,
        ffn_dim=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        word_embed_proj_dim=2048,
        max_position_embeddings=2048,
        do_layer_norm_before=True,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    return RecycleGPTConfig(base_config=base, recycle_num_layers=4)


# Random-initialised shapes for speed only: alternating-mode speed does not depend on the weights. The `tiny` shape
# exists to check the harness quickly.
BENCHMARK_SHAPES: dict[str, Callable[[], RecycleGPTConfig]] = {
    "llama-1.3b": functools.partial(preset_config, "recyclegpt-1.3b"),
    "llama-7b": _llama_7b_shape,
    "opt-1.3b": _opt_1_3b_shape,
    "tiny": functools.partial(preset_config, "tiny"),
}


# ------------------------------------------------------------------------------------------------------ model loading
@dataclass
class BenchmarkModel:
    """The model under test, its tokenizer (None for random shapes) and how it was obtained (recorded in results)."""

    model: RecycleGPTForCausalLM
    tokenizer: PreTrainedTokenizerBase | None
    description: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return self.model.device


def build_shape_model(
    shape: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> RecycleGPTForCausalLM:
    """A randomly initialised RecycleGPT model of a benchmark shape, built directly on `device` in `dtype`."""
    if shape not in BENCHMARK_SHAPES:
        raise ValueError(f"Unknown shape {shape!r}. Available shapes: {', '.join(sorted(BENCHMARK_SHAPES))}.")
    config = BENCHMARK_SHAPES[shape]()
    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    # Building in place avoids a float32 copy on the CPU first (28 GB for the 7B shape).
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = RecycleGPTForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model = model.to(device=device, dtype=dtype).eval()
    for generation_config in (model.generation_config, model.base_lm.generation_config):
        generation_config.bos_token_id = config.base_config.bos_token_id
        generation_config.eos_token_id = config.base_config.eos_token_id
        generation_config.pad_token_id = config.base_config.pad_token_id
    return model


def _has_adapter(folder: str | os.PathLike) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_benchmark_model(
    model: str | None = None,
    base: str | None = None,
    adapter: str | None = None,
    shape: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> BenchmarkModel:
    """The model to benchmark: a RecycleGPT checkpoint (`model`), a base plus an adapter (`base`, `adapter`), or a
    random shape (`shape`). Exactly one of `model`, `base`, `shape` must be given.

    `base="default"` is the embedded SmolLM2-135M-Instruct. Without `adapter`, the default base gets the shipped
    module when it exists; otherwise the base gets an untrained module, which measures the harness, not the module.
    `dtype` defaults to bfloat16 for shapes and float32 otherwise.
    """
    if sum(choice is not None for choice in (model, base, shape)) != 1:
        raise ValueError("Give exactly one of --model (checkpoint folder), --base (base model) or --shape.")
    if adapter is not None and base is None:
        raise ValueError("--adapter goes with --base (the model the adapter was trained for).")
    dtype_name = dtype or ("bfloat16" if shape is not None else "float32")
    if dtype_name not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype_name!r}; choose one of {', '.join(_DTYPES)}.")

    if shape is not None:
        recycle_model = build_shape_model(shape, _DTYPES[dtype_name], device, seed)
        tokenizer = None
        description = {"name": shape, "source": f"random init (shape {shape!r}, seed {seed})", "module": "random init"}
    elif model is not None:
        from .loading import load_recycle_model

        recycle_model, tokenizer = load_recycle_model(model=model, dtype=dtype_name, device=device)
        description = {"name": str(model), "source": "RecycleGPT checkpoint", "module": f"from checkpoint {model}"}
    else:
        recycle_model, tokenizer, description = _load_base_with_module(base, adapter, dtype_name, device, seed)
    recycle_model.eval()
    description.update(
        dtype=dtype_name,
        device=str(device),
        base_parameters=sum(p.numel() for p in recycle_model.base_lm.parameters()),
        module_parameters=sum(p.numel() for p in recycle_model.recycle_module.parameters()),
        base_model_type=recycle_model.config.base_config.model_type,
    )
    return BenchmarkModel(recycle_model, tokenizer, description)


def _load_base_with_module(
    base: str, adapter: str | None, dtype_name: str, device: str, seed: int
) -> tuple[RecycleGPTForCausalLM, PreTrainedTokenizerBase, dict[str, Any]]:
    from .loading import load_base

    base_model, tokenizer = load_base(base, dtype=dtype_name, device=device)
    if adapter is None and base == "default" and _has_adapter(DEFAULT_ADAPTER_DIR):
        adapter = str(DEFAULT_ADAPTER_DIR)
    if adapter is not None:
        from .adapter import load_recycle_adapter

        recycle_model = load_recycle_adapter(base_model, adapter).to(device)
        module = f"trained adapter {adapter}"
    else:
        logger.warning(
            "No recycle adapter for base %r: grafting an UNTRAINED module. Speeds of the alternating mode are "
            "representative; acceptance and verify-mode speed are not. Pass --adapter DIR for real numbers.",
            base,
        )
        torch.manual_seed(seed)  # the fresh module's random part
        recycle_model = graft_recycle_module(base_model)
        module = f"untrained (freshly grafted, init={DEFAULT_GRAFT_INIT!r})"
    name = DEFAULT_BASE_NAME if base == "default" else str(base)
    return recycle_model, tokenizer, {"name": name, "source": f"base {base!r}", "module": module}


# ------------------------------------------------------------------------------------------------------------ prompts
@dataclass
class PromptBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def digest(self) -> str:
        """A short fingerprint of the exact token ids, so that results can prove they used the same prompts."""
        data = torch.cat([self.input_ids, self.attention_mask]).cpu().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


def read_prompts_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts; write one prompt per line.")
    return prompts


def encode_chat_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], device: str | torch.device
) -> PromptBatch:
    """Each prompt as a user turn of the tokenizer's chat template (plain text without one), left-padded."""
    if getattr(tokenizer, "chat_template", None):
        token_lists = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            for prompt in prompts
        ]
        token_lists = [_token_ids(tokens) for tokens in token_lists]
    else:
        token_lists = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _left_pad(token_lists, pad_token_id, device)


def _token_ids(tokens: Any) -> list[int]:
    # apply_chat_template returns a list, or a BatchEncoding in recent tokenizers.
    if hasattr(tokens, "keys") and "input_ids" in tokens:
        tokens = tokens["input_ids"]
    return [int(token) for token in tokens]


def _left_pad(token_lists: Sequence[Sequence[int]], pad_token_id: int, device: str | torch.device) -> PromptBatch:
    width = max(len(tokens) for tokens in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, tokens in enumerate(token_lists):
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, width - len(tokens) :] = 1
    return PromptBatch(input_ids.to(device), attention_mask.to(device))


def synthetic_prompts(
    vocab_size: int, batch_size: int, length: int, device: str | torch.device, seed: int = 0
) -> PromptBatch:
    """Random token prompts of one length, for random-weight shapes that have no tokenizer."""
    generator = torch.Generator().manual_seed(seed)
    # Ids 3.. avoid the usual special tokens (pad/bos/eos sit at 0..2 in LLaMA and OPT vocabularies).
    input_ids = torch.randint(3, vocab_size, (batch_size, length), generator=generator)
    return PromptBatch(input_ids.to(device), torch.ones_like(input_ids).to(device))


def benchmark_prompt_batch(
    bench_model: BenchmarkModel,
    batch_size: int,
    prompt_length: int,
    seed: int,
    prompts: Sequence[str] = BENCHMARK_PROMPTS,
    first: int = 0,
) -> PromptBatch:
    """`batch_size` prompts from index `first` on (cycled when the list is shorter)."""
    if bench_model.tokenizer is None:
        vocab_size = bench_model.model.config.base_config.vocab_size
        return synthetic_prompts(vocab_size, batch_size, prompt_length, bench_model.device, seed + first)
    rows = [prompts[(first + row) % len(prompts)] for row in range(batch_size)]
    return encode_chat_prompts(bench_model.tokenizer, rows, bench_model.device)


# ------------------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock times cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Wall time spent inside chosen methods of objects (e.g. `model.base_step`), summed per method name.

    The methods are wrapped on the instance for the duration of `wrapping(...)`; on CUDA the device is synchronised
    before and after each call, so the time is the method's own work and not the queue before it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def _timed(self, label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            result = method(*args, **kwargs)
            synchronize(self.device)
            self.seconds[label] += time.perf_counter() - start
            self.calls[label] += 1
            return result

        return timed

    @contextlib.contextmanager
    def wrapping(self, targets: Sequence[tuple[Any, str, str]]) -> Iterator[ForwardTimer]:
        """`targets`: (object, method name, label) triples; the original methods come back on exit."""
        saved: list[tuple[Any, str, Any]] = []
        try:
            for owner, name, label in targets:
                saved.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, self._timed(label, getattr(owner, name)))
            yield self
        finally:
            for owner, name, instance_value in reversed(saved):
                if instance_value is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, instance_value)


# ------------------------------------------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class DecodingMode:
    """One way of decoding: `name` is the label in results; comparators run transformers' `generate` on the base."""

    name: str
    recycle_mode: str | None = None
    num_draft_tokens: int | str | None = None
    comparator: bool = False
    static_compiled: bool = False
    # Recycle modes: None runs the static fast path, "dynamic" the reference loop (`cache_implementation`).
    cache_implementation: str | None = None
    prompt_lookup: bool = False

    @property
    def uses_recycle_loop(self) -> bool:
        return self.recycle_mode is not None


def decoding_modes(
    draft_token_counts: Sequence[int] = DEFAULT_DRAFT_TOKEN_COUNTS, static_compiled: bool = True
) -> list[DecodingMode]:
    """The modes of a speed run, comparators first: transformers' `generate`, its static-cache compiled path and its
    prompt-lookup decoding; our `recycle_mode=None`; `alternate` and `verify` (each draft count and "auto") on the
    fast path, on the reference loop (`_loop`) and, with `static_compiled`, compiled (`_compiled`)."""
    modes = [DecodingMode("hf_generate", comparator=True)]
    if static_compiled:
        modes.append(DecodingMode("hf_static_compiled", comparator=True, static_compiled=True))
    modes.append(DecodingMode("hf_prompt_lookup", comparator=True, prompt_lookup=True))
    modes.append(DecodingMode("recycle_none"))
    recycle = [("alternate", "alternate", 1)]
    recycle += [(f"verify_k{k}", "verify", k) for k in draft_token_counts] + [("verify_auto", "verify", "auto")]
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
    recycle_stats: dict[str, Any] | None = None


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


# ------------------------------------------------------------------------------------------------------ output checks
def compare_outputs(
    reference: torch.Tensor, candidate: torch.Tensor, prompt_width: int, pad_token_id: int
) -> dict[str, Any]:
    """Row by row, are the generated tokens of `candidate` identical to `reference`'s?

    Both are `generate` outputs for the same prompt batch (prompt width `prompt_width`); a shorter output is padded
    with `pad_token_id`, as `generate` pads rows that stopped early. Returns the number of identical rows and, for
    each other row, the index of its first differing new token.
    """
    if reference.shape[0] != candidate.shape[0]:
        raise ValueError(f"Outputs have {reference.shape[0]} and {candidate.shape[0]} rows; compare the same batch.")
    reference_new = reference[:, prompt_width:].cpu()
    candidate_new = candidate[:, prompt_width:].cpu()
    width = max(reference_new.shape[1], candidate_new.shape[1])
    reference_new = F.pad(reference_new, (0, width - reference_new.shape[1]), value=pad_token_id)
    candidate_new = F.pad(candidate_new, (0, width - candidate_new.shape[1]), value=pad_token_id)
    mismatches = []
    for row in range(reference_new.shape[0]):
        differs = (reference_new[row] != candidate_new[row]).nonzero()
        if len(differs) > 0:
            mismatches.append({"row": row, "first_difference": int(differs[0, 0])})
    return {
        "rows": reference_new.shape[0],
        "identical_rows": reference_new.shape[0] - len(mismatches),
        "all_identical": not mismatches,
        "mismatches": mismatches,
    }


# ------------------------------------------------------------------------------------------------------ measurements
@dataclass
class SpeedSettings:
    """What a speed run measures. `static_compile=None` means: on CUDA only (compiling on the CPU is slow)."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    draft_token_counts: tuple[int, ...] = DEFAULT_DRAFT_TOKEN_COUNTS
    mode_names: tuple[str, ...] | None = None
    max_new_tokens: int = 64
    repeats: int = 3
    warmup: int | None = None
    do_sample: bool = False
    static_compile: bool | None = None
    prompt_length: int = 64
    seed: int = 0
    acceptance_from: str | None = None
    # Each timed run of a mode decodes `prompt_sets` batches of different prompts one after the other (batch 1 on
    # one prompt says little: per-prompt speed-ups range from 0.8x to 1.4x).
    prompt_sets: int = 1
    prompts_file: str | None = None

    def validate(self) -> None:
        for name in ("max_new_tokens", "repeats", "prompt_length", "prompt_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more, got {self.warmup}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {self.batch_sizes}.")
        if not self.draft_token_counts or min(self.draft_token_counts) < 1:
            raise ValueError(f"draft token counts must be positive integers, got {self.draft_token_counts}.")

    def resolved_warmup(self, device: torch.device) -> int:
        # Compiled CUDA graphs are recorded over the first calls: accelerators need more warm-up than the CPU.
        if self.warmup is not None:
            return self.warmup
        return 3 if device.type == "cuda" else 1

    def resolved_static_compile(self, device: torch.device) -> bool:
        return self.static_compile if self.static_compile is not None else device.type == "cuda"


@dataclass
class ModeMeasurement:
    """All runs of one mode at one batch size, tagged with the run and prompts they belong to."""

    run_id: str
    prompts_digest: str
    batch_size: int
    max_new_tokens: int
    mode: DecodingMode
    seconds: list[float] = field(default_factory=list)
    warmup_seconds: list[float] = field(default_factory=list)
    tokens_per_row: list[int] = field(default_factory=list)
    recycle_stats: dict[str, Any] | None = None
    forward_seconds: dict[str, float] | None = None
    forward_calls: dict[str, int] | None = None
    instrumented_seconds: float | None = None
    warmup_stats: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    not_applicable: str | None = None

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_second(self) -> float:
        return sum(self.tokens_per_row) / self.median_seconds


def speedup_ratios(measurements: Sequence[ModeMeasurement]) -> dict[str, dict[str, float | None]]:
    """Tokens/s of every mode divided by each comparator's, from the medians of one run at one batch size.

    Raises a `ValueError` when the measurements do not come from the same run, prompts and token budget: a ratio
    between different runs would mix machine states.
    """
    keys = {(m.run_id, m.prompts_digest, m.batch_size, m.max_new_tokens) for m in measurements}
    if len(keys) != 1:
        raise ValueError(
            "Speed-ups must be computed within one run, one batch size, the same prompts and max_new_tokens; got "
            f"{len(keys)} different (run, prompts, batch size, max_new_tokens) combinations."
        )
    comparator_speeds = {
        m.mode.name: m.tokens_per_second for m in measurements if m.mode.comparator and m.error is None and m.seconds
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for measurement in measurements:
        if measurement.error is not None or not measurement.seconds:
            continue
        ratios[measurement.mode.name] = {
            f"vs_{name}": (measurement.tokens_per_second / comparator_speeds[name])
            if name in comparator_speeds
            else None
            for name in COMPARATOR_MODES
        }
    return ratios


def _time_split(measurement: ModeMeasurement, base_forwards: int) -> dict[str, float | None]:
    if measurement.forward_seconds is None or measurement.instrumented_seconds is None:
        return {"loop_overhead_ms_per_step": None, "loop_overhead_fraction": None}
    inside = sum(measurement.forward_seconds.values())
    overhead = max(0.0, measurement.instrumented_seconds - inside)
    split: dict[str, float | None] = {
        f"{label}_ms_per_step": 1000 * seconds / base_forwards
        for label, seconds in measurement.forward_seconds.items()
    }
    split["loop_overhead_ms_per_step"] = 1000 * overhead / base_forwards
    split["loop_overhead_fraction"] = overhead / measurement.instrumented_seconds
    return split


def summarize_measurement(measurement: ModeMeasurement, ratios: dict[str, float | None] | None) -> dict[str, Any]:
    """The reported numbers of one mode at one batch size (see docs/BENCHMARKS.md for their definitions)."""
    mode = measurement.mode
    record: dict[str, Any] = {
        "batch_size": measurement.batch_size,
        "mode": mode.name,
        "recycle_mode": mode.recycle_mode,
        "num_draft_tokens": mode.num_draft_tokens,
        "run_id": measurement.run_id,
        "prompts_digest": measurement.prompts_digest,
        "max_new_tokens": measurement.max_new_tokens,
        "status": "ok" if measurement.error is None else "failed",
    }
    if measurement.not_applicable is not None:
        record.update(status="not_applicable", error=measurement.not_applicable)
        return record
    if measurement.error is not None or not measurement.seconds:
        record["error"] = measurement.error
        return record
    if measurement.warmup_stats:
        # The first call of a compiled mode compiles (or loads inductor's cache): reported apart from decoding.
        record["compile_seconds"] = max(stats.get("compile_seconds", 0.0) for stats in measurement.warmup_stats)
    median = measurement.median_seconds
    tokens_per_row = max(measurement.tokens_per_row)
    stats = measurement.recycle_stats
    # transformers' loop makes one forward per new token (the prefill yields the first).
    base_forwards = stats["base_forwards"] if stats else tokens_per_row
    drafting_steps = max(1, base_forwards - 1) * measurement.batch_size
    record.update(
        seconds=measurement.seconds,
        warmup_seconds=measurement.warmup_seconds,
        seconds_median=median,
        spread_percent=100 * (max(measurement.seconds) - min(measurement.seconds)) / median,
        new_tokens=sum(measurement.tokens_per_row),
        tokens_per_row=tokens_per_row,
        tokens_per_s=measurement.tokens_per_second,
        ms_per_token=1000 * median / tokens_per_row,
        base_forwards=base_forwards,
        base_forwards_per_token=base_forwards / tokens_per_row,
        accepted_drafts_per_step=(stats["accepted_drafts"] / drafting_steps) if stats else None,
        acceptance_rate=stats["acceptance_rate"] if stats else None,
        tokens_per_base_forward=(stats["tokens_per_base_forward"] if stats else 1.0),
        chosen_num_draft_tokens=stats["num_draft_tokens"] if stats else None,
        decoding_path=stats.get("decoding_path") if stats else None,
    )
    for comparator in COMPARATOR_MODES:
        record[f"speedup_vs_{comparator}"] = (ratios or {}).get(f"vs_{comparator}")
    record.update(_time_split(measurement, base_forwards))
    return record


class SpeedBenchmark:
    """One speed run: every mode at every batch size, interleaved, plus the output checks."""

    def __init__(self, bench_model: BenchmarkModel, settings: SpeedSettings):
        settings.validate()
        self.bench_model = bench_model
        self.model = bench_model.model
        self.settings = settings
        self.device = self.model.device
        self.run_id = uuid.uuid4().hex[:12]
        self.modes = self._select_modes()
        self.warmup = settings.resolved_warmup(self.device)
        self.pad_token_id = self._pad_token_id()

    def _select_modes(self) -> list[DecodingMode]:
        static_compile = self.settings.resolved_static_compile(self.device)
        available = decoding_modes(self.settings.draft_token_counts, static_compiled=static_compile)
        if self.settings.mode_names is None:
            return available
        by_name = {mode.name: mode for mode in available}
        unknown = [name for name in self.settings.mode_names if name not in by_name]
        if unknown:
            raise ValueError(
                f"Unknown or disabled mode(s) {unknown}. Available: {', '.join(by_name)} (hf_static_compiled needs "
                "--static-compile on the CPU; verify_kN needs N in --draft-tokens)."
            )
        # hf_generate is the reference of every ratio: always measured.
        names = ["hf_generate", *[name for name in self.settings.mode_names if name != "hf_generate"]]
        return [by_name[name] for name in names]

    def _pad_token_id(self) -> int:
        for source in (
            self.model.generation_config,
            self.model.base_lm.generation_config,
            self.model.config.base_config,
        ):
            value = getattr(source, "pad_token_id", None)
            if value is not None:
                return int(value)
        return 0

    def run(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.timezone.utc)
        environment = environment_info(self.device)
        records: list[dict[str, Any]] = []
        checks: dict[str, Any] = {}
        with fixed_length_generation(self.model):
            texts = read_prompts_file(self.settings.prompts_file) if self.settings.prompts_file else BENCHMARK_PROMPTS
            for batch_size in self.settings.batch_sizes:
                prompts = [
                    benchmark_prompt_batch(self.bench_model, batch_size, self.settings.prompt_length,
                                           self.settings.seed, texts, first=index * batch_size)
                    for index in range(self.settings.prompt_sets)
                ]
                measurements, outputs = self.measure_batch(prompts)
                ratios = speedup_ratios(measurements)
                records += [summarize_measurement(m, ratios.get(m.mode.name)) for m in measurements]
                checks[str(batch_size)] = self.check_outputs(outputs, prompts)
        results = {
            "benchmark": "speed",
            "run_id": self.run_id,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment,
            "model": self.bench_model.description,
            "settings": {
                **dataclasses.asdict(self.settings),
                "warmup": self.warmup,
                "static_compile": self.settings.resolved_static_compile(self.device),
                "modes": [mode.name for mode in self.modes],
                "stop_at_eos": False,
                "prompts": "synthetic random tokens" if self.bench_model.tokenizer is None else (
                    self.settings.prompts_file or "BENCHMARK_PROMPTS"),
            },
            "results": records,
            "checks": checks,
        }
        if self.settings.acceptance_from:
            results["projections"] = project_verify_speed(results, load_results(self.settings.acceptance_from))
        return results

    def measure_batch(
        self, prompt_sets: Sequence[PromptBatch]
    ) -> tuple[list[ModeMeasurement], dict[str, list[torch.Tensor]]]:
        """Warm-up, `repeats` interleaved timed rounds and one instrumented pass per mode, at one batch size; each
        run decodes every prompt set in turn."""
        digest = hashlib.sha256("".join(prompts.digest() for prompts in prompt_sets).encode()).hexdigest()[:16]
        batch_size = prompt_sets[0].batch_size
        measurements = {
            mode.name: ModeMeasurement(self.run_id, digest, batch_size, self.settings.max_new_tokens, mode)
            for mode in self.modes
        }
        outputs: dict[str, list[torch.Tensor]] = {}
        rounds = self.warmup + self.settings.repeats
        progress = tqdm(total=rounds * len(self.modes) + len(self.modes), desc=f"speed, batch {batch_size}",
                        unit="run")
        with progress:
            for round_index in range(rounds):
                # Rotating the order keeps a mode from always following the same neighbour (caches, clocks).
                offset = round_index % len(self.modes)
                for mode in self.modes[offset:] + self.modes[:offset]:
                    self._timed_run(measurements[mode.name], prompt_sets, outputs, timed=round_index >= self.warmup)
                    progress.update()
            for mode in self.modes:
                self._instrumented_run(measurements[mode.name], prompt_sets)
                progress.update()
        return list(measurements.values()), outputs

    def _generate(self, mode: DecodingMode, prompt_sets: Sequence[PromptBatch]) -> list[GenerationRun]:
        return [
            generate_once(self.model, mode, prompts, self.settings.max_new_tokens, self.settings.do_sample,
                          self.pad_token_id, self.settings.seed)
            for prompts in prompt_sets
        ]

    def _timed_run(
        self,
        measurement: ModeMeasurement,
        prompt_sets: Sequence[PromptBatch],
        outputs: dict[str, list[torch.Tensor]],
        timed: bool,
    ) -> None:
        if measurement.error is not None or measurement.not_applicable is not None:
            return
        if measurement.mode.prompt_lookup and prompt_sets[0].batch_size > 1:
            measurement.not_applicable = "transformers' prompt-lookup decoding runs at batch size 1 only"
            return
        try:
            runs = self._generate(measurement.mode, prompt_sets)
        except Exception as error:
            if not measurement.mode.static_compiled:
                raise
            # Compiled modes need a working compiler toolchain: where there is none, that is a result.
            logger.warning("Mode %s failed at batch %d: %s", measurement.mode.name, prompt_sets[0].batch_size, error)
            measurement.error = f"{type(error).__name__}: {error}"
            return
        outputs.setdefault(measurement.mode.name, [run.sequences for run in runs])
        seconds = sum(run.seconds for run in runs)
        stats = merged_recycle_stats([run.recycle_stats for run in runs])
        if not timed:
            measurement.warmup_seconds.append(seconds)
            if stats is not None:
                measurement.warmup_stats.append(stats)
            return
        measurement.seconds.append(seconds)
        # Prompt sets run one after another: a row's tokens add up across them.
        per_set = [_new_tokens_per_row(run.sequences, prompts.width, run.recycle_stats)
                   for run, prompts in zip(runs, prompt_sets)]
        measurement.tokens_per_row = [sum(row) for row in zip(*per_set)]
        measurement.recycle_stats = stats

    def _instrumented_run(self, measurement: ModeMeasurement, prompt_sets: Sequence[PromptBatch]) -> None:
        targets = timer_targets(self.model, measurement.mode)
        if measurement.error is not None or measurement.not_applicable is not None or targets is None:
            return
        timer = ForwardTimer(self.device)
        with timer.wrapping(targets):
            runs = self._generate(measurement.mode, prompt_sets)
        measurement.instrumented_seconds = sum(run.seconds for run in runs)
        measurement.forward_seconds = dict(timer.seconds)
        measurement.forward_calls = dict(timer.calls)

    def check_outputs(self, outputs: dict[str, list[torch.Tensor]], prompt_sets: Sequence[PromptBatch]) -> dict[str, Any]:
        """Greedy decoding must not depend on the mode: every verify output (and the comparators') must equal plain
        decoding (`recycle_mode=None`, or transformers' generate when that mode was left out) on every prompt.
        Sampling draws differ by mode, so nothing is compared then."""
        if self.settings.do_sample:
            return {"skipped": "sampling: outputs are random draws, so modes are not compared token by token"}
        reference = "recycle_none" if "recycle_none" in outputs else "hf_generate"
        checks: dict[str, Any] = {"reference": reference}
        for name, output in outputs.items():
            if name != reference and (name.startswith("verify_") or name in COMPARATOR_MODES):
                per_set = [compare_outputs(expected, candidate, prompts.width, self.pad_token_id)
                           for expected, candidate, prompts in zip(outputs[reference], output, prompt_sets)]
                checks[name] = _merged_checks(per_set)
        verify_checks = [check for name, check in checks.items() if name.startswith("verify_")]
        checks["verify_equals_plain"] = (
            all(check["all_identical"] for check in verify_checks) if verify_checks else None
        )
        return checks


def _merged_checks(per_set: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rows = sum(check["rows"] for check in per_set)
    mismatches = []
    for index, check in enumerate(per_set):
        mismatches += [{**mismatch, "prompt_set": index} for mismatch in check["mismatches"]]
    return {"rows": rows, "identical_rows": rows - len(mismatches), "all_identical": not mismatches,
            "mismatches": mismatches}


_SUMMED_STATS = ("base_forwards", "row_base_forwards", "recycle_forwards", "new_tokens", "drafted_tokens",
                 "accepted_drafts", "compile_seconds", "decoding_seconds")


def merged_recycle_stats(per_set: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One `recycle_stats` for prompt sets decoded in turn: counts and seconds add up, rates are recomputed."""
    if not per_set or per_set[0] is None:
        return None
    merged = dict(per_set[0])
    for name in _SUMMED_STATS:
        if name in merged:
            merged[name] = sum(stats.get(name) or 0 for stats in per_set)
    merged["tokens_per_row"] = [sum(row) for row in zip(*(stats["tokens_per_row"] for stats in per_set))]
    merged["tokens_per_base_forward"] = merged["new_tokens"] / max(1, merged["row_base_forwards"])
    merged["acceptance_rate"] = merged["accepted_drafts"] / merged["drafted_tokens"] if merged["drafted_tokens"] else None
    return merged


def _new_tokens_per_row(sequences: torch.Tensor, prompt_width: int, stats: dict[str, Any] | None) -> list[int]:
    if stats is not None and stats.get("tokens_per_row"):
        return list(stats["tokens_per_row"])
    # Fixed-length generation: every row produced the full width.
    return [sequences.shape[1] - prompt_width] * sequences.shape[0]


def run_speed_benchmark(bench_model: BenchmarkModel, settings: SpeedSettings) -> dict[str, Any]:
    """Run the speed benchmark and return its results (JSON-serialisable; see `write_speed_results`)."""
    return SpeedBenchmark(bench_model, settings).run()


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / f"{SPEED_STEM}.json"
    if not path.is_file():
        raise ValueError(f"No speed results at {path}; pass the speed.json written by an earlier run.")
    return json.loads(path.read_text(encoding="utf-8"))


def project_verify_speed(results: dict[str, Any], real_model_results: dict[str, Any]) -> list[dict[str, Any]]:
    """Verify-mode tokens/s if this model accepted drafts as often as the real model did.

    Random weights accept drafts at no meaningful rate, but a verify step costs about the same whatever is accepted
    (one base forward over k + 1 tokens and k module forwards). So: measured seconds per base forward here, times
    the real model's tokens per base forward for the same k (same batch size when measured, else the smallest).
    """
    real = defaultdict(dict)
    for record in real_model_results.get("results", []):
        if record.get("recycle_mode") == "verify" and record.get("status") == "ok":
            real[record["num_draft_tokens"]][record["batch_size"]] = record["tokens_per_base_forward"]
    by_batch = {(r["batch_size"], r["mode"]): r for r in results["results"] if r.get("status") == "ok"}
    projections = []
    for record in results["results"]:
        k = record.get("num_draft_tokens")
        if record.get("recycle_mode") != "verify" or record.get("status") != "ok" or k not in real:
            continue
        batch_size = record["batch_size"]
        real_batch = batch_size if batch_size in real[k] else min(real[k])
        tokens_per_base_forward = real[k][real_batch]
        seconds_per_base_forward = record["seconds_median"] / record["base_forwards"]
        tokens_per_s = batch_size * tokens_per_base_forward / seconds_per_base_forward
        projection = {
            "batch_size": batch_size,
            "mode": record["mode"],
            "acceptance_source": real_model_results.get("model", {}).get("name"),
            "acceptance_batch_size": real_batch,
            "tokens_per_base_forward": tokens_per_base_forward,
            "projected_tokens_per_s": tokens_per_s,
        }
        for comparator in COMPARATOR_MODES:
            reference = by_batch.get((batch_size, comparator))
            projection[f"projected_speedup_vs_{comparator}"] = (
                tokens_per_s / reference["tokens_per_s"] if reference else None
            )
        projections.append(projection)
    return projections


# --------------------------------------------------------------------------------------------------------- reporting
def environment_info(device: torch.device) -> dict[str, Any]:
    """Machine and library versions, recorded with every result."""
    import transformers

    from . import __version__

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "recycle_hf": __version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine(environment: dict[str, Any]) -> str:
    return environment.get("gpu") or f"{environment['processor']} CPU, {environment['torch_threads']} torch threads"


def _format(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def speed_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of a speed run: one per batch size, then the output checks and any projections."""
    model = results["model"]
    environment = results["environment"]
    settings = results["settings"]
    lines = [
        f"# Speed: {model['name']} ({model['module']})",
        "",
        f"Run `{results['run_id']}`, {results['started']}; {_machine(environment)}, "
        f"{model['dtype']}, torch {environment['torch']}, transformers {environment['transformers']}. "
        f"{settings['max_new_tokens']} new tokens per row ({'sampling' if settings['do_sample'] else 'greedy'}, EOS "
        f"ignored), {settings['repeats']} timed repeats after {settings['warmup']} warm-up; medians, spread = "
        "(max - min) / median.",
        "",
    ]
    header = (
        "| mode | tokens/s | ms/token | spread | base fwd/token | accepted drafts/step | tokens/base fwd "
        "| x HF generate | x HF static compiled | x HF prompt lookup | k | compile s | loop overhead ms/step |"
    )
    for batch_size in settings["batch_sizes"]:
        lines += [f"## Batch size {batch_size}", "", header, "|" + "---|" * 13]
        for record in results["results"]:
            if record["batch_size"] != batch_size:
                continue
            if record["status"] != "ok":
                label = "failed" if record["status"] == "failed" else "n/a"
                lines.append(f"| {record['mode']} | {label}: {record.get('error')} |" + " |" * 11)
                continue
            lines.append(
                f"| {record['mode']} | {_format(record['tokens_per_s'], 1)} | {_format(record['ms_per_token'], 1)} "
                f"| {_format(record['spread_percent'], 0, '%')} | {_format(record['base_forwards_per_token'])} "
                f"| {_format(record['accepted_drafts_per_step'])} | {_format(record['tokens_per_base_forward'])} "
                f"| {_format(record['speedup_vs_hf_generate'])} | {_format(record['speedup_vs_hf_static_compiled'])} "
                f"| {_format(record['speedup_vs_hf_prompt_lookup'])} | {_format(record.get('chosen_num_draft_tokens'))} "
                f"| {_format(record.get('compile_seconds'), 1)} | {_format(record['loop_overhead_ms_per_step'], 1)} |"
            )
        lines += ["", _checks_line(results["checks"].get(str(batch_size), {})), ""]
    if results.get("projections"):
        lines += [
            "## Verify mode with the real model's acceptance (projection)",
            "",
            "| batch | mode | tokens/base fwd (real model) | projected tokens/s | x HF generate "
            "| x HF static compiled |",
            "|---|---|---|---|---|---|",
        ]
        for projection in results["projections"]:
            lines.append(
                f"| {projection['batch_size']} | {projection['mode']} "
                f"| {_format(projection['tokens_per_base_forward'])} "
                f"| {_format(projection['projected_tokens_per_s'], 1)} "
                f"| {_format(projection['projected_speedup_vs_hf_generate'])} "
                f"| {_format(projection['projected_speedup_vs_hf_static_compiled'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _checks_line(checks: dict[str, Any]) -> str:
    if "skipped" in checks:
        return f"Output check skipped: {checks['skipped']}."
    parts = [
        f"{name} {check['identical_rows']}/{check['rows']}"
        for name, check in checks.items()
        if isinstance(check, dict)
    ]
    verdict = {True: "yes", False: "NO", None: "not measured"}[checks.get("verify_equals_plain")]
    return (
        f"Verify output equals plain output on every prompt: **{verdict}** "
        f"(rows identical to {checks.get('reference')}: {', '.join(parts)})."
    )


def plot_speed(results: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG bar chart of tokens/s per mode, one group of bars per batch size, whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in results["results"]))
    batch_sizes = results["settings"]["batch_sizes"]
    by_key = {(r["batch_size"], r["mode"]): r for r in results["results"] if r["status"] == "ok"}
    figure, axes = plt.subplots(figsize=(max(6.0, 2.0 + 1.0 * len(modes)), 4.5))
    width = 0.8 / len(batch_sizes)
    for index, batch_size in enumerate(batch_sizes):
        heights, low, high = [], [], []
        for mode in modes:
            record = by_key.get((batch_size, mode))
            if record is None:
                heights.append(0.0)
                low.append(0.0)
                high.append(0.0)
                continue
            tokens = record["new_tokens"]
            heights.append(record["tokens_per_s"])
            low.append(record["tokens_per_s"] - tokens / max(record["seconds"]))
            high.append(tokens / min(record["seconds"]) - record["tokens_per_s"])
        positions = [m + (index - (len(batch_sizes) - 1) / 2) * width for m in range(len(modes))]
        axes.bar(positions, heights, width, yerr=[low, high], capsize=2, label=f"batch {batch_size}")
    axes.set_xticks(range(len(modes)))
    axes.set_xticklabels(modes, rotation=30, ha="right")
    axes.set_ylabel("new tokens / s (all rows)")
    model = results["model"]
    device = results["environment"].get("gpu", "CPU")
    axes.set_title(f"{model['name']}, module: {model['module']} ({model['dtype']}, {device})", fontsize=9)
    axes.legend()
    figure.tight_layout()
    _atomic_write(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file beside `path`, then rename: an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain file (not mkstemp's private 0600 one), so the result gets the usual permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_speed_results(results: dict[str, Any], output_dir: str | os.PathLike, plot: bool = True) -> list[Path]:
    """Write `speed.json`, `speed.md` and (with `plot`) `speed.png` into `output_dir`; returns their paths."""
    output_dir = Path(output_dir)
    paths = [output_dir / f"{SPEED_STEM}.json", output_dir / f"{SPEED_STEM}.md"]
    write_text_atomic(paths[0], json.dumps(results, indent=2) + "\n")
    write_text_atomic(paths[1], speed_markdown(results))
    if plot:
        paths.append(output_dir / f"{SPEED_STEM}.png")
        plot_speed(results, paths[-1])
    return paths


# ----------------------------------------------------------------------------------------------------------- quality
def alternating_schedule_mask(prompt_width: int, total_width: int, device: torch.device | None = None) -> torch.Tensor:
    """Which positions the alternating schedule serves from the module (True) rather than the base (False).

    Position j predicts token j + 1. Anchored at the continuation start: the base predicts the first new token (from
    the prompt, position `prompt_width - 1`), the module the second, the base the third, and so on.
    """
    positions = torch.arange(total_width, device=device)
    offset = positions - (prompt_width - 1)
    return (offset >= 0) & (offset % 2 == 1)


def continuation_lengths(new_tokens: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """Per row, the number of real new tokens: up to and including the first EOS, else all."""
    is_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
    for eos_token_id in eos_token_ids:
        is_eos |= new_tokens == eos_token_id
    width = new_tokens.shape[1]
    positions = torch.arange(width, device=new_tokens.device).expand_as(new_tokens)
    first_eos = torch.where(is_eos, positions, torch.full_like(positions, width)).min(dim=1).values
    return torch.clamp(first_eos + 1, max=width)


@dataclass
class QualityTotals:
    """Sums over scored positions (those predicting a continuation token)."""

    positions: int = 0
    module_agrees_with_base: int = 0
    module_matches_text: int = 0
    base_nll: float = 0.0
    alternating_nll: float = 0.0
    module_positions: int = 0


def score_continuations(
    model: RecycleGPTForCausalLM,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    totals: QualityTotals,
) -> None:
    """Teacher-forced pass over prompts + continuations; adds agreement and log-likelihood sums to `totals`.

    `attention_mask` covers the whole sequences (0 for left padding and for everything after a row's end).
    """
    with torch.inference_mode():
        output = model(input_ids=sequences, attention_mask=attention_mask)
    logits, recycle_logits = output.logits[:, :-1].float(), output.recycle_logits[:, :-1].float()
    targets = sequences[:, 1:]
    # Scored: positions j >= prompt_width - 1 whose target j + 1 is a real continuation token.
    positions = torch.arange(targets.shape[1], device=sequences.device)
    scored = (positions >= prompt_width - 1).unsqueeze(0) & attention_mask[:, 1:].bool()
    from_module = alternating_schedule_mask(prompt_width, targets.shape[1], sequences.device).unsqueeze(0) & scored

    base_top1 = logits.argmax(-1)
    module_top1 = recycle_logits.argmax(-1)
    base_nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    module_nll = F.cross_entropy(recycle_logits.transpose(1, 2), targets, reduction="none")
    alternating_nll = torch.where(from_module, module_nll, base_nll)

    totals.positions += int(scored.sum())
    totals.module_agrees_with_base += int(((module_top1 == base_top1) & scored).sum())
    totals.module_matches_text += int(((module_top1 == targets) & scored).sum())
    totals.base_nll += float(base_nll[scored].sum())
    totals.alternating_nll += float(alternating_nll[scored].sum())
    totals.module_positions += int(from_module.sum())


@dataclass
class QualitySettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    draft_token_counts: tuple[int, ...] = (DEFAULT_NUM_DRAFT_TOKENS,)
    sample_continuations: bool = False
    seed: int = 0

    def validate(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.draft_token_counts or min(self.draft_token_counts) < 1:
            raise ValueError(f"draft_token_counts must be positive, got {self.draft_token_counts}.")


def run_quality_benchmark(
    bench_model: BenchmarkModel, prompts: Sequence[str], settings: QualitySettings, prompts_source: str
) -> dict[str, Any]:
    """Module quality on held-out prompts (see the module docstring); returns JSON-serialisable results."""
    settings.validate()
    if bench_model.tokenizer is None:
        raise ValueError("The quality benchmark needs a real model with a tokenizer (--model or --base), not --shape.")
    model, tokenizer = bench_model.model, bench_model.tokenizer
    eos_token_ids = _eos_token_ids(model)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_ids[0]
    totals = QualityTotals()
    verify_stats = {k: defaultdict(int) for k in settings.draft_token_counts}
    mismatched_prompts = {k: [] for k in settings.draft_token_counts}
    batches = [prompts[start : start + settings.batch_size] for start in range(0, len(prompts), settings.batch_size)]
    for batch_index, batch_prompts in enumerate(tqdm(batches, desc="quality", unit="batch")):
        batch = encode_chat_prompts(tokenizer, batch_prompts, model.device)
        common = dict(
            attention_mask=batch.attention_mask, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_token_id
        )
        with torch.inference_mode():
            plain = model.generate(batch.input_ids, recycle_mode=None, do_sample=False, **common)
            for k in settings.draft_token_counts:
                verify = model.generate(
                    batch.input_ids,
                    recycle_mode="verify",
                    num_draft_tokens=k,
                    do_sample=False,
                    return_dict_in_generate=True,
                    **common,
                )
                check = compare_outputs(plain, verify.sequences, batch.width, pad_token_id)
                mismatched_prompts[k] += [
                    {"prompt": batch_prompts[m["row"]], "first_difference": m["first_difference"]}
                    for m in check["mismatches"]
                ]
                for name in ("row_base_forwards", "new_tokens", "drafted_tokens", "accepted_drafts"):
                    verify_stats[k][name] += verify.recycle_stats[name]
            text = plain
            if settings.sample_continuations:
                torch.manual_seed(settings.seed + batch_index)
                text = model.generate(batch.input_ids, recycle_mode=None, do_sample=True, **common)

        lengths = continuation_lengths(text[:, batch.width :], eos_token_ids)
        new_positions = torch.arange(text.shape[1] - batch.width, device=text.device).unsqueeze(0)
        continuation_mask = (new_positions < lengths.unsqueeze(1)).to(batch.attention_mask.dtype)
        attention_mask = torch.cat([batch.attention_mask, continuation_mask], dim=1)
        score_continuations(model, text, attention_mask, batch.width, totals)

    return {
        "benchmark": "quality",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment_info(model.device),
        "model": bench_model.description,
        "settings": {**dataclasses.asdict(settings), "prompts": prompts_source, "num_prompts": len(prompts)},
        "scored_positions": totals.positions,
        "module_top1_agreement_with_base": totals.module_agrees_with_base / max(1, totals.positions),
        "module_top1_matches_text": totals.module_matches_text / max(1, totals.positions),
        "perplexity_standard": math.exp(totals.base_nll / max(1, totals.positions)),
        "perplexity_alternating": math.exp(totals.alternating_nll / max(1, totals.positions)),
        "alternating_module_positions": totals.module_positions,
        # Per k: tokens per base forward counted per row while it generates (batch-independent), greedy.
        "verify": {
            str(k): {
                "tokens_per_base_forward": stats["new_tokens"] / max(1, stats["row_base_forwards"]),
                "acceptance_rate": stats["accepted_drafts"] / max(1, stats["drafted_tokens"]),
                "equals_plain": not mismatched_prompts[k],
                "mismatched_prompts": mismatched_prompts[k],
            }
            for k, stats in verify_stats.items()
        },
        "verify_equals_plain": not any(mismatched_prompts.values()),
    }


def _eos_token_ids(model: RecycleGPTForCausalLM) -> list[int]:
    for source in (model.generation_config, model.base_lm.generation_config, model.config.base_config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return [int(token) for token in (value if isinstance(value, (list, tuple)) else [value])]
    return []


def quality_markdown(results: dict[str, Any]) -> str:
    model, settings = results["model"], results["settings"]
    continuation = "sampled" if settings["sample_continuations"] else "greedy"
    verify_rows = []
    for k, verify in results["verify"].items():
        verdict = "yes" if verify["equals_plain"] else f"NO ({len(verify['mismatched_prompts'])} prompts differ)"
        verify_rows.append(
            f"| verify mode, k={k}: tokens per base forward / draft acceptance / output equals plain on every "
            f"prompt | {verify['tokens_per_base_forward']:.3f} / {verify['acceptance_rate']:.3f} / {verdict} |"
        )
    return "\n".join(
        [
            f"# Quality: {model['name']} ({model['module']})",
            "",
            f"{settings['num_prompts']} prompts from {settings['prompts']}, chat template, {continuation} "
            f"continuations of up to {settings['max_new_tokens']} tokens by the base; "
            f"{results['scored_positions']} scored positions.",
            "",
            "| metric | value |",
            "|---|---|",
            "| module top-1 agreement with the base's greedy token "
            f"| {results['module_top1_agreement_with_base']:.3f} |",
            f"| module top-1 equal to the text's next token | {results['module_top1_matches_text']:.3f} |",
            f"| perplexity, base alone (standard) | {results['perplexity_standard']:.3f} |",
            f"| perplexity, alternating schedule (teacher-forced) | {results['perplexity_alternating']:.3f} |",
            *verify_rows,
            "",
        ]
    )


def write_quality_results(results: dict[str, Any], output_dir: str | os.PathLike) -> list[Path]:
    output_dir = Path(output_dir)
    paths = [output_dir / f"{QUALITY_STEM}.json", output_dir / f"{QUALITY_STEM}.md"]
    write_text_atomic(paths[0], json.dumps(results, indent=2) + "\n")
    write_text_atomic(paths[1], quality_markdown(results))
    return paths


# ------------------------------------------------------------------------------------------------ command-line glue
def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model (give one of --model, --base, --shape)")
    source.add_argument("--model", help="RecycleGPT checkpoint folder")
    source.add_argument("--base", help="base causal LM folder, or 'default' for the embedded SmolLM2-135M-Instruct")
    source.add_argument(
        "--adapter",
        help="recycle adapter folder for --base (default base: the shipped module if present, else an untrained one)",
    )
    source.add_argument(
        "--shape", choices=sorted(BENCHMARK_SHAPES), help="random-initialised model shape (speed only)"
    )
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help="default: bfloat16 for --shape, float32 otherwise")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, see OMP_NUM_THREADS)")
    parser.add_argument("--output-dir", default="benchmark-results", help="folder for the JSON/markdown/PNG outputs")


def _benchmark_model_from_args(args: argparse.Namespace) -> BenchmarkModel:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    base = args.base
    if args.model is None and args.base is None and args.shape is None:
        base = "default"
    return load_benchmark_model(args.model, base, args.adapter, args.shape, args.dtype, args.device, args.seed)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `recycle-hf bench speed` and `benchmarks/speed.py`."""
    _add_model_arguments(parser)
    parser.add_argument("--batch-sizes", type=_positive_int_list, default=DEFAULT_BATCH_SIZES, help="e.g. 1,4,16")
    parser.add_argument(
        "--draft-tokens", type=_positive_int_list, default=DEFAULT_DRAFT_TOKEN_COUNTS, help="verify-mode k values"
    )
    parser.add_argument(
        "--modes",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        help="subset of modes, e.g. hf_generate,alternate,verify_k3 (default: all)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed runs per mode first (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument(
        "--static-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="measure transformers' static-cache compiled generate (auto: on CUDA only; compiling on the CPU is slow)",
    )
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens for --shape (random ids)")
    parser.add_argument("--prompts-file", help="prompts, one per line (default: the built-in BENCHMARK_PROMPTS)")
    parser.add_argument("--prompt-sets", type=int, default=1,
                        help="batches of different prompts each timed run decodes in turn (default 1)")
    parser.add_argument(
        "--acceptance-from", help="speed.json of the real model: project verify-mode speed with its acceptance"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot (no matplotlib needed)")


def run_speed_command(args: argparse.Namespace) -> int:
    settings = SpeedSettings(
        batch_sizes=args.batch_sizes,
        draft_token_counts=args.draft_tokens,
        mode_names=args.modes,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        do_sample=args.sample,
        static_compile={"auto": None, "on": True, "off": False}[args.static_compile],
        prompt_length=args.prompt_length,
        seed=args.seed,
        acceptance_from=args.acceptance_from,
        prompt_sets=args.prompt_sets,
        prompts_file=args.prompts_file,
    )
    settings.validate()
    results = run_speed_benchmark(_benchmark_model_from_args(args), settings)
    paths = write_speed_results(results, args.output_dir, plot=not args.no_plot)
    print(speed_markdown(results))
    print("Wrote " + ", ".join(str(path) for path in paths))
    return 0


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `recycle-hf bench quality` and `benchmarks/quality.py`."""
    _add_model_arguments(parser)
    parser.add_argument(
        "--prompts-file", help="held-out prompts, one per line (default: the built-in BENCHMARK_PROMPTS)"
    )
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="continuation length per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--draft-tokens",
        type=_positive_int_list,
        default=(DEFAULT_NUM_DRAFT_TOKENS,),
        help="verify-mode k values, e.g. 1,2,3,4 (default: the library's default k)",
    )
    parser.add_argument(
        "--sample-continuations", action="store_true", help="score sampled (not greedy) base continuations"
    )


def run_quality_command(args: argparse.Namespace) -> int:
    if args.shape is not None:
        raise ValueError(
            "The quality benchmark needs a trained model: use --model or --base [--adapter], not --shape."
        )
    settings = QualitySettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        draft_token_counts=args.draft_tokens,
        sample_continuations=args.sample_continuations,
        seed=args.seed,
    )
    settings.validate()
    if args.prompts_file:
        prompts, source = read_prompts_file(args.prompts_file), str(args.prompts_file)
    else:
        prompts, source = list(BENCHMARK_PROMPTS), "BENCHMARK_PROMPTS"
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}.")
        prompts, source = prompts[: args.limit], f"{source} (first {args.limit})"
    results = run_quality_benchmark(_benchmark_model_from_args(args), prompts, settings, source)
    paths = write_quality_results(results, args.output_dir)
    print(quality_markdown(results))
    print("Wrote " + ", ".join(str(path) for path in paths))
    return 0


__all__ = [
    "BENCHMARK_PROMPTS",
    "BENCHMARK_SHAPES",
    "BenchmarkModel",
    "DecodingMode",
    "ForwardTimer",
    "ModeMeasurement",
    "QualitySettings",
    "SpeedSettings",
    "add_quality_arguments",
    "add_speed_arguments",
    "alternating_schedule_mask",
    "build_shape_model",
    "compare_outputs",
    "continuation_lengths",
    "decoding_modes",
    "encode_chat_prompts",
    "load_benchmark_model",
    "project_verify_speed",
    "quality_markdown",
    "run_quality_benchmark",
    "run_quality_command",
    "run_speed_benchmark",
    "run_speed_command",
    "speed_markdown",
    "speedup_ratios",
    "write_quality_results",
    "write_speed_results",
]
