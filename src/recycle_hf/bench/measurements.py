# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""What a speed run derives from its timings: per-mode records, speed-up ratios within one run, and projections."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint_code.draft_shape_recyclegpt import DraftShape
from ..checkpoint_code.recycle_stats_recyclegpt import RecycleStats
from .modes import COMPARATOR_MODES, DecodingMode


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
    recycle_stats: RecycleStats | None = None
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
        "num_draft_tokens": mode.num_draft_tokens_setting,
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


def merged_recycle_stats(per_set: Sequence[RecycleStats | None]) -> RecycleStats | None:
    """One `recycle_stats` for prompt sets decoded in turn (`RecycleStats.merged`); None for plain `generate`."""
    if not per_set or per_set[0] is None:
        return None
    return RecycleStats.merged(per_set)


def new_tokens_per_row(sequences: torch.Tensor, prompt_width: int, stats: RecycleStats | None) -> list[int]:
    """The new tokens of each row of one `generate` output."""
    if stats is not None and stats.get("tokens_per_row"):
        return list(stats["tokens_per_row"])
    # Fixed-length generation: every row produced the full width.
    return [sequences.shape[1] - prompt_width] * sequences.shape[0]


def _shape_key(num_draft_tokens: Any) -> Any:
    """A record's draft shape (k or a tree's paths, from JSON) as its `DraftShape`; "auto" as it is."""
    return num_draft_tokens if num_draft_tokens in ("auto", None) else DraftShape.of(num_draft_tokens)


def project_verify_speed(results: dict[str, Any], real_model_results: dict[str, Any]) -> list[dict[str, Any]]:
    """Verify-mode tokens/s if this model accepted drafts as often as the real model did.

    Random weights accept drafts at no meaningful rate, but a verify step costs about the same whatever is accepted
    (one base forward over k + 1 tokens and k module forwards). So: measured seconds per base forward here, times
    the real model's tokens per base forward for the same k (same batch size when measured, else the smallest).
    """
    real = defaultdict(dict)
    for record in real_model_results.get("results", []):
        if record.get("recycle_mode") == "verify" and record.get("status") == "ok":
            real[_shape_key(record["num_draft_tokens"])][record["batch_size"]] = record["tokens_per_base_forward"]
    by_batch = {(r["batch_size"], r["mode"]): r for r in results["results"] if r.get("status") == "ok"}
    projections = []
    for record in results["results"]:
        k = _shape_key(record.get("num_draft_tokens"))
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
