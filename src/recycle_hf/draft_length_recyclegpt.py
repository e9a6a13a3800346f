# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""`num_draft_tokens="auto"`: the draft shape (a chain of k drafts or a tree) that decodes fastest, 0 meaning plain
decoding.

A verify step with k drafts yields E(k) = 1 + a_1 + a_1 a_2 + ... + a_1...a_k tokens per row, where a_i is the
chance that draft i is accepted once drafts 1..i-1 were (the module's acceptance profile), and costs C(k) seconds.
A tree generalises this: with p[d][r] the chance that the base's token at depth d is the module's rank-r candidate,
E(tree) = 1 + the sum over its nodes of the product of p along the node's path (a chain's a_d is p[d][0]); the
best tree for each node budget is built from the measured p (`draft_tree_recyclegpt.best_draft_tree`). Plain
decoding costs C_plain per token. auto picks the shape with the highest E / C among chains k = 1..5 and those trees
(chains only for sampling calls), and 0 (the call goes to plain `generate`) unless that beats 1 / C_plain.

Both sides are measured, not assumed, because they depend on the machine, the batch size and the module:
- C(k) and C_plain are timed on this call's own model and batch shape: medians of `TIMED_ROUNDS` eager fast-path
  steps at each k, taken in rounds (k = 1..5, then again) so that a machine that speeds up or slows down meanwhile
  shifts every k alike, and the median time between tokens of the base's own `generate`, before and after the steps
  (read off a stopping criterion, so the prompt's forward, whose noise at batch 16 exceeds a few tokens' cost,
  stays out). A fitted cost model would
  need the same timings and adds a model that can be wrong on a new machine;
- the acceptance by depth and rank comes from greedy steps of a spine tree (`CALIBRATION_RANKS` candidates at each
  depth below the first choices) in that same calibration, on this call's own prompts.
A compiled call keeps the eager calibration's choice: timing compiled steps would compile one graph per candidate k
(about 100 s each on a 2-core CPU), and in the benchmark the eager choice was also the fastest compiled k (SmolLM2,
batch 1: k=3; docs/BENCHMARKS.md, "Closing measurements for the fast path").
A calibration changes which forward shapes run and so, in floating point, can change rounding. So the choice is made
before the first output and kept: in memory for the process and in a JSON file (`calibration_file()`) for later
processes, keyed by model, dtype, device, thread count and batch size. The same inputs then give the same k, and the
same tokens, in every call and process on a machine; delete the file to measure again, or pass an integer k.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging

from .draft_tree_recyclegpt import DraftTree, best_draft_tree, check_tree_paths, is_tree_spec, spine_tree
from .few_row_products_recyclegpt import few_row_products
from .static_generation_recyclegpt import DecodingSettings, StaticRecycleDecoder
from .tree_generation_recyclegpt import static_decoder


logger = logging.get_logger(__name__)

# More drafts than this never pay: acceptance falls with depth, and every draft costs a module forward.
MAX_NUM_DRAFT_TOKENS = 16
MAX_AUTO_DRAFT_TOKENS = 5
TIMED_ROUNDS = 7
# Spine-tree steps whose accepted paths measure the acceptance by depth and rank, and the weight of the prior that
# steadies the deeper depths' few samples (`acceptance_by_rank`).
ACCEPTANCE_STEPS = 24
ACCEPTANCE_PRIOR_WEIGHT = 4.0
# A calibration's token budget: room for every step at the largest k.
CALIBRATION_TOKENS = (max(ACCEPTANCE_STEPS, TIMED_ROUNDS + 1) + 1) * (MAX_AUTO_DRAFT_TOKENS + 1)
PLAIN_TIMED_TOKENS = 8
# A draft length must beat plain decoding by this much to be chosen: calibration medians still carry noise.
PLAIN_MARGIN = 1.05
# Part of every calibration key: a new way of measuring, or a change to the step that shifts what it costs, makes
# choices kept by an older one measure again (4: few-row products contiguous, one row of a vocabulary head swapped;
# 5: acceptance by depth and rank from a spine tree, trees among the candidates).
CALIBRATION_METHOD = 5
# The calibration's spine tree offers this many candidates at each depth: it measures acceptance by rank 0..3.
CALIBRATION_RANKS = 4
# Node budgets of the trees auto times beside the chains (each the best tree for the measured acceptance).
TREE_NODE_BUDGETS = (2, 3, 4, 6, 8, 12, 16)


def check_num_draft_tokens(num_draft_tokens: Any) -> None:
    """The one check of a draft count, wherever it is given (`generate`, the CLI, lm-eval's model, the benchmarks,
    the file of `auto`'s choices): "auto", an integer from 0 (plain decoding) to `MAX_NUM_DRAFT_TOKENS` (not a
    bool), or a draft tree as a list of paths (`draft_tree_recyclegpt.py`); else a `ValueError` that says so."""
    if num_draft_tokens == "auto" and isinstance(num_draft_tokens, str):
        return
    if is_tree_spec(num_draft_tokens):
        check_tree_paths(num_draft_tokens)
        return
    if type(num_draft_tokens) is not int or not 0 <= num_draft_tokens <= MAX_NUM_DRAFT_TOKENS:
        raise ValueError(
            f"num_draft_tokens must be 'auto' or an integer from 0 (plain decoding) to {MAX_NUM_DRAFT_TOKENS} (or a "
            f"draft tree such as [[0], [1], [0, 0]]), got {num_draft_tokens!r}."
        )


def expected_tokens_per_step(acceptance: Sequence[float], num_drafts: int) -> float:
    """E(k): tokens a row gains per verify step with `num_drafts` drafts, from the per-depth acceptance profile."""
    expected, all_kept = 1.0, 1.0
    for depth in range(num_drafts):
        all_kept *= acceptance[min(depth, len(acceptance) - 1)] if acceptance else 0.0
        expected += all_kept
    return expected


def choose_draft_length(
    acceptance: Sequence[float], step_seconds: dict[int, float], plain_seconds: float
) -> int:
    """The k in `step_seconds` with the highest tokens per second, or 0 where none beats plain decoding."""
    best_k, best_rate = 0, PLAIN_MARGIN / plain_seconds
    for num_drafts in sorted(step_seconds):
        rate = expected_tokens_per_step(acceptance, num_drafts) / step_seconds[num_drafts]
        if rate > best_rate:
            best_k, best_rate = num_drafts, rate
    return best_k


def choose_draft_shape(
    acceptance_by_rank: Sequence[Sequence[float]], step_seconds: dict[Any, float], plain_seconds: float,
    trees: dict[Any, DraftTree],
) -> Any:
    """The shape in `step_seconds` (an integer k: a chain; else a name in `trees`) with the most expected tokens per
    second under the measured acceptance by depth and rank, or 0 where none beats plain decoding."""
    best, best_rate = 0, PLAIN_MARGIN / plain_seconds
    for shape, seconds in step_seconds.items():
        tree = trees[shape] if shape in trees else DraftTree.chain(shape)
        rate = tree.expected_tokens(acceptance_by_rank) / seconds
        if rate > best_rate:
            best, best_rate = shape, rate
    return best


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


def _checked_choice(value: Any) -> int | list[list[int]]:
    """A stored choice passes the check a user's `num_draft_tokens` passes, and is a number or a tree, not "auto"."""
    check_num_draft_tokens(value)
    if value == "auto":
        raise ValueError("a stored choice must be a number or a tree, got 'auto'")
    return value


def _is_valid_choice(value: Any) -> bool:
    try:
        _checked_choice(value)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside `path` while one process reads, changes and rewrites it: processes that calibrate
    different keys at once never lose each other's entries (POSIX `flock`; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; writes stay atomic, a concurrent entry may be measured again
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_choice(path: Path, key: str, num_drafts: int | list[list[int]]) -> None:
    """Add one choice to the file, under the file's lock and atomically (written beside it, then renamed): a kill
    never leaves half a file, and concurrent writers keep every entry. Entries that fail the check are dropped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            stored, _ = _read_choices(path)
            choices = {name: value for name, value in stored.items() if _is_valid_choice(value)}
            choices[key] = num_drafts
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
                json.dump(choices, handle, indent=1, sort_keys=True)
            os.replace(handle.name, path)
    except OSError as error:  # a read-only home still decodes; it just measures again next process
        logger.warning("Could not record the draft length in %s: %s", path, error)


def stored_choice(path: Path, key: str) -> int | list[list[int]] | None:
    """The choice `path` holds for `key`, or None: also where the file is unreadable or malformed or the entry is
    invalid, each with one warning naming the file (the caller then measures again and rewrites the entry)."""
    stored, problem = _read_choices(path)
    if problem is not None:
        logger.warning("Ignoring the draft-length choices in %s: %s. Measuring again; the file will be rewritten.",
                       path, problem)
        return None
    if key not in stored:
        return None
    try:
        return _checked_choice(stored[key])
    except ValueError as error:
        logger.warning("Ignoring the draft-length choice %r in %s for this model (%s). Measuring again.",
                       stored[key], path, error)
        return None


@dataclass
class DraftLengthMeasurement:
    """One calibration: what was measured and the draft shape it chose (0, a chain's k, or a tree's paths)."""

    acceptance: list[float]  # by depth: p[d][0], the chain's profile
    step_seconds: dict[Any, float]  # by shape: k for chains, a name of `trees` for trees
    plain_seconds: float
    choice: int | list[list[int]]
    acceptance_by_rank: list[list[float]] = dataclasses.field(default_factory=list)
    trees: dict[str, DraftTree] = dataclasses.field(default_factory=dict)
    chosen_shape: Any = 0  # the key of `step_seconds` chosen (0: plain decoding)


@torch.no_grad()  # as in `generate`: with gradients on, every step would record a graph and time too slow
def measure_draft_length(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, trees: bool = True
) -> DraftLengthMeasurement:
    """Measure the module's acceptance by depth and rank on this batch, build the best tree for each node budget
    in `TREE_NODE_BUDGETS` from it (with `trees`), time fast-path steps of every chain k = 1..MAX_AUTO_DRAFT_TOKENS
    and of those trees and plain one-token decoding, and choose (greedy steps, no EOS: a calibration decodes until
    its budget)."""
    logger.info(
        "num_draft_tokens='auto': measuring the fastest draft shape for batch size %d (once; kept in %s).",
        input_ids.shape[0], calibration_file(),
    )
    plain_gaps = _plain_token_gaps(model, input_ids, attention_mask)
    with few_row_products(model, input_ids.device):  # time the steps as decoding will run them
        by_rank = _acceptance_by_rank(model, input_ids, attention_mask)
        candidates: dict[Any, DraftTree] = {k: DraftTree.chain(k) for k in range(1, MAX_AUTO_DRAFT_TOKENS + 1)}
        named_trees: dict[str, DraftTree] = {}
        for budget in TREE_NODE_BUDGETS if trees else ():
            tree = best_draft_tree(by_rank, budget)
            if tree is not None and not tree.is_chain and tree not in named_trees.values():
                named_trees[f"tree{budget}"] = tree
        candidates.update(named_trees)
        step_seconds = _step_seconds(model, input_ids, attention_mask, candidates)
    plain_seconds = statistics.median(plain_gaps + _plain_token_gaps(model, input_ids, attention_mask))
    shape = choose_draft_shape(by_rank, step_seconds, plain_seconds, named_trees)
    choice = named_trees[shape].as_lists() if shape in named_trees else shape
    logger.info(
        "num_draft_tokens='auto' chose %s: acceptance by depth and rank %s, step ms by shape %s, plain ms per token "
        "%.1f.", choice, [[round(p, 2) for p in ranks] for ranks in by_rank],
        {k: round(v * 1e3, 1) for k, v in step_seconds.items()}, plain_seconds * 1e3,
    )
    acceptance = [ranks[0] for ranks in by_rank]
    return DraftLengthMeasurement(acceptance, step_seconds, plain_seconds, choice, by_rank, named_trees, shape)


def _acceptance_by_rank(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> list[list[float]]:
    """The module's acceptance by depth and rank on this batch: `ACCEPTANCE_STEPS` greedy steps of the spine tree
    (`CALIBRATION_RANKS` candidates at each of `MAX_AUTO_DRAFT_TOKENS` depths)."""
    tree = spine_tree(MAX_AUTO_DRAFT_TOKENS, CALIBRATION_RANKS)
    decoder = _calibration_decoder(model, input_ids, attention_mask, tree)
    output = decoder.prefill()
    accepted_ranks: list[tuple[int, ...]] = []
    for _ in range(ACCEPTANCE_STEPS):
        output = decoder.step(output.state)
        for query in output.accepted_query.tolist():
            accepted_ranks.append(tree.paths[query - 1] if query > 0 else ())
    return acceptance_by_rank(accepted_ranks, MAX_AUTO_DRAFT_TOKENS, CALIBRATION_RANKS, ACCEPTANCE_PRIOR_WEIGHT)


def _step_seconds(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, shapes: dict[Any, DraftTree]
) -> dict[Any, float]:
    """Median seconds of an eager fast-path step of each shape, timed in `TIMED_ROUNDS` rounds over every shape.

    The decoders share their caches (`static_caches` keeps one pair per size), so each overwrites the others'
    entries: their tokens mean nothing, but a step's cost does not depend on the values it reads.
    """
    decoders = {name: _calibration_decoder(model, input_ids, attention_mask, tree) for name, tree in shapes.items()}
    outputs = {name: decoder.prefill() for name, decoder in decoders.items()}
    for name, decoder in decoders.items():  # the first step of a shape pays one-time set-up
        outputs[name] = decoder.step(outputs[name].state)
    samples: dict[Any, list[float]] = {name: [] for name in shapes}
    for _ in range(TIMED_ROUNDS):
        for name, decoder in decoders.items():
            started = time.perf_counter()
            outputs[name] = decoder.step(outputs[name].state)
            if input_ids.device.type == "cuda":
                torch.cuda.synchronize(input_ids.device)
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in samples.items()}


def _calibration_decoder(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tree: DraftTree
) -> StaticRecycleDecoder:
    """A greedy decoder of `tree` on this batch. Every calibration decoder has the same slot count (sized for the
    largest shape), so that they all share one pair of caches."""
    largest = max(MAX_AUTO_DRAFT_TOKENS * CALIBRATION_RANKS, max(TREE_NODE_BUDGETS))
    settings = DecodingSettings(
        mode="verify",
        num_draft_tokens=tree.num_nodes,
        do_sample=False,
        logits_processor=LogitsProcessorList(),
        stopping_criteria=StoppingCriteriaList(),
        streamer=None,
        pad_token_id=0,
        max_new_tokens=CALIBRATION_TOKENS + largest - tree.num_nodes,
        draft_tree=None if tree.is_chain else tree,
    )
    return static_decoder(model, input_ids, attention_mask, settings, eos_token_ids=None)


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


def _plain_token_gaps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[float]:
    """Seconds between the tokens of the base's own `generate` on this batch (the first gap, still warming up, left
    out)."""
    clock = _TokenClock(input_ids.device)
    budget = 2 + PLAIN_TIMED_TOKENS
    model.base_lm.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=budget, min_new_tokens=budget, do_sample=False,
        pad_token_id=0, stopping_criteria=StoppingCriteriaList([clock]),
    )
    return [later - earlier for earlier, later in zip(clock.times[1:], clock.times[2:])]


class DraftLengthChoices:
    """A model's chosen draft lengths by calibration key: in memory for this process, in `calibration_file()` for
    later ones. `measured` keeps the calibrations this object ran."""

    def __init__(self) -> None:
        self.in_memory: dict[str, int | list[list[int]]] = {}
        self.measured: dict[str, DraftLengthMeasurement] = {}

    def resolve(self, key: str, measure: Callable[[], DraftLengthMeasurement]) -> int | list[list[int]]:
        """The remembered choice for `key` (this process, then the file), else `measure()`, remembered in both."""
        if key in self.in_memory:
            return self.in_memory[key]
        path = calibration_file()
        stored = stored_choice(path, key)
        if stored is None:
            self.measured[key] = measure()
            stored = self.measured[key].choice
            _write_choice(path, key, stored)
        self.in_memory[key] = stored
        return stored

    def forget(self) -> None:
        """Drop what this process remembers (the file stays), as a new process starts."""
        self.in_memory.clear()


def draft_length_choices(model: Any) -> DraftLengthChoices:
    """The model's `DraftLengthChoices`, made on first use."""
    if getattr(model, "_recycle_draft_length_choices", None) is None:
        model._recycle_draft_length_choices = DraftLengthChoices()
    return model._recycle_draft_length_choices


__all__ = [
    "MAX_AUTO_DRAFT_TOKENS",
    "MAX_NUM_DRAFT_TOKENS",
    "check_num_draft_tokens",
    "stored_choice",
    "DraftLengthChoices",
    "DraftLengthMeasurement",
    "calibration_file",
    "calibration_key",
    "acceptance_by_rank",
    "choose_draft_length",
    "choose_draft_shape",
    "expected_tokens_per_step",
    "measure_draft_length",
    "draft_length_choices",
]
