# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Speed and quality benchmarks of recycle decoding, side by side with transformers' own `generate`.

This is the code behind `recycle-hf bench speed|quality` and `benchmarks/{speed,quality}.py` (their options:
`recycle_hf.commands.bench`); both run it unchanged.

- `models`: the model under test (a checkpoint, a base with its module, or a random shape).
- `prompts`: the built-in prompts and how prompts become padded batches.
- `modes`, `timing`: the decoding modes compared and how one `generate` call is timed.
- `speed`, `measurements`, `checks`: the speed run, what it derives from its timings, its output checks. The
  comparators are what users would otherwise run: transformers' default `generate` (dynamic cache, eager), its
  static-cache compiled path (`cache_implementation="static"` + `compile_config`) and its prompt-lookup decoding.
- `quality`: module agreement, alternating-schedule perplexity and verify-mode tokens per base forward.
- `report`, `environment`: the JSON, markdown and PNG files, and the machine they record.
"""

from .checks import compare_outputs
from .measurements import ModeMeasurement, project_verify_speed, speedup_ratios
from .models import BENCHMARK_SHAPES, BenchmarkModel, build_shape_model, load_benchmark_model
from .modes import DecodingMode, decoding_modes, generate_once
from .prompts import BENCHMARK_PROMPTS, encode_chat_prompts, synthetic_prompts
from .quality import (
    QualitySettings,
    QualityTotals,
    alternating_schedule_mask,
    run_quality_benchmark,
    score_continuations,
)
from .report import quality_markdown, speed_markdown, write_quality_results, write_speed_results
from .speed import SpeedSettings, run_speed_benchmark
from .timing import ForwardTimer


__all__ = [
    "BENCHMARK_PROMPTS",
    "BENCHMARK_SHAPES",
    "BenchmarkModel",
    "DecodingMode",
    "ForwardTimer",
    "ModeMeasurement",
    "QualitySettings",
    "QualityTotals",
    "SpeedSettings",
    "alternating_schedule_mask",
    "build_shape_model",
    "compare_outputs",
    "decoding_modes",
    "encode_chat_prompts",
    "generate_once",
    "load_benchmark_model",
    "project_verify_speed",
    "quality_markdown",
    "run_quality_benchmark",
    "run_speed_benchmark",
    "score_continuations",
    "speed_markdown",
    "speedup_ratios",
    "synthetic_prompts",
    "write_quality_results",
    "write_speed_results",
]
