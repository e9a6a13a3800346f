# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""`num_draft_tokens="auto"`: the draft shape (a chain of k drafts or a tree) that decodes fastest, 0 meaning plain
decoding.

A verify step with k drafts yields E(k) = 1 + a_1 + a_1 a_2 + ... + a_1...a_k tokens per row, where a_i is the
chance that draft i is accepted once drafts 1..i-1 were. A tree generalises this: with p[d][r] the chance that the
base's token at depth d is the module's rank-r candidate, E(tree) = 1 + the sum over its nodes of the product of p
along the node's path (a chain's a_d is p[d][0]); the best tree for each node budget is built from the measured p
(`draft_shape_recyclegpt.best_draft_tree`).

What is measured, on this call's own model, prompts and batch shape:
- the acceptance by depth and rank, counted over greedy steps of a spine tree (`CALIBRATION_RANKS` candidates at
  each depth below the first choices): counts, which do not depend on the machine's load;
- `TIMED_ROUNDS` rounds, each of a few plain tokens (the base's own `generate`, read off a stopping criterion so that
  the prompt's forward stays out) and one eager fast-path step of every candidate (chains k = 1..5 and the best
  trees; chains only for sampling calls), in alternating order.
The decision from these is `draft_choice_recyclegpt.decide_draft_shape`: paired ratios to plain decoding, a more
complex shape only where it is faster beyond the noise, plain decoding where it is faster beyond the noise, and a
provisional fallback (plain decoding) where the noise decides nothing.

A compiled call keeps the eager calibration's choice: timing compiled steps would compile one graph per candidate.
A calibration changes which forward shapes run and so, in floating point, can change rounding. So a decided choice
is made before the first output and kept: in memory for the process and in a JSON file (`calibration_file()`) for
later processes, keyed by model, dtype, device, thread count, batch size and method, with what it was measured
under (speed-up and its interval, load, CPU, date). The same inputs then give the same shape, and the same tokens,
in every call and process on a machine. A provisional choice is recorded as such and measured again by the next
call (at most `MAX_PROVISIONAL_CALIBRATIONS` times per process, so a machine that stays too noisy stops paying for
calibrations). `recycle-hf calibrate --show` lists the file, `--again` measures again.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging

from .draft_choice_recyclegpt import DraftShapeDecision, decide_draft_shape
from .draft_shape_recyclegpt import AUTO, DraftShape, best_draft_tree, draft_request, spine_tree
from .few_row_products_recyclegpt import describe_machine, few_row_products
from .publishing_recyclegpt import locked_file, write_json_file
from .runtime_recyclegpt import decoding_runtime
from .static_generation_recyclegpt import DecodingSettings, StaticRecycleDecoder
from .tree_generation_recyclegpt import static_decoder_class


logger = logging.get_logger(__name__)

MAX_AUTO_DRAFT_TOKENS = 5
TIMED_ROUNDS = 9
# Spine-tree steps whose accepted paths measure the acceptance by depth and rank, and the weight of the prior that
# steadies the deeper depths' few samples (`acceptance_by_rank`).
ACCEPTANCE_STEPS = 24
ACCEPTANCE_PRIOR_WEIGHT = 4.0
# A calibration's token budget: room for every step at the largest k.
CALIBRATION_TOKENS = (max(ACCEPTANCE_STEPS, TIMED_ROUNDS + 1) + 1) * (MAX_AUTO_DRAFT_TOKENS + 1)
# Plain tokens timed in each round (their median is the round's plain cost per token).
PLAIN_TIMED_TOKENS = 4
# Part of every calibration key: a new way of measuring, or a change to the step that shifts what it costs, makes
# choices kept by an older one measure again (5: acceptance by depth and rank from a spine tree, trees among the
# candidates; 6: paired rounds against plain decoding, decisions beyond the noise, product forms per machine).
CALIBRATION_METHOD = 6
# The calibration's spine tree offers this many candidates at each depth: it measures acceptance by rank 0..3.
CALIBRATION_RANKS = 4
# Node budgets of the trees auto times beside the chains (each the best tree for the measured acceptance).
TREE_NODE_BUDGETS = (2, 3, 4, 6, 8, 12, 16)
# Undecided calibrations a process runs for one key before it keeps the last (plain decoding) for the process.
MAX_PROVISIONAL_CALIBRATIONS = 3


def fixed_draft_shapes(values: Sequence[Any]) -> tuple[DraftShape, ...]:
    """The benchmarks' rule for a list of draft shapes: at least one, each built as `generate` builds one
    (`draft_request`), and no "auto" (the benchmarks measure it as a mode of its own)."""
    requests = tuple(draft_request(value) for value in values)
    if not requests or AUTO in requests:
        raise ValueError(f"num_draft_tokens must be integers such as 1,2,3 (auto is a mode of its own), got "
                         f"{[str(value) for value in values]}.")
    return requests


def acceptance_by_rank(
    accepted_ranks: Sequence[Sequence[int]], depth: int, ranks: int, prior_weight: float = 0.0
) -> list[list[float]]:
    """p[d][r] from the accepted paths of spine-tree steps (each entry the ranks of one row's accepted path): of the
    paths that reached depth d through first choices, the share whose next node was the rank-r candidate.

    Fewer paths reach each depth, so deep shares rest on a handful of steps (one lucky step made p = 1 in a
    calibration of the shipped module): with `prior_weight` m, depth d's shares are shrunk towards depth d - 1's as
    if m more paths had behaved like them, (count + m p[d-1][r]) / (reached + m)."""
    profile: list[list[float]] = []
    for level in range(depth):
        reached = [path for path in accepted_ranks if len(path) >= level and not any(path[:level])]
        prior = profile[-1] if profile else [0.0] * ranks
        weight = prior_weight if profile else 0.0
        total = len(reached) + weight
        profile.append([(sum(1 for path in reached if len(path) > level and path[level] == rank) + weight * prior[rank])
                        / total if total else 0.0 for rank in range(ranks)])
    return profile


def calibration_file() -> Path:
    """Where measured choices are kept: $RECYCLE_HF_CALIBRATION, else draft_lengths.json in $RECYCLE_HF_CACHE or
    ~/.cache/recycle_hf."""
    explicit = os.environ.get("RECYCLE_HF_CALIBRATION")
    if explicit:
        return Path(explicit)
    folder = os.environ.get("RECYCLE_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "recycle_hf")
    return Path(folder) / "draft_lengths.json"


def calibration_key(model: Any, batch_size: int, mode_settings: str) -> str:
    """Identifies what the timings and the acceptance depend on: weights, config, dtype, device, threads, batch."""
    weight = model.get_output_embeddings().weight
    module_checksum = sum(float(p.detach().double().sum()) for p in model.recycle_module.parameters())
    if weight.device.type == "cuda":
        device = torch.cuda.get_device_name(weight.device)
    else:
        device = f"cpu-{os.cpu_count()}-{torch.get_num_threads()}threads"
    parts = [
        model.config.to_json_string(use_diff=False),
        f"{module_checksum:.10e}",
        str(weight.dtype),
        device,
        f"batch{batch_size}",
        mode_settings,
        torch.__version__,
        f"method{CALIBRATION_METHOD}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _read_choices(path: Path) -> tuple[dict[str, Any], str | None]:
    """The file's entries as stored, and what is wrong with the file as a whole (None if nothing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f"it cannot be read ({error})"
    try:
        data = json.loads(text)
    except ValueError as error:
        return {}, f"it is not valid JSON ({error})"
    if not isinstance(data, dict):
        return {}, "it is not a JSON object of choices"
    return data, None


@dataclass(frozen=True)
class StoredChoice:
    """One entry of the file: the shape (stored as its `setting`: 0, a chain's k, or a tree's paths), whether timings
    decided it (else it is a provisional fallback, measured again), and what it was measured under (`record`:
    speed-up, load, CPU, ...)."""

    value: DraftShape
    decided: bool
    record: dict[str, Any]

    def describe(self, path: Path) -> str:
        measured = self.record.get("measured", "at an unknown time")
        speedup = self.record.get("speedup")
        speed = f", {speedup[0]:.2f}x plain [{speedup[1]:.2f}, {speedup[2]:.2f}]" if _is_interval(speedup) else ""
        return f"stored in {path} (measured {measured}{speed})"


def _is_interval(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)


def _parsed_entry(entry: Any) -> StoredChoice:
    """An entry as a `StoredChoice`: a record ({"choice": ..., "decided": ..., ...}) or a bare shape (decided); its
    shape is built as a user's `num_draft_tokens` is, and is a number or a tree, not "auto"."""
    record = entry if isinstance(entry, dict) else {"choice": entry}
    value = record.get("choice")
    if value == AUTO:
        raise ValueError("a stored choice must be a number or a tree, got 'auto'")
    return StoredChoice(DraftShape.of(value), record.get("decided", True) is True, record)


def _is_valid_entry(entry: Any) -> bool:
    try:
        _parsed_entry(entry)
    except (ValueError, TypeError):
        return False
    return True


def write_choice(path: Path, key: str, entry: dict[str, Any] | int | list[list[int]]) -> None:
    """Add one entry to the file, under the file's lock and atomically (written beside it, then renamed): a kill
    never leaves half a file, and concurrent writers keep every entry. Entries that fail the check are dropped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked_file(path):
            stored, _ = _read_choices(path)
            choices = {name: value for name, value in stored.items() if _is_valid_entry(value)}
            choices[key] = entry
            write_json_file(path, choices)
    except OSError as error:  # a read-only home still decodes; it just measures again next process
        logger.warning("Could not record the draft length in %s: %s", path, error)


def stored_choices(path: Path) -> dict[str, StoredChoice]:
    """Every valid entry of the file (for `recycle-hf calibrate --show`)."""
    stored, _ = _read_choices(path)
    return {key: _parsed_entry(entry) for key, entry in stored.items() if _is_valid_entry(entry)}


def stored_choice(path: Path, key: str) -> StoredChoice | None:
    """The entry `path` holds for `key`, or None: also where the file is unreadable or malformed or the entry is
    invalid, each with one warning naming the file (the caller then measures again and rewrites the entry)."""
    stored, problem = _read_choices(path)
    if problem is not None:
        logger.warning("Ignoring the draft-length choices in %s: %s. Measuring again; the file will be rewritten.",
                       path, problem)
        return None
    if key not in stored:
        return None
    try:
        return _parsed_entry(stored[key])
    except (ValueError, TypeError) as error:
        logger.warning("Ignoring the draft-length choice %r in %s for this model (%s). Measuring again.",
                       stored[key], path, error)
        return None


@dataclass
class DraftLengthMeasurement:
    """One calibration: what was measured and what it decided."""

    acceptance_by_rank: list[list[float]]
    candidates: dict[Any, DraftShape]  # by name: k for chains, "treeN" for trees; simplest first
    expected_tokens: dict[Any, float]
    step_seconds: dict[Any, list[float]]  # by candidate, one sample per round
    plain_seconds: list[float]  # plain decoding's seconds per token, one per round
    decision: DraftShapeDecision
    choice: DraftShape  # what decodes: no drafts (plain decoding), a chain or the chosen tree
    load: float | None  # the 1-minute load average when it ended (None where the OS has none)
    seconds: float  # how long the calibration took

    @property
    def acceptance(self) -> list[float]:
        """By depth: p[d][0], the chain's profile."""
        return [ranks[0] for ranks in self.acceptance_by_rank]

    def record(self, batch_size: int) -> dict[str, Any]:
        """The file's entry: the choice with what it was measured under."""
        speedup = self.decision.speedup
        return {
            "choice": self.choice.setting,
            "decided": self.decision.decided,
            "reason": self.decision.reason,
            "speedup": [round(speedup.median, 4), round(speedup.low, 4), round(min(speedup.high, 1e6), 4)],
            "rounds": speedup.rounds,
            "load": self.load,
            "machine": describe_machine(),
            "batch_size": batch_size,
            "method": CALIBRATION_METHOD,
            "seconds": round(self.seconds, 1),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def candidate_shapes(acceptance: Sequence[Sequence[float]], trees: bool = True) -> dict[Any, DraftShape]:
    """The shapes auto times, simplest first: chains k = 1..MAX_AUTO_DRAFT_TOKENS, then (with `trees`) the best
    tree for each node budget of `TREE_NODE_BUDGETS` that is not a chain and not already listed."""
    candidates: dict[Any, DraftShape] = {k: DraftShape.chain(k) for k in range(1, MAX_AUTO_DRAFT_TOKENS + 1)}
    for budget in TREE_NODE_BUDGETS if trees else ():
        tree = best_draft_tree(acceptance, budget)
        if tree is not None and not tree.is_chain and tree not in candidates.values():
            candidates[f"tree{budget}"] = tree
    return candidates


@torch.no_grad()  # as in `generate`: with gradients on, every step would record a graph and time too slow
def measure_draft_length(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, trees: bool = True
) -> DraftLengthMeasurement:
    """Count the module's acceptance by depth and rank on this batch, time the candidate shapes against plain
    decoding in paired rounds, and decide (`decide_draft_shape`). Greedy steps, no EOS: a calibration decodes until
    its budget. A progress bar shows the rounds."""
    started = time.perf_counter()
    logger.info("num_draft_tokens='auto': measuring the fastest draft shape for batch size %d on %s (kept in %s).",
                input_ids.shape[0], describe_machine(), calibration_file())
    progress = logging.tqdm(total=1 + TIMED_ROUNDS, desc="num_draft_tokens='auto': measuring draft shapes",
                            unit="round", leave=False)
    with few_row_products(model, input_ids.device):
        by_rank = measure_acceptance_by_rank(model, input_ids, attention_mask)
    progress.update()
    candidates = candidate_shapes(by_rank, trees)
    step_seconds, plain_seconds = timed_rounds(model, input_ids, attention_mask, candidates, progress.update)
    progress.close()
    expected = {name: tree.expected_tokens(by_rank) for name, tree in candidates.items()}
    decision = decide_draft_shape(expected, step_seconds, plain_seconds)
    shape = decision.shape
    choice = candidates[shape] if shape in candidates else DraftShape.chain(0)  # 0: plain decoding
    measurement = DraftLengthMeasurement(by_rank, candidates, expected, step_seconds, plain_seconds, decision, choice,
                                         _load_average(), time.perf_counter() - started)
    logger.info(
        "num_draft_tokens='auto' chose %s (%s) in %.1f s: acceptance by depth and rank %s, median step ms %s, "
        "plain ms per token %.1f.", choice, decision.reason, measurement.seconds,
        [[round(p, 2) for p in ranks] for ranks in by_rank],
        {k: round(statistics.median(v) * 1e3, 1) for k, v in step_seconds.items()},
        statistics.median(plain_seconds) * 1e3,
    )
    return measurement


def measure_acceptance_by_rank(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> list[list[float]]:
    """The module's acceptance by depth and rank on this batch: `ACCEPTANCE_STEPS` greedy steps of the spine tree
    (`CALIBRATION_RANKS` candidates at each of `MAX_AUTO_DRAFT_TOKENS` depths)."""
    tree = spine_tree(MAX_AUTO_DRAFT_TOKENS, CALIBRATION_RANKS)
    decoder = calibration_decoder(model, input_ids, attention_mask, tree)
    output = decoder.prefill()
    accepted_ranks: list[tuple[int, ...]] = []
    for _ in range(ACCEPTANCE_STEPS):
        output = decoder.step(output.state)
        for query in output.accepted_query.tolist():
            accepted_ranks.append(tree.paths[query - 1] if query > 0 else ())
    return acceptance_by_rank(accepted_ranks, MAX_AUTO_DRAFT_TOKENS, CALIBRATION_RANKS, ACCEPTANCE_PRIOR_WEIGHT)


def timed_rounds(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shapes: dict[Any, DraftShape],
    after_round: Callable[[], Any] = lambda: None,
    rounds: int = TIMED_ROUNDS,
) -> tuple[dict[Any, list[float]], list[float]]:
    """Seconds of one eager fast-path step of each shape and plain decoding's seconds per token, one sample of each
    per round, taken close together (the shapes' order alternating between rounds).

    Plain tokens are timed outside `few_row_products`, as plain decoding runs. The decoders share their caches
    (`static_caches` keeps one pair per size), so each overwrites the others' entries: their tokens mean nothing,
    but a step's cost does not depend on the values it reads.
    """
    synchronize = torch.cuda.synchronize if input_ids.device.type == "cuda" else lambda *args: None
    with few_row_products(model, input_ids.device):
        decoders = {name: calibration_decoder(model, input_ids, attention_mask, tree) for name, tree in shapes.items()}
        outputs = {name: decoder.prefill() for name, decoder in decoders.items()}
        for name, decoder in decoders.items():  # the first step of a shape pays one-time set-up
            outputs[name] = decoder.step(outputs[name].state)
    step_seconds: dict[Any, list[float]] = {name: [] for name in shapes}
    plain_seconds: list[float] = []
    for index in range(rounds):
        plain_seconds.append(statistics.median(plain_token_gaps(model, input_ids, attention_mask)))
        order = list(decoders) if index % 2 == 0 else list(reversed(decoders))
        with few_row_products(model, input_ids.device):
            for name in order:
                started = time.perf_counter()
                outputs[name] = decoders[name].step(outputs[name].state)
                synchronize(input_ids.device)
                step_seconds[name].append(time.perf_counter() - started)
        after_round()
    return step_seconds, plain_seconds


def calibration_decoder(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tree: DraftShape
) -> StaticRecycleDecoder:
    """A greedy decoder of `tree` on this batch. Every calibration decoder has the same slot count (sized for the
    largest shape), so that they all share one pair of caches."""
    largest = max(MAX_AUTO_DRAFT_TOKENS * CALIBRATION_RANKS, max(TREE_NODE_BUDGETS))
    settings = DecodingSettings(
        mode="verify",
        draft_shape=tree,
        do_sample=False,
        logits_processor=LogitsProcessorList(),
        stopping_criteria=StoppingCriteriaList(),
        streamer=None,
        pad_token_id=0,
        max_new_tokens=CALIBRATION_TOKENS + largest - tree.num_nodes,
    )
    return static_decoder_class(settings)(model, input_ids, attention_mask, settings, eos_token_ids=None)


class _TokenClock(StoppingCriteria):
    """A stopping criterion that never stops and notes when `generate` has finished each token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def plain_token_gaps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[float]:
    """Seconds between the tokens of the base's own `generate` on this batch (the first gap, still warming up, left
    out)."""
    clock = _TokenClock(input_ids.device)
    budget = 2 + PLAIN_TIMED_TOKENS
    model.base_lm.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=budget, min_new_tokens=budget, do_sample=False,
        pad_token_id=0, stopping_criteria=StoppingCriteriaList([clock]),
    )
    return [later - earlier for earlier, later in zip(clock.times[1:], clock.times[2:])]


@dataclass(frozen=True)
class ResolvedChoice:
    """The shape a call decodes with, and where it came from (for the log, `recycle_stats` and `--compare`)."""

    value: DraftShape
    source: str


class DraftLengthChoices:
    """A model's chosen draft shapes by calibration key: in memory for this process, in `calibration_file()` for
    later ones. `measured` keeps the calibrations this object ran, by key (the last one)."""

    def __init__(self) -> None:
        self.in_memory: dict[str, ResolvedChoice] = {}
        self.measured: dict[str, DraftLengthMeasurement] = {}
        self.provisional_calibrations: dict[str, int] = {}

    def resolve(
        self, key: str, batch_size: int, measure: Callable[[], DraftLengthMeasurement], again: bool = False
    ) -> ResolvedChoice:
        """The remembered decided choice for `key` (this process, then the file), else `measure()`, remembered in
        both; a provisional one is measured again, up to `MAX_PROVISIONAL_CALIBRATIONS` times in this process.
        `again` measures whatever is remembered (`recycle-hf calibrate --again`)."""
        remembered = None if again else self.in_memory.get(key)
        if remembered is not None and (
            not remembered.source.startswith("provisional")
            or self.provisional_calibrations.get(key, 0) >= MAX_PROVISIONAL_CALIBRATIONS
        ):
            return remembered
        path = calibration_file()
        stored = stored_choice(path, key) if remembered is None and not again else None
        if stored is not None and stored.decided:
            resolved = ResolvedChoice(stored.value, stored.describe(path))
        else:
            measurement = measure()
            self.measured[key] = measurement
            write_choice(path, key, measurement.record(batch_size))
            reason = measurement.decision.reason
            if measurement.decision.decided:
                resolved = ResolvedChoice(measurement.choice, f"measured in this process: {reason}")
            else:
                self.provisional_calibrations[key] = self.provisional_calibrations.get(key, 0) + 1
                resolved = ResolvedChoice(measurement.choice, f"provisional, {reason}")
        logger.info("num_draft_tokens='auto' decodes with %s: %s.", resolved.value, resolved.source)
        self.in_memory[key] = resolved
        return resolved


def draft_length_choices(model: Any) -> DraftLengthChoices:
    """The model's `DraftLengthChoices` (kept in its `DecodingRuntime`), made on first use."""
    runtime = decoding_runtime(model)
    with runtime.lock:
        if runtime.draft_choices is None:
            runtime.draft_choices = DraftLengthChoices()
        return runtime.draft_choices


__all__ = [
    "CALIBRATION_METHOD",
    "MAX_AUTO_DRAFT_TOKENS",
    "DraftLengthChoices",
    "DraftLengthMeasurement",
    "ResolvedChoice",
    "StoredChoice",
    "acceptance_by_rank",
    "calibration_decoder",
    "calibration_file",
    "calibration_key",
    "candidate_shapes",
    "fixed_draft_shapes",
    "draft_length_choices",
    "measure_acceptance_by_rank",
    "measure_draft_length",
    "plain_token_gaps",
    "stored_choice",
    "stored_choices",
    "timed_rounds",
    "write_choice",
]
