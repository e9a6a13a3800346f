# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The prompts the benchmarks decode: built-in or read from a file, chat-templated and left-padded into batches."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..distill import format_prompt, read_prompts
from ..loading import ensure_pad_token
from .models import BenchmarkModel


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


def prompt_texts(prompts_file: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """The prompts of `prompts_file` (read as `recycle-hf distill` reads them), else `BENCHMARK_PROMPTS`; with the
    name that results record for them."""
    if prompts_file:
        return read_prompts([prompts_file]), str(prompts_file)
    return list(BENCHMARK_PROMPTS), "BENCHMARK_PROMPTS"


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


def encode_chat_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], device: str | torch.device
) -> PromptBatch:
    """Each prompt as a user turn of the tokenizer's chat template (plain text without one), left-padded.

    The template writes its own special tokens; plain text gets the tokenizer's.
    """
    texts = [format_prompt(tokenizer, prompt, use_chat_template=True) for prompt in prompts]
    add_special_tokens = not getattr(tokenizer, "chat_template", None)
    padded = ensure_pad_token(tokenizer)(
        texts, add_special_tokens=add_special_tokens, padding=True, padding_side="left", return_tensors="pt"
    )
    return PromptBatch(padded["input_ids"].to(device), padded["attention_mask"].to(device))


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
