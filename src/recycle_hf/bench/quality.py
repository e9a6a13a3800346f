# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The quality benchmark: on held-out prompts, how often the module's top-1 token equals the base's, the perplexity
of the teacher-forced alternating schedule against the base alone, and verify mode's tokens per base forward (with
its output checked against plain decoding)."""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint_code.draft_length_recyclegpt import fixed_draft_shapes
from ..checkpoint_code.draft_shape_recyclegpt import DraftShape
from ..checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from ..checkpoint_code.recycle_stats_recyclegpt import RecycleStats
from ..distill import continuation_lengths
from ..loading import pad_token_id
from .checks import compare_outputs
from .environment import environment_info
from .models import BenchmarkModel, generation_setting
from .prompts import encode_chat_prompts


def alternating_schedule_mask(prompt_width: int, total_width: int, device: torch.device | None = None) -> torch.Tensor:
    """Which positions the alternating schedule serves from the module (True) rather than the base (False).

    Position j predicts token j + 1. Anchored at the continuation start: the base predicts the first new token (from
    the prompt, position `prompt_width - 1`), the module the second, the base the third, and so on.
    """
    positions = torch.arange(total_width, device=device)
    offset = positions - (prompt_width - 1)
    return (offset >= 0) & (offset % 2 == 1)


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


def continuation_attention_mask(
    sequences: torch.Tensor, prompt_attention_mask: torch.Tensor, eos_token_ids: Sequence[int]
) -> torch.Tensor:
    """The attention mask of prompts + generated continuations: each row's continuation ends after its first EOS."""
    width = prompt_attention_mask.shape[1]
    lengths = continuation_lengths(sequences[:, width:], eos_token_ids)
    new_positions = torch.arange(sequences.shape[1] - width, device=sequences.device).unsqueeze(0)
    continuation_mask = (new_positions < lengths.unsqueeze(1)).to(prompt_attention_mask.dtype)
    return torch.cat([prompt_attention_mask, continuation_mask], dim=1)


# The quality benchmark scores verify mode at fixed draft lengths (acceptance by k is what it reports); `generate`'s
# own default, "auto", is a per-machine speed choice and would make the scores depend on the machine.
DEFAULT_QUALITY_NUM_DRAFT_TOKENS = (3,)


@dataclass
class QualitySettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    num_draft_tokens: tuple[int | DraftShape, ...] = DEFAULT_QUALITY_NUM_DRAFT_TOKENS  # built by `validate`
    sample_continuations: bool = False
    seed: int = 0

    def validate(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        self.num_draft_tokens = fixed_draft_shapes(self.num_draft_tokens)

    def record(self) -> dict[str, Any]:
        """The settings as JSON keeps them (each draft shape as its `setting`)."""
        shapes = [DraftShape.of(k).setting for k in self.num_draft_tokens]
        return {**dataclasses.asdict(self), "num_draft_tokens": shapes}


def run_quality_benchmark(
    bench_model: BenchmarkModel, prompts: Sequence[str], settings: QualitySettings, prompts_source: str
) -> dict[str, Any]:
    """Module quality on held-out prompts (see the module docstring); returns JSON-serialisable results (see
    `write_quality_results`)."""
    settings.validate()
    if bench_model.tokenizer is None:
        raise ValueError("The quality benchmark needs a real model with a tokenizer (--model or --base), not --shape.")
    model, tokenizer = bench_model.model, bench_model.tokenizer
    eos_token_ids = eos_token_ids_of(model)
    pad_id = pad_token_id(tokenizer)
    totals = QualityTotals()
    verify_stats: dict[DraftShape, list[RecycleStats]] = {k: [] for k in settings.num_draft_tokens}
    mismatched_prompts = {k: [] for k in settings.num_draft_tokens}
    batches = [prompts[start : start + settings.batch_size] for start in range(0, len(prompts), settings.batch_size)]
    for batch_index, batch_prompts in enumerate(tqdm(batches, desc="quality", unit="batch")):
        batch = encode_chat_prompts(tokenizer, batch_prompts, model.device)
        common = dict(
            attention_mask=batch.attention_mask, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id
        )
        with torch.inference_mode():
            plain = model.generate(batch.input_ids, recycle_mode=None, do_sample=False, **common)
            for k in settings.num_draft_tokens:
                verify = model.generate(
                    batch.input_ids,
                    recycle_mode="verify",
                    num_draft_tokens=k,
                    do_sample=False,
                    return_dict_in_generate=True,
                    **common,
                )
                check = compare_outputs(plain, verify.sequences, batch.width, pad_id)
                mismatched_prompts[k] += [
                    {"prompt": batch_prompts[m["row"]], "first_difference": m["first_difference"]}
                    for m in check["mismatches"]
                ]
                verify_stats[k].append(verify.recycle_stats)
            text = plain
            if settings.sample_continuations:
                torch.manual_seed(settings.seed + batch_index)
                text = model.generate(batch.input_ids, recycle_mode=None, do_sample=True, **common)

        attention_mask = continuation_attention_mask(text, batch.attention_mask, eos_token_ids)
        score_continuations(model, text, attention_mask, batch.width, totals)

    return {
        "benchmark": "quality",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment_info(model.device),
        "model": bench_model.description,
        "settings": {**settings.record(), "prompts": prompts_source, "num_prompts": len(prompts)},
        "scored_positions": totals.positions,
        "module_top1_agreement_with_base": totals.module_agrees_with_base / max(1, totals.positions),
        "module_top1_matches_text": totals.module_matches_text / max(1, totals.positions),
        "perplexity_standard": math.exp(totals.base_nll / max(1, totals.positions)),
        "perplexity_alternating": math.exp(totals.alternating_nll / max(1, totals.positions)),
        "alternating_module_positions": totals.module_positions,
        # Per k: tokens per base forward counted per row while it generates (batch-independent), greedy.
        "verify": {
            str(k): {
                "tokens_per_base_forward": RecycleStats.merged(stats).tokens_per_base_forward,
                "acceptance_rate": RecycleStats.merged(stats).acceptance_rate,
                "equals_plain": not mismatched_prompts[k],
                "mismatched_prompts": mismatched_prompts[k],
            }
            for k, stats in verify_stats.items()
        },
        "verify_equals_plain": not any(mismatched_prompts.values()),
    }


def eos_token_ids_of(model: RecycleGPTForCausalLM) -> list[int]:
    value = generation_setting(model, "eos_token_id")
    if value is None:
        return []
    return [int(token) for token in (value if isinstance(value, (list, tuple)) else [value])]
