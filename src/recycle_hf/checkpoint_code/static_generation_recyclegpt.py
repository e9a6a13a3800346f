# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The fast path of recycle decoding: decoding state as device tensors and one step function of fixed shapes.

Modelled on gpt-fast's `speculative_decode`: a prefill, then a step that drafts `k` tokens with the module, checks
them with one base forward over k + 1 positions, accepts (greedy: the agreeing prefix; sampling: the speculative
rule), commits the accepted tokens to a preallocated output buffer, stops rows at EOS or the token budget, and
catches the module up on the accepted tokens. Every tensor a step reads or writes has a shape fixed for the whole
call (batch, k, the cache's slot count), nothing leaves the device inside a step, and rows that stopped keep
computing (their results are discarded) so that no shape depends on which rows are still running. The caller
synchronises once per step to learn whether every row has stopped. So the step can be compiled with
`torch.compile(fullgraph=True)` and, on CUDA, replayed as a CUDA graph.

Slots: column j of both caches holds column j of each row's sequence, left padding included (`RowStaticCache`). A
row's newest token sits at slot `base_lengths[b]`, which no cache has seen yet; the module's entry for that slot was
computed from the true base state before it, and its output, `draft_states`, drafts the next token.

What needs the host or the whole context (repetition penalties, stop strings, custom stopping criteria, ...) is
not here: `generation_recyclegpt.py` sends such calls to its reference loop, which this path is tested against.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .attention_recyclegpt import grouped_query_sdpa
from .draft_shape_recyclegpt import DraftShape
from .few_row_products_recyclegpt import project_rows, swapped_row_counts
from .masks_recyclegpt import row_attention_mask
from .recycle_stats_recyclegpt import RecycleStats
from .runtime_recyclegpt import decoding_runtime
from .static_cache_recyclegpt import RowStaticCache


# Slot counts are rounded up to a multiple of this, so prompts of different lengths share one compiled step.
SLOT_BUCKET = 64
# Each (mode, k, batch size, slot bucket, dtype, sampling settings) is one compiled graph of `step`; dynamo's default
# limit of 8 graphs per function would end a benchmark of five draft lengths at two budgets with an error.
COMPILED_GRAPHS_LIMIT = 64


@dataclass
class DecodingSettings:
    """What one `generate` call asks of recycle decoding (shared by the fast path and the reference loop)."""

    mode: str
    draft_shape: DraftShape  # verify mode's chain or tree (greedy only); alternate mode's chain of 1
    do_sample: bool
    logits_processor: Any
    stopping_criteria: Any
    streamer: Any
    pad_token_id: int
    max_new_tokens: int

    @property
    def num_draft_tokens(self) -> int:
        """Drafts per step: a chain's k, a tree's node count (one slot per node)."""
        return self.draft_shape.num_nodes

    @property
    def draft_tree(self) -> DraftShape | None:
        """The shape when the tree step must decode it (it is not a chain), else None."""
        return None if self.draft_shape.is_chain else self.draft_shape


@dataclass
class StaticDecodingState:
    """What changes from step to step, as device tensors ([B]: one entry per row)."""

    newest_tokens: torch.Tensor  # [B] each row's newest token, at slot base_lengths (no cache has seen it)
    base_lengths: torch.Tensor  # [B] slots of the base cache holding accepted tokens
    draft_states: torch.Tensor  # [B, 1, D] module state at the newest token's slot: it drafts the next token
    output_ids: torch.Tensor  # [B, max_new_tokens + k + 1] emitted tokens, padding after each row's count
    new_counts: torch.Tensor  # [B] tokens emitted so far
    unfinished: torch.Tensor  # [B] rows still generating
    accepted_drafts: torch.Tensor  # [] accepted drafts summed over generating rows (statistics)
    generating_row_steps: torch.Tensor  # [] steps summed over generating rows (statistics)


@dataclass
class StaticStepOutput:
    """A step's new state plus what the host may want to see after the step's one synchronisation."""

    state: StaticDecodingState
    emitted_tokens: torch.Tensor  # [B, k + 1] tokens offered this step (only the first `emitted_counts` count)
    emitted_counts: torch.Tensor  # [B] tokens committed this step
    accepted: torch.Tensor  # [B] drafts the base accepted this step (whether or not the row was still generating)
    accepted_query: torch.Tensor | None = None  # [B] tree steps: the deepest accepted node + 1 (0: none)


def sample_without_sync(probs: torch.Tensor) -> torch.Tensor:
    """One sample per row of `probs` [..., V]: argmax of p / Exp(1), the exponential race (gpt-fast), which
    compiles and needs no host synchronisation, unlike `torch.multinomial`."""
    race = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / race, dim=-1)


def speculative_acceptance(
    drafts: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule (Leviathan et al., Chen et al.), batched, without host synchronisation.

    drafts [B, k], draft_probs q [B, k, V], target_probs p [B, k + 1, V]. A draft is kept with probability
    min(1, p/q); at the first rejection the token is resampled from max(0, p - q) renormalised, and if every draft is
    kept the bonus token is sampled from p at position k. Returns (accepted count [B], next token [B]).
    """
    k = drafts.shape[1]
    p_of_draft = target_probs[:, :k].gather(-1, drafts.unsqueeze(-1)).squeeze(-1)
    q_of_draft = draft_probs.gather(-1, drafts.unsqueeze(-1)).squeeze(-1)
    kept = torch.rand_like(p_of_draft) * q_of_draft < p_of_draft  # u < p/q without dividing by a q that may underflow
    num_accepted = kept.long().cumprod(dim=1).sum(dim=1)
    index = num_accepted[:, None, None].expand(-1, 1, target_probs.shape[-1])
    target_at_stop = target_probs.gather(1, index).squeeze(1)
    padded_draft_probs = torch.cat([draft_probs, torch.zeros_like(draft_probs[:, :1])], dim=1)
    residual = (target_at_stop - padded_draft_probs.gather(1, index).squeeze(1)).clamp(min=0)
    residual_mass = residual.sum(dim=-1, keepdim=True)
    # p == q leaves no residual; then p itself is the right distribution.
    next_distribution = torch.where(residual_mass > 0, residual / residual_mass.clamp(min=1e-30), target_at_stop)
    return num_accepted, sample_without_sync(next_distribution)


class StaticRecycleDecoder:
    """Constants of one call (model, caches, masks, settings) and the prefill and step that run on them.

    `settings`: its logits processors must all be context-free (they
    see no `input_ids`) and its stopping criteria must be the token budget and EOS, which the step applies itself.
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        settings: Any,
        eos_token_ids: torch.Tensor | None,
        compile_options: dict[str, Any] | None = None,
    ):
        self.model = model
        self.alternate = settings.mode == "alternate"
        self.num_drafts = settings.num_draft_tokens
        self.draft_depth = self.num_drafts  # module forwards per step, catching up included (a tree: its depth)
        self.prepare_draft_shape(settings, prompt_ids.device)
        self.do_sample = settings.do_sample
        self.processors = list(settings.logits_processor)
        self.streamer = settings.streamer
        self.pad_token_id = settings.pad_token_id
        self.max_new_tokens = settings.max_new_tokens
        self.eos_token_ids = eos_token_ids.flatten() if eos_token_ids is not None else None

        batch_size, prompt_width = prompt_ids.shape
        device = prompt_ids.device
        self.prompt_ids = prompt_ids
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        num_slots = -(-(prompt_width + self.max_new_tokens + self.num_drafts + 1) // SLOT_BUCKET) * SLOT_BUCKET
        self.not_padding = torch.ones(batch_size, num_slots, dtype=torch.bool, device=device)
        self.not_padding[:, :prompt_width] = attention_mask.bool()
        self.padding_counts = prompt_width - attention_mask.long().sum(dim=1)
        # Rotary positions go on past max_position_embeddings, as in plain decoding. A table of learned positions
        # ends there (generate refuses calls that would need more): only slots no output depends on, drafts past
        # the token budget, are clamped into it.
        max_positions = getattr(model.config.base_config, "max_position_embeddings", None)
        learned = model.rotary_embedding is None and max_positions
        self.max_position = max_positions - 1 if learned else None
        self.base_cache, self.module_cache = static_caches(model, batch_size, num_slots, device)
        self.attention_implementation = model.config.base_config._attn_implementation
        self.state_dtype = model.get_output_embeddings().weight.dtype
        # Verify mode drafts over the draft vocabulary, when the module has one; alternate mode's drafts are
        # emitted as they are, so they come from the whole vocabulary.
        self.draft_head = None if self.alternate else model.draft_head()
        # The draft head's product forms are fixed here, before the first output (measured once per machine).
        self.draft_head_swapped_rows = swapped_row_counts(self.draft_head[0]) if self.draft_head else frozenset()
        self.compiled = compile_options is not None
        self.step_function: Callable[[StaticDecodingState], StaticStepOutput] = (
            torch.compile(self.step, **compile_options) if self.compiled else self.step
        )

    def prepare_draft_shape(self, settings: Any, device: torch.device) -> None:
        """What a subclass's draft shape needs before the caches are made (a chain needs nothing more)."""

    # --------------------------------------------------------------------------------------------------- forwards

    def _positions(self, start: torch.Tensor, num_new: int) -> torch.Tensor:
        slots = start.unsqueeze(1) + torch.arange(num_new, device=start.device)
        return (slots - self.padding_counts.unsqueeze(1)).clamp(0, self.max_position)

    def _mask(self, start: torch.Tensor, num_new: int) -> torch.Tensor:
        return row_attention_mask(start, num_new, self.not_padding, self.attention_implementation, self.state_dtype)

    def base_states(
        self, tokens: torch.Tensor, start: torch.Tensor, mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Base forward over `tokens` [B, n] at slots start[b] + i (by default causal, at consecutive positions);
        returns the states feeding the LM head."""
        self.base_cache.write_start.copy_(start)
        num_new = tokens.shape[1]
        mask = self._mask(start, num_new) if mask is None else mask
        positions = self._positions(start, num_new) if positions is None else positions
        return self.model.base_step(tokens, mask, positions, self.base_cache)

    def module_states(
        self, tokens: torch.Tensor, previous_states: torch.Tensor, start: torch.Tensor,
        mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Module forward over pairs (previous_states[:, i], tokens[:, i]) at slots start[b] + i."""
        self.module_cache.write_start.copy_(start)
        num_new = tokens.shape[1]
        mask = self._mask(start, num_new) if mask is None else mask
        positions = self._positions(start, num_new) if positions is None else positions
        return self.model.recycle_step(tokens, previous_states, mask, positions, self.module_cache)

    # ------------------------------------------------------------------------------------------ token selection
    def _process(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        if not self.processors:
            return scores
        flat = scores.reshape(-1, scores.shape[-1])
        for processor in self.processors:
            flat = processor(None, flat)
        return flat.reshape(scores.shape)

    def _select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.do_sample:
            return scores.argmax(dim=-1), None
        probs = torch.softmax(scores, dim=-1)
        return sample_without_sync(probs), probs

    def draft_scores(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Processed scores of the next token from module states [..., D] over the draft vocabulary, and that
        vocabulary's token ids (None: the whole vocabulary, column i is token i)."""
        if self.draft_head is None:
            return self._process(self.model.vocab_logits(states)), None
        weight, bias, token_ids = self.draft_head
        # Context-free processors give the same result on the slice as on the full row with -inf elsewhere.
        return self._process(project_rows(states, weight, bias, self.draft_head_swapped_rows)), token_ids

    def _draft_token(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A draft from module states [B, D]: (token [B], its full-vocabulary distribution or None)."""
        scores, token_ids = self.draft_scores(states)
        if token_ids is None:
            return self._select(scores)
        index, slice_probs = self._select(scores)
        if slice_probs is None:
            return token_ids[index], None
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        probs = slice_probs.new_zeros(slice_probs.shape[0], vocab_size).index_copy_(1, token_ids, slice_probs)
        return token_ids[index], probs

    def draft(self, state: StaticDecodingState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k drafts [B, k] (and their distributions [B, k, V] when sampling); drafts after the first read the
        module's own previous state in place of the base's."""
        states = state.draft_states
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor | None] = []
        for index in range(self.num_drafts):
            if index > 0:
                states = self.module_states(tokens[-1].unsqueeze(1), states, state.base_lengths + index)
            token, token_probs = self._draft_token(states[:, -1])
            tokens.append(token)
            probs.append(token_probs)
        return torch.stack(tokens, dim=1), (torch.stack(probs, dim=1) if self.do_sample else None)

    # ----------------------------------------------------------------------------------------------- the step
    def accept(
        self, drafts: torch.Tensor, draft_probs: torch.Tensor | None, base: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(accepted drafts [B], next token [B]) from the base states [B, k + 1, D] over [newest, drafts]."""
        if self.alternate:
            # The paper's schedule keeps the module's token unchecked; only the base's own next token is needed.
            next_tokens, _ = self._select(self._process(self.model.vocab_logits(base[:, -1])))
            return torch.full_like(next_tokens, self.num_drafts), next_tokens
        target_scores = self._process(self.model.vocab_logits(base))
        if self.do_sample:
            return speculative_acceptance(drafts, draft_probs, torch.softmax(target_scores, dim=-1))
        targets = target_scores.argmax(dim=-1)
        accepted = (drafts == targets[:, :-1]).long().cumprod(dim=1).sum(dim=1)
        return accepted, targets.gather(1, accepted.unsqueeze(1)).squeeze(1)

    def commit(
        self, state: StaticDecodingState, offered: torch.Tensor, offered_counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write each generating row's first `offered_counts` tokens of `offered` [B, n] to the output, cut at the
        first EOS and at the token budget. Returns (output_ids, new_counts, unfinished, committed counts)."""
        columns = torch.arange(offered.shape[1], device=offered.device)
        counts = offered_counts
        if self.eos_token_ids is not None:
            is_eos = (offered.unsqueeze(-1) == self.eos_token_ids).any(dim=-1) & (columns < counts.unsqueeze(1))
            hit_eos = is_eos.any(dim=1)
            counts = torch.where(hit_eos, is_eos.int().argmax(dim=1) + 1, counts)
        else:
            hit_eos = torch.zeros_like(state.unfinished)
        counts = torch.minimum(counts, self.max_new_tokens - state.new_counts)
        counts = torch.where(state.unfinished, counts, torch.zeros_like(counts))
        index = state.new_counts.unsqueeze(1) + columns
        written = columns < counts.unsqueeze(1)
        values = torch.where(written, offered, state.output_ids.gather(1, index))
        output_ids = state.output_ids.scatter(1, index, values)
        new_counts = state.new_counts + counts
        unfinished = state.unfinished & ~hit_eos & (new_counts < self.max_new_tokens)
        return output_ids, new_counts, unfinished, counts

    def step(self, state: StaticDecodingState) -> StaticStepOutput:
        """Draft, verify, accept, commit, and catch the module up: one base forward, fixed shapes."""
        drafts, draft_probs = self.draft(state)
        base = self.base_states(torch.cat([state.newest_tokens.unsqueeze(1), drafts], dim=1), state.base_lengths)
        accepted, next_tokens = self.accept(drafts, draft_probs, base)
        return self.finish_step(state, drafts, accepted, next_tokens, base)

    def finish_step(
        self,
        state: StaticDecodingState,
        drafts: torch.Tensor,
        accepted: torch.Tensor,
        next_tokens: torch.Tensor,
        base: torch.Tensor,
        accepted_query: torch.Tensor | None = None,
    ) -> StaticStepOutput:
        """What every step does once it has accepted: commit the first `accepted` of `drafts` [B, D] and the base's
        own `next_tokens`, catch the module up on them from the base states `base` [B, D + 1, .] that precede them
        (drafting used the module's own), and advance the rows still generating."""
        # offered[:, :accepted + 1] = the accepted drafts, then the base's own token; later columns are unused.
        offered = torch.cat([drafts, next_tokens.unsqueeze(1)], dim=1)
        offered = offered.scatter(1, accepted.unsqueeze(1), next_tokens.unsqueeze(1))
        output_ids, new_counts, unfinished, counts = self.commit(state, offered, accepted + 1)
        module = self.module_states(offered, base, state.base_lengths + 1)
        draft_states = module.gather(1, accepted[:, None, None].expand(-1, 1, module.shape[-1]))
        # Rows that stopped stay where they are, so that their (discarded) writes never leave the cache.
        advance = torch.where(unfinished, accepted + 1, torch.zeros_like(accepted))
        generating = state.unfinished
        new_state = StaticDecodingState(
            newest_tokens=next_tokens,
            base_lengths=state.base_lengths + advance,
            draft_states=draft_states,
            output_ids=output_ids,
            new_counts=new_counts,
            unfinished=unfinished,
            accepted_drafts=state.accepted_drafts + torch.where(generating, accepted, 0).sum(),
            generating_row_steps=state.generating_row_steps + generating.long().sum(),
        )
        return StaticStepOutput(state=new_state, emitted_tokens=offered, emitted_counts=counts, accepted=accepted,
                                accepted_query=accepted_query)

    # --------------------------------------------------------------------------------------------- prefill, run
    def prefill(self) -> StaticStepOutput:
        """Base and module over the prompt (eager: its length varies), the first token, the first draft state."""
        batch_size, prompt_width = self.prompt_ids.shape
        start = torch.zeros(batch_size, dtype=torch.long, device=self.prompt_ids.device)
        base = self.base_states(self.prompt_ids, start)
        first_tokens, _ = self._select(self._process(self.model.vocab_logits(base[:, -1])))
        # The module reads h_{j-1} at slot j: zero at slot 0 and wherever slot j - 1 is padding.
        previous = torch.cat([torch.zeros_like(base[:, :1]), base], dim=1)
        not_padding = self.not_padding
        previous_is_token = torch.cat([torch.zeros_like(not_padding[:, :1]), not_padding[:, :prompt_width]], 1)
        previous = torch.where(previous_is_token.unsqueeze(-1), previous, torch.zeros_like(previous))
        module = self.module_states(torch.cat([self.prompt_ids, first_tokens.unsqueeze(1)], dim=1), previous, start)
        zero = torch.zeros((), dtype=torch.long, device=start.device)
        state = StaticDecodingState(
            newest_tokens=first_tokens,
            base_lengths=start + prompt_width,
            draft_states=module[:, -1:].contiguous(),  # a step's own output is contiguous: same guards
            output_ids=self.prompt_ids.new_full((batch_size, self.max_new_tokens + self.num_drafts + 1),
                                                self.pad_token_id),
            new_counts=torch.zeros_like(start),
            unfinished=torch.ones(batch_size, dtype=torch.bool, device=start.device),
            accepted_drafts=zero,
            generating_row_steps=zero + batch_size,
        )
        output_ids, new_counts, unfinished, counts = self.commit(state, first_tokens.unsqueeze(1), start + 1)
        state = dataclasses.replace(state, output_ids=output_ids, new_counts=new_counts, unfinished=unfinished)
        return StaticStepOutput(state=state, emitted_tokens=first_tokens.unsqueeze(1), emitted_counts=counts,
                                accepted=torch.zeros_like(counts))

    def run(self) -> tuple[torch.Tensor, RecycleStats]:
        """Decode; returns (sequences [B, prompt + longest row], statistics)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(grouped_query_sdpa(self.model))  # changes only layers on transformers' "sdpa"
            if self.compiled:
                # Patched once per call, not per step: entering a dynamo config patch is costly next to a step.
                stack.enter_context(torch._dynamo.config.patch(recompile_limit=COMPILED_GRAPHS_LIMIT))
            return self._decode()

    def _decode(self) -> tuple[torch.Tensor, RecycleStats]:
        started = time.perf_counter()
        output = self.prefill()
        self._stream(output)
        base_forwards, recycle_forwards, compile_seconds = 1, 0, 0.0
        while True:
            generating, most_remaining = self._progress(output.state)  # the step's one host synchronisation
            if not generating:
                break
            if self.alternate and most_remaining == 1:
                # The module's token is the last one any row needs: no base forward (as in the paper's schedule).
                output = self.final_draft_step(output.state)
                self._stream(output)
                recycle_forwards += 1
                continue
            if output.state.draft_states.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            step_started = time.perf_counter()
            output = self.step_function(output.state)
            if base_forwards == 1 and self.compiled:
                compile_seconds = time.perf_counter() - step_started  # the first call compiles (or loads a cache)
            if output.state.draft_states.device.type == "cuda" and self.compiled:
                # A CUDA graph's outputs live in its own memory, which its next replay overwrites.
                output = _cloned(output)
            self._stream(output)
            base_forwards += 1
            recycle_forwards += self.draft_depth
        if self.streamer is not None:
            self.streamer.end()
        state = output.state
        longest = int(state.new_counts.max())
        sequences = torch.cat([self.prompt_ids, state.output_ids[:, :longest]], dim=1)
        drafted = int(state.generating_row_steps - self.prompt_ids.shape[0]) * self.num_drafts
        stats = RecycleStats(
            batch_size=self.prompt_ids.shape[0],
            mode="alternate" if self.alternate else "verify",
            decoding_path="static",
            base_forwards=base_forwards,
            row_base_forwards=int(state.generating_row_steps),
            recycle_forwards=recycle_forwards,
            new_tokens=int(state.new_counts.sum()),
            drafted_tokens=drafted,
            accepted_drafts=int(state.accepted_drafts),
            tokens_per_row=state.new_counts.tolist(),
            compile_seconds=compile_seconds,
            decoding_seconds=time.perf_counter() - started - compile_seconds,
        )
        return sequences, stats

    def final_draft_step(self, state: StaticDecodingState) -> StaticStepOutput:
        """Alternate mode's last token: the module's draft alone, committed without a base forward (eager)."""
        drafts, _ = self.draft(state)
        one_each = torch.ones_like(state.new_counts)
        output_ids, new_counts, unfinished, counts = self.commit(state, drafts[:, :1], one_each)
        state = dataclasses.replace(state, output_ids=output_ids, new_counts=new_counts, unfinished=unfinished)
        return StaticStepOutput(state=state, emitted_tokens=drafts[:, :1], emitted_counts=counts,
                                accepted=torch.zeros_like(counts))

    def _progress(self, state: StaticDecodingState) -> tuple[bool, int]:
        """(is any row generating, the most tokens a generating row still needs), in one transfer to the host."""
        remaining = torch.where(state.unfinished, self.max_new_tokens - state.new_counts, 0)
        generating, most_remaining = torch.stack([state.unfinished.any().long(), remaining.max()]).tolist()
        return bool(generating), most_remaining

    def _stream(self, output: StaticStepOutput) -> None:
        if self.streamer is None:
            return
        counts = output.emitted_counts.tolist()
        tokens = output.emitted_tokens.cpu()
        for column in range(max(counts)):
            emitted = torch.where(torch.tensor(counts) > column, tokens[:, column], self.pad_token_id)
            self.streamer.put(emitted)


def _cloned(output: StaticStepOutput) -> StaticStepOutput:
    fields = dataclasses.fields(output.state)
    state = StaticDecodingState(**{f.name: getattr(output.state, f.name).clone() for f in fields})
    return StaticStepOutput(state=state, emitted_tokens=output.emitted_tokens.clone(),
                            emitted_counts=output.emitted_counts.clone(), accepted=output.accepted.clone(),
                            accepted_query=None if output.accepted_query is None else output.accepted_query.clone())


def static_caches(
    model: Any, batch_size: int, num_slots: int, device: torch.device
) -> tuple[RowStaticCache, RowStaticCache]:
    """Base and module caches for `batch_size` rows of `num_slots`; pooled in the model's `DecodingRuntime` and
    reused by later calls of the same size, so that compiled steps and CUDA graphs see the same tensors every call
    (stale entries are masked). `model.free_decoding_caches()` frees them."""
    key = (batch_size, num_slots, device, model.get_output_embeddings().weight.dtype)
    return decoding_runtime(model).cache_pair(key, lambda: (
        RowStaticCache(model.config.base_config.num_hidden_layers, num_slots, batch_size, device),
        RowStaticCache(model.recycle_module.config.num_hidden_layers, num_slots, batch_size, device),
    ))


__all__ = [
    "SLOT_BUCKET",
    "DecodingSettings",
    "StaticDecodingState",
    "StaticRecycleDecoder",
    "StaticStepOutput",
    "sample_without_sync",
    "speculative_acceptance",
    "static_caches",
]
