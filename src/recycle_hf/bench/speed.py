# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The speed benchmark: every decoding mode on the same prompts and token budget, interleaved after warm-up.

Each repeat visits every mode in a rotated order, and every ratio is taken between medians of the same run. One
extra instrumented pass per mode times the time spent inside the forwards; what is left is the decoding loop's
overhead. Greedy outputs of every verify mode and comparator are checked against plain decoding.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoint_code.draft_length_recyclegpt import fixed_draft_shapes
from ..checkpoint_code.draft_shape_recyclegpt import DraftShape
from .checks import compare_outputs, merged_checks
from .environment import environment_info
from .measurements import (
    ModeMeasurement,
    merged_recycle_stats,
    new_tokens_per_row,
    project_verify_speed,
    speedup_ratios,
    summarize_measurement,
)
from .models import BenchmarkModel, generation_setting
from .modes import (
    COMPARATOR_MODES,
    DEFAULT_NUM_DRAFT_TOKENS_SWEEP,
    DecodingMode,
    GenerationRun,
    decoding_modes,
    fixed_length_generation,
    generate_once,
    timer_targets,
)
from .prompts import PromptBatch, benchmark_prompt_batch, prompt_texts
from .report import load_results
from .timing import ForwardTimer


logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 4, 16)


@dataclass
class SpeedSettings:
    """What a speed run measures. `static_compile=None` means: on CUDA only (compiling on the CPU is slow)."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    num_draft_tokens: tuple[int | DraftShape, ...] = DEFAULT_NUM_DRAFT_TOKENS_SWEEP  # built by `validate`
    # Draft trees measured as modes `verify_treeN` (each a list of paths, as `generate` takes it, or a shape).
    draft_trees: tuple[Any, ...] = ()
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
        self.num_draft_tokens = fixed_draft_shapes(self.num_draft_tokens)
        for tree in self.draft_trees:
            if not isinstance(tree, (list, tuple, DraftShape)):
                raise ValueError(f"draft trees must be lists of paths such as [[0], [1], [0, 0]], got {tree!r}.")
        self.draft_trees = tuple(DraftShape.of(tree) for tree in self.draft_trees)

    def record(self) -> dict[str, Any]:
        """The settings as JSON keeps them (each draft shape as its `setting`)."""
        shapes = [DraftShape.of(k).setting for k in self.num_draft_tokens]
        return {**dataclasses.asdict(self), "num_draft_tokens": shapes,
                "draft_trees": [DraftShape.of(tree).setting for tree in self.draft_trees]}

    def resolved_warmup(self, device: torch.device) -> int:
        # Compiled CUDA graphs are recorded over the first calls: accelerators need more warm-up than the CPU.
        if self.warmup is not None:
            return self.warmup
        return 3 if device.type == "cuda" else 1

    def resolved_static_compile(self, device: torch.device) -> bool:
        return self.static_compile if self.static_compile is not None else device.type == "cuda"


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
        pad_token_id = generation_setting(self.model, "pad_token_id")
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0

    def _select_modes(self) -> list[DecodingMode]:
        static_compile = self.settings.resolved_static_compile(self.device)
        available = decoding_modes(self.settings.num_draft_tokens, static_compiled=static_compile,
                                   draft_trees=self.settings.draft_trees)
        if self.settings.mode_names is None:
            return available
        by_name = {mode.name: mode for mode in available}
        unknown = [name for name in self.settings.mode_names if name not in by_name]
        if unknown:
            raise ValueError(
                f"Unknown or disabled mode(s) {unknown}. Available: {', '.join(by_name)} (hf_static_compiled needs "
                "--static-compile on the CPU; verify_kN needs N in --num-draft-tokens)."
            )
        # hf_generate is the reference of every ratio: always measured.
        names = ["hf_generate", *[name for name in self.settings.mode_names if name != "hf_generate"]]
        return [by_name[name] for name in names]

    def run(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.timezone.utc)
        environment = environment_info(self.device)
        records: list[dict[str, Any]] = []
        checks: dict[str, Any] = {}
        with fixed_length_generation(self.model):
            texts, prompts_source = prompt_texts(self.settings.prompts_file)
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
                **self.settings.record(),
                "warmup": self.warmup,
                "static_compile": self.settings.resolved_static_compile(self.device),
                "modes": [mode.name for mode in self.modes],
                "stop_at_eos": False,
                "prompts": "synthetic random tokens" if self.bench_model.tokenizer is None else prompts_source,
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
        per_set = [new_tokens_per_row(run.sequences, prompts.width, run.recycle_stats)
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

    def check_outputs(
        self, outputs: dict[str, list[torch.Tensor]], prompt_sets: Sequence[PromptBatch]
    ) -> dict[str, Any]:
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
                checks[name] = merged_checks(per_set)
        verify_checks = [check for name, check in checks.items() if name.startswith("verify_")]
        checks["verify_equals_plain"] = (
            all(check["all_identical"] for check in verify_checks) if verify_checks else None
        )
        return checks


def run_speed_benchmark(bench_model: BenchmarkModel, settings: SpeedSettings) -> dict[str, Any]:
    """Run the speed benchmark and return its results (JSON-serialisable; see `write_speed_results`)."""
    return SpeedBenchmark(bench_model, settings).run()


