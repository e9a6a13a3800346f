# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The reference loop of recycle decoding: Python-side state, any logits processor, stopping criterion or drafter.

Every step a drafter proposes `k` tokens (by default the recyclable module, reading states the base already
computed), then one base forward runs over each row's newest token and the drafts; `verify` keeps the longest
agreeing prefix plus the base's own next token, `alternate` keeps the module's token unchecked (see
`generation_recyclegpt.py` for the two modes).

Batches keep one key/value slot per (row, step) position. Rows that accept fewer drafts than their neighbours get
masked holes in their slots instead of waiting: no row stalls and no row's tokens depend on another's. Logits
processors and stopping criteria see, for every row, exactly the `input_ids` plain decoding would show them.

The static fast path (`static_generation_recyclegpt.py`) is tested against this loop; this loop runs the calls the
fast path cannot (processors or criteria that read the whole context, a custom drafter, `cache_implementation=
"dynamic"`).

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from transformers.generation import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from .masks_recyclegpt import positions_from_attention_mask
from .recycle_stats_recyclegpt import RecycleStats
from .static_generation_recyclegpt import speculative_acceptance


# Processors whose output does not depend on `input_ids`: they can run on a whole ragged batch at once (and inside
# the fast path's step).
CONTEXT_FREE_PROCESSORS = (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
)

Drafts = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class RecycleDrafter(Protocol):
    """Who proposes the drafts of the reference loop (transformers' `CandidateGenerator` idea).

    `draft` returns (tokens [B, n], processed scores [B, n, V], probabilities [B, n, V] or None when greedy);
    `update` hears, after each verification, how many of the `num_draft_tokens` drafts each row kept.
    """

    def draft(self, decoder: RecycleDecoder, num_draft_tokens: int) -> Drafts: ...

    def update(self, decoder: RecycleDecoder, num_draft_tokens: int, accepted: list[int]) -> None: ...


class ModuleDrafter:
    """The default drafter: the recyclable module, reading true base states (`RecycleDecoder.module_draft`)."""

    def draft(self, decoder: RecycleDecoder, num_draft_tokens: int) -> Drafts:
        return decoder.module_draft(num_draft_tokens)

    def update(self, decoder: RecycleDecoder, num_draft_tokens: int, accepted: list[int]) -> None:
        pass


class RowContexts:
    """Every row's `input_ids` as plain decoding would have them: the padded prompt plus the row's new tokens.

    Rows advance at different rates in verify mode, so processors and stopping criteria run on groups of rows of
    equal length; each row then sees exactly what plain `generate` shows it.
    """

    def __init__(self, prompt_ids: torch.Tensor, max_new_tokens: int, pad_token_id: int):
        batch_size, self.prompt_length = prompt_ids.shape
        self.sequences = prompt_ids.new_full((batch_size, self.prompt_length + max_new_tokens), pad_token_id)
        self.sequences[:, : self.prompt_length] = prompt_ids
        self.new_counts = [0] * batch_size

    def groups(self, rows: list[int]) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for row in rows:
            grouped.setdefault(self.new_counts[row], []).append(row)
        return grouped

    def context(self, new_count: int, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """All rows' tokens cut at `new_count` new tokens (plus drafts): exact `input_ids` for rows with that count.

        Processors and criteria always get the whole batch (some keep per-row state sized to it); the caller keeps
        the results of the rows whose count matches.
        """
        context = self.sequences[:, : self.prompt_length + new_count]
        if extra_tokens is not None and extra_tokens.shape[1] > 0:
            context = torch.cat([context, extra_tokens], dim=1)
        return context

    def process(
        self,
        logits_processor: LogitsProcessorList,
        logits: torch.Tensor,
        rows: list[int],
        extra_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the processors to logits [batch, vocab] for the active `rows` (others pass through unprocessed).

        `extra_tokens` [batch, i] are drafts that follow each row's committed tokens.
        """
        scores = logits.float()
        if len(logits_processor) == 0 or not rows:
            return scores
        groups = self.groups(rows)
        if len(groups) == 1 or all(isinstance(p, CONTEXT_FREE_PROCESSORS) for p in logits_processor):
            return logits_processor(self.context(min(groups), extra_tokens), scores)
        processed = scores.clone()
        for new_count, group in groups.items():
            index = torch.tensor(group, device=scores.device)
            processed[index] = logits_processor(self.context(new_count, extra_tokens), scores.clone())[index]
        return processed

    def append(self, rows: list[int], tokens: torch.Tensor) -> None:
        """Append one token (from `tokens`, [batch]) to each of `rows`."""
        row_index = torch.tensor(rows, device=tokens.device)
        columns = torch.tensor([self.prompt_length + self.new_counts[row] for row in rows], device=tokens.device)
        self.sequences[row_index, columns] = tokens[row_index]
        for row in rows:
            self.new_counts[row] += 1


def _select_tokens(scores: torch.Tensor, do_sample: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if do_sample:
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1), probs
    return torch.argmax(scores, dim=-1), None


def slot_columns_needed(batch_size: int, max_new_tokens: int, num_drafts: int) -> int:
    """Columns the reference loop's slot buffers need past the prompt.

    Each step advances the columns by the most any generating row accepted, plus one. That is at most k + 1 per step
    and at most the sum over rows of what each row gained, and a row gains at most max_new_tokens (plus k on the step
    that stops it); the newest token and the last step's drafts need k + 1 more.
    """
    advance = min(max_new_tokens * (num_drafts + 1), batch_size * (max_new_tokens + num_drafts))
    return advance + num_drafts + 1


def _forward_fill_states(states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """For each index, the state at the latest valid index at or before it (index 0 must be valid)."""
    indices = torch.arange(states.shape[1], device=states.device).expand(states.shape[0], -1)
    latest_valid = torch.where(valid.bool(), indices, torch.zeros_like(indices)).cummax(dim=1).values
    return states.gather(1, latest_valid.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


class RecycleDecoder:
    """State and steps of one recycle-decoding call (see the module docstring for the schedule).

    Slot space: column s of both key/value caches. `slot_ids`, `slot_mask` and `slot_positions` describe every
    column; a row's rejected drafts stay behind as masked holes. The base cache holds columns [0, base_length), the
    module cache [0, module_length). `pending_states` are the base states of columns [module_length - 1,
    base_length) that the module has not read yet (column -1 stands for the zero state before the prompt), and
    `pending_valid` their mask. Column `base_length` holds each row's newest token, which no cache has seen yet.
    """

    def __init__(
        self, model: Any, prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None, settings: Any,
        drafter: RecycleDrafter | None = None,
    ):
        self.model = model
        self.drafter = drafter if drafter is not None else ModuleDrafter()
        self.mode = settings.mode
        self.num_draft_tokens = settings.num_draft_tokens
        self.do_sample = settings.do_sample
        self.logits_processor = settings.logits_processor
        self.stopping_criteria = settings.stopping_criteria
        self.streamer = settings.streamer
        self.pad_token_id = settings.pad_token_id
        self.max_new_tokens = settings.max_new_tokens

        batch_size, prompt_length = prompt_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        capacity = prompt_length + slot_columns_needed(batch_size, self.max_new_tokens, self.num_draft_tokens)
        self.slot_ids = prompt_ids.new_full((batch_size, capacity), self.pad_token_id)
        self.slot_mask = attention_mask.new_zeros((batch_size, capacity))
        self.slot_positions = prompt_ids.new_zeros((batch_size, capacity))
        self.slot_ids[:, :prompt_length] = prompt_ids
        self.slot_mask[:, :prompt_length] = attention_mask
        self.slot_positions[:, :prompt_length] = positions_from_attention_mask(attention_mask, prompt_length)
        self.next_positions = attention_mask.long().sum(-1)

        self.rows = RowContexts(prompt_ids, self.max_new_tokens, self.pad_token_id)
        self.unfinished = torch.ones(batch_size, dtype=torch.bool, device=prompt_ids.device)
        self.unfinished_rows = list(range(batch_size))
        cache = model.new_cache()
        self.base_cache, self.module_cache = cache.base, cache.module
        self.base_length = 0
        self.module_length = 0
        self.pending_states: torch.Tensor | None = None
        self.pending_valid: torch.Tensor | None = None
        self.stats = RecycleStats(batch_size=batch_size, mode=self.mode, num_draft_tokens=self.num_draft_tokens,
                                  decoding_path="reference_loop")

    def run(self) -> torch.Tensor:
        started = time.perf_counter()
        if self.max_new_tokens > 0:
            self.prefill()
            while self.unfinished_rows:
                self.step()
        if self.streamer is not None:
            self.streamer.end()
        self.stats.tokens_per_row = list(self.rows.new_counts)
        self.stats.decoding_seconds = time.perf_counter() - started
        return self.rows.sequences[:, : self.rows.prompt_length + max(self.rows.new_counts)]

    def step(self) -> None:
        # The row with the most budget left decides how many drafts are worth making.
        remaining = self.max_new_tokens - min(self.rows.new_counts[row] for row in self.unfinished_rows)
        if self.mode == "alternate":
            self.alternate_step(remaining)
        else:
            self.verify_step(min(self.num_draft_tokens, remaining - 1))

    # ------------------------------------------------------------------------------------------------ base forwards
    def prefill(self) -> None:
        prompt_length = self.rows.prompt_length
        states = self.model.base_step(
            self.slot_ids[:, :prompt_length],
            self.slot_mask[:, :prompt_length],
            self.slot_positions[:, :prompt_length],
            self.base_cache,
        )
        self.stats.count_base_forward(len(self.unfinished_rows))
        scores = self._process(self.model.vocab_logits(states[:, -1]))
        first_tokens, _ = _select_tokens(scores, self.do_sample)
        self.base_length = prompt_length
        self.pending_states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
        self.pending_valid = torch.cat([torch.ones_like(self.slot_mask[:, :1]), self.slot_mask[:, :prompt_length]], 1)
        self._commit(first_tokens.unsqueeze(1), [1] * len(first_tokens), scores.unsqueeze(1))
        self._place_newest_tokens(first_tokens)

    def verify_forward(self, drafts: torch.Tensor) -> torch.Tensor:
        """One base forward over [newest token, drafts]; returns its final states [batch, 1 + drafts, dim]."""
        start, num_drafts = self.base_length, drafts.shape[1]
        end = start + num_drafts + 1
        self.slot_ids[:, start + 1 : end] = drafts
        self.slot_mask[:, start + 1 : end] = 1
        offsets = torch.arange(1, num_drafts + 1, device=drafts.device)
        self.slot_positions[:, start + 1 : end] = self.next_positions.unsqueeze(1) + offsets
        states = self.model.base_step(
            self.slot_ids[:, start:end], self.slot_mask[:, :end], self.slot_positions[:, start:end], self.base_cache
        )
        self.stats.count_base_forward(len(self.unfinished_rows))
        return states

    # ---------------------------------------------------------------------------------------------- module forwards
    def module_draft(self, num_drafts: int) -> Drafts:
        """The module's `num_drafts` drafts: (tokens [B, n], processed scores [B, n, V], probabilities or None).

        The first call catches the module up on every column the base has finished, reading true base states, and
        drafts from the newest token. Later drafts read the module's own output state in place of the base's.
        """
        start, end = self.module_length, self.base_length + 1
        previous_states = _forward_fill_states(self.pending_states, self.pending_valid)
        states = self.model.recycle_step(
            self.slot_ids[:, start:end],
            previous_states,
            self.slot_mask[:, :end],
            self.slot_positions[:, start:end],
            self.module_cache,
        )[:, -1:]
        self.module_length = end
        drafts: list[torch.Tensor] = []
        scores_per_draft: list[torch.Tensor] = []
        probs_per_draft: list[torch.Tensor | None] = []
        for index in range(num_drafts):
            if index > 0:
                column = self.base_length + index
                self.slot_ids[:, column] = drafts[-1]
                self.slot_mask[:, column] = 1
                self.slot_positions[:, column] = self.next_positions + index
                states = self.model.recycle_step(
                    drafts[-1].unsqueeze(1),
                    states,
                    self.slot_mask[:, : column + 1],
                    self.slot_positions[:, column : column + 1],
                    self.module_cache,
                )
                self.module_length += 1
            self.stats.recycle_forwards += 1
            earlier_drafts = torch.stack(drafts, dim=1) if drafts else None
            scores = self._process(self._draft_vocab_logits(states[:, -1]), earlier_drafts)
            tokens, probs = _select_tokens(scores, self.do_sample)
            drafts.append(tokens)
            scores_per_draft.append(scores)
            probs_per_draft.append(probs)
        probs = torch.stack(probs_per_draft, dim=1) if self.do_sample else None
        return torch.stack(drafts, dim=1), torch.stack(scores_per_draft, dim=1), probs

    # ------------------------------------------------------------------------------------------------------- modes
    def alternate_step(self, remaining: int) -> None:
        """The paper's schedule: the module's token, then one base forward over it that yields the base's token."""
        drafts, draft_scores, _ = self.drafter.draft(self, 1)
        num_rows = drafts.shape[0]
        if remaining == 1:
            # The module's token is the last one asked for: no base forward is needed.
            self._commit(drafts, [1] * num_rows, draft_scores)
            return
        states = self.verify_forward(drafts)
        base_scores = self._process(self.model.vocab_logits(states[:, -1]), drafts)
        base_tokens, _ = _select_tokens(base_scores, self.do_sample)
        self.stats.drafted_tokens += len(self.unfinished_rows)
        self.stats.accepted_drafts += len(self.unfinished_rows)
        tokens = torch.cat([drafts, base_tokens.unsqueeze(1)], dim=1)
        scores = torch.cat([draft_scores, base_scores.unsqueeze(1)], dim=1)
        self._commit(tokens, [2] * num_rows, scores)
        self._advance(states, torch.ones_like(base_tokens), [1] * num_rows, base_tokens, num_drafts=1)
        self.drafter.update(self, 1, [1] * num_rows)

    def verify_step(self, num_drafts: int) -> None:
        """Draft, check all drafts with one base forward, keep the agreeing prefix plus the base's next token."""
        if num_drafts > 0:
            drafts, _, draft_probs = self.drafter.draft(self, num_drafts)
        else:
            # Only one token is left to produce: an ordinary decoding step, after which every row is done.
            drafts = self.slot_ids.new_zeros((self.slot_ids.shape[0], 0))
            draft_probs = None
        states = self.verify_forward(drafts)
        logits = self.model.vocab_logits(states)
        target_scores = torch.stack(
            [self._process(logits[:, i], drafts[:, :i]) for i in range(num_drafts + 1)], dim=1
        )
        if self.do_sample:
            target_probs = torch.softmax(target_scores, dim=-1)
            if num_drafts > 0:
                accepted, next_tokens = speculative_acceptance(drafts, draft_probs, target_probs)
            else:
                accepted = drafts.new_zeros(drafts.shape[0])
                next_tokens = torch.multinomial(target_probs[:, 0], num_samples=1).squeeze(1)
        else:
            targets = target_scores.argmax(dim=-1)
            accepted = (drafts == targets[:, :num_drafts]).long().cumprod(dim=1).sum(dim=1)
            next_tokens = targets.gather(1, accepted.unsqueeze(1)).squeeze(1)
        # Finished rows must not widen the step for the others.
        accepted = torch.where(self.unfinished, accepted, torch.zeros_like(accepted))
        accepted_list = accepted.tolist()
        tokens = torch.cat([drafts, next_tokens.unsqueeze(1)], dim=1)
        tokens[torch.arange(tokens.shape[0], device=tokens.device), accepted] = next_tokens
        self.stats.drafted_tokens += num_drafts * len(self.unfinished_rows)
        self.stats.accepted_drafts += sum(accepted_list[row] for row in self.unfinished_rows)
        self._commit(tokens, [count + 1 for count in accepted_list], target_scores)
        self._advance(states, accepted, accepted_list, next_tokens, num_drafts)
        self.drafter.update(self, num_drafts, accepted_list)

    # ------------------------------------------------------------------------------------------------- bookkeeping
    def _draft_vocab_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits for a draft; tokens outside a draft vocabulary get -inf (verify mode only)."""
        if self.mode != "verify":
            return self.model.vocab_logits(states)
        logits, token_ids = self.model.draft_logits(states)
        if token_ids is None:
            return logits
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        full = logits.new_full((logits.shape[0], vocab_size), float("-inf"))
        return full.index_copy_(1, token_ids, logits)

    def _process(self, logits: torch.Tensor, earlier_drafts: torch.Tensor | None = None) -> torch.Tensor:
        return self.rows.process(self.logits_processor, logits, self.unfinished_rows, earlier_drafts)

    def _place_newest_tokens(self, tokens: torch.Tensor) -> None:
        column = self.base_length
        self.slot_ids[:, column] = tokens
        self.slot_mask[:, column] = 1
        self.slot_positions[:, column] = self.next_positions

    def _advance(
        self,
        states: torch.Tensor,
        accepted: torch.Tensor,
        accepted_list: list[int],
        next_tokens: torch.Tensor,
        num_drafts: int,
    ) -> None:
        """Roll both caches back past rejected drafts and make `next_tokens` each row's newest token."""
        start = self.base_length
        max_accepted = max(accepted_list)
        if num_drafts > 0:
            offsets = torch.arange(num_drafts, device=accepted.device)
            kept = (offsets < accepted.unsqueeze(1)).to(self.slot_mask.dtype)
            self.slot_mask[:, start + 1 : start + 1 + num_drafts] = kept
        self.base_cache.crop(-(num_drafts - max_accepted))
        # Module entries after column `start` were computed from the module's own states: redo them from true ones.
        if self.module_length > start + 1:
            self.module_cache.crop(-(self.module_length - start - 1))
            self.module_length = start + 1
        self.base_length = start + max_accepted + 1
        self.pending_states = states[:, : max_accepted + 1]
        self.pending_valid = self.slot_mask[:, start : self.base_length]
        self.next_positions = self.next_positions + accepted + 1
        self._place_newest_tokens(next_tokens)

    def _commit(self, tokens: torch.Tensor, counts: list[int], scores: torch.Tensor) -> None:
        """Emit, column by column, each row's first `counts[row]` tokens, stopping rows as plain decoding would."""
        for column in range(tokens.shape[1]):
            rows = [row for row in self.unfinished_rows if counts[row] > column]
            if not rows:
                break
            column_tokens = tokens[:, column]
            self.rows.append(rows, column_tokens)
            if self.streamer is not None:
                emitted = torch.full_like(column_tokens, self.pad_token_id)
                emitted[rows] = column_tokens[rows]
                self.streamer.put(emitted.cpu())
            self.stats.new_tokens += len(rows)
            self._apply_stopping_criteria(rows, scores[:, column])

    def _apply_stopping_criteria(self, rows: list[int], scores: torch.Tensor) -> None:
        stopped: set[int] = set()
        for new_count, group in self.rows.groups(rows).items():
            if new_count >= self.max_new_tokens:
                stopped.update(group)
                continue
            done = self.stopping_criteria(self.rows.context(new_count), scores).tolist()
            stopped.update(row for row in group if done[row])
        if stopped:
            self.unfinished[sorted(stopped)] = False
            self.unfinished_rows = [row for row in self.unfinished_rows if row not in stopped]


__all__ = [
    "CONTEXT_FREE_PROCESSORS",
    "ModuleDrafter",
    "RecycleDecoder",
    "RecycleDrafter",
    "RowContexts",
    "slot_columns_needed",
]
