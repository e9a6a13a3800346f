# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Fine-tuning the recyclable module with transformers' `Trainer`.

The `Trainer` sees a small wrapper, [`RecycleTrainingModel`], whose `forward` computes the training loss, so data
parallelism (`torchrun`, `accelerate launch`) wraps and synchronises it like any model. With a frozen base (the
default, head-only training) the base runs once per batch under `torch.no_grad()`: no graph is kept through its
layers, and its final states feed the module directly. The same base forward gives the base's own next-token
distribution, the soft targets of the optional distillation loss. Because a frozen base gives the same states in
every epoch, [`BaseStateDataset`] can compute them once up front; each later step then costs only the module.
With `draft_depth` > 1 the module is also trained on its own chained drafts, exactly as verify mode runs them
([`chained_module_states`]), so that its second and later drafts are accepted too.

Checkpoints and the final output are recycle adapters (see `recycle_hf.adapter`); `Trainer` adds its optimizer,
scheduler and RNG states to checkpoints so that training resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import ModelOutput

from .adapter import load_adapter_weights, save_recycle_adapter
from .base_states import FROZEN_BASE_ONLY, BaseStateDataset, base_fingerprint, base_is_trainable
from .checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM, positions_from_attention_mask


logger = logging.getLogger(__name__)


@dataclass
class RecycleLossSettings:
    r"""
    The settings of the module's training loss, one definition for the training arguments (whose fields they are),
    the command-line options and the training wrapper.

    Args:
        distill_weight (`float`, defaults to 0.0):
            Mix of the module's two losses: `(1 - distill_weight) * cross_entropy(labels) + distill_weight *
            KL(base || module)`, where the KL divergence is to the base model's own next-token distribution at the
            same position (soft targets; what verify-mode acceptance depends on). 0 trains on the labels only.
        distill_temperature (`float`, defaults to 1.0):
            Temperature applied to both distributions in the KL term.
        lm_loss_weight (`float`, defaults to 1.0):
            With LoRA on the base, weight of the base's own cross-entropy added to the loss (keeps the base a good
            language model while it adapts to the module). Unused when the base is frozen.
        state_loss_weight (`float`, defaults to 0.0):
            Weight of a smooth-L1 loss pulling the module's output state at position j towards the base's state
            h_j (EAGLE's feature regression). Verify mode feeds that output state to the module in place of h_j
            when it drafts more than one token, so this is what makes second and later drafts good.
        draft_depth (`int`, defaults to 1):
            Train the module as verify mode chains it, up to this many drafts in a row: at depth d > 1 the module
            reads its own depth d-1 output state in place of the base's and attends to the same cache entries as
            when drafting (EAGLE-3's training-time test; see [`chained_module_states`]). 1 trains single drafts
            (and the alternating mode) only.
        draft_depth_decay (`float`, defaults to 0.8):
            The loss at depth d is weighted by `draft_depth_decay ** (d - 1)`.
    """

    distill_weight: float = field(default=0.0, metadata={"help": "Weight of the KL loss to the base's distribution."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the distillation loss."})
    lm_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the base's LM loss when the base trains."})
    state_loss_weight: float = field(default=0.0, metadata={"help": "Weight of the state regression loss."})
    draft_depth: int = field(default=1, metadata={"help": "Chained drafts trained per position (training-time test)."})
    draft_depth_decay: float = field(default=0.8, metadata={"help": "Loss weight ratio between successive depths."})

    def __post_init__(self):
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be between 0 and 1, got {self.distill_weight}.")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}.")
        if self.lm_loss_weight < 0:
            raise ValueError(f"lm_loss_weight must be >= 0, got {self.lm_loss_weight}.")
        if self.state_loss_weight < 0:
            raise ValueError(f"state_loss_weight must be >= 0, got {self.state_loss_weight}.")
        if self.draft_depth < 1:
            raise ValueError(f"draft_depth must be >= 1 (1 trains single drafts), got {self.draft_depth}.")
        if self.draft_depth_decay <= 0:
            raise ValueError(f"draft_depth_decay must be > 0, got {self.draft_depth_decay}.")


# The names of the loss settings: fields of `RecycleTrainingArguments`, options of the training commands and keyword
# arguments of `RecycleTrainingModel`.
LOSS_SETTINGS = tuple(setting.name for setting in fields(RecycleLossSettings))


@dataclass
class RecycleTrainingArguments(RecycleLossSettings, TrainingArguments):
    """`TrainingArguments` plus the module's loss settings ([`RecycleLossSettings`])."""

    def __post_init__(self):
        TrainingArguments.__post_init__(self)
        RecycleLossSettings.__post_init__(self)


@dataclass
class RecycleTrainingOutput(ModelOutput):
    """The loss `Trainer` minimises and detached per-batch statistics, which `RecycleTrainer` logs (averaged over
    the logging interval)."""

    loss: torch.Tensor | None = None
    # The module's cross-entropy and top-1 accuracy on the labels (first draft).
    recycle_loss: torch.Tensor | None = None
    recycle_accuracy: torch.Tensor | None = None
    # With distillation: the KL term; whenever the base's logits are computed: top-1 agreement with the base.
    distill_loss: torch.Tensor | None = None
    base_agreement: torch.Tensor | None = None
    # With draft_depth > 1: the second chained draft's top-1 agreement with the base.
    second_draft_agreement: torch.Tensor | None = None
    state_loss: torch.Tensor | None = None
    # With LoRA on the base: the base's own cross-entropy.
    lm_loss: torch.Tensor | None = None


# The per-batch statistics of `RecycleTrainingOutput`, by name.
TRAINING_METRICS = tuple(output.name for output in fields(RecycleTrainingOutput) if output.name != "loss")


def loss_settings(arguments: Any) -> dict[str, Any]:
    """The `LOSS_SETTINGS` of `arguments` (training arguments or parsed command-line options) by name."""
    return {name: getattr(arguments, name) for name in LOSS_SETTINGS}


class RecycleTrainingModel(nn.Module):
    """What `Trainer` trains: a [`RecycleGPTForCausalLM`] whose `forward` returns the recyclable module's loss.

    A frozen base runs in eval mode (no dropout: the module learns the states it will see when decoding) and
    without autograd, or not at all when the batch carries its precomputed `base_states` (see [`BaseStateDataset`]).
    With LoRA layers on the base (trainable base parameters) the base runs with autograd and its own cross-entropy
    joins the loss, weighted by `lm_loss_weight`. `recycle_loss_weight` scales the module's part of the loss (joint
    training of base and module, `recycle_hf.pretraining`).
    """

    # The loss is a per-batch mean: Trainer scales it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, model: RecycleGPTForCausalLM, recycle_loss_weight: float = 1.0, **loss_settings: Any):
        """`loss_settings`: the fields of [`RecycleLossSettings`] by name; those not given keep their defaults."""
        super().__init__()
        self.model = model
        self.recycle_loss_weight = recycle_loss_weight
        self.loss_settings = RecycleLossSettings(**loss_settings)

    @property
    def base_is_trainable(self) -> bool:
        return base_is_trainable(self.model)

    def train(self, mode: bool = True) -> RecycleTrainingModel:
        super().train(mode)
        if not self.base_is_trainable:
            self.model.base_lm.eval()
        return self

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        base_states: torch.Tensor | None = None,
    ) -> RecycleTrainingOutput:
        model, settings = self.model, self.loss_settings
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is None:
            labels = input_ids.masked_fill(attention_mask == 0, -100)
        position_ids = positions_from_attention_mask(attention_mask, input_ids.shape[1])
        base_trainable = self.base_is_trainable
        # Evaluation always reports the agreement with the base, the number verify mode's speed depends on.
        need_base_logits = base_trainable or settings.distill_weight > 0 or not self.training

        if base_states is None:
            with torch.set_grad_enabled(base_trainable and torch.is_grad_enabled()):
                base_states = model.base_step(input_ids, attention_mask, position_ids, None)
        elif base_trainable:
            raise ValueError(FROZEN_BASE_ONLY)
        states_per_depth = chained_module_states(
            model, input_ids, base_states, attention_mask, position_ids, settings.draft_depth
        )

        # Both outputs at position j predict token j+1; only positions with a target enter the losses.
        targets = labels[:, 1:]
        has_target = targets != -100
        target_ids = targets[has_target]
        target_base_states = base_states[:, :-1][has_target].detach()
        base_logits = teacher = None
        if need_base_logits:
            with torch.set_grad_enabled(base_trainable and torch.is_grad_enabled()):
                base_logits = model.vocab_logits(base_states[:, :-1][has_target]).float()
            # Computed once for all depths; each depth takes the rows of its positions.
            teacher_log_probs = None
            if settings.distill_weight > 0:
                teacher_log_probs = F.log_softmax(base_logits.detach() / settings.distill_temperature, dim=-1)
            teacher = _Teacher(top1=base_logits.argmax(-1), log_probs=teacher_log_probs)
        loss = 0.0
        statistics: dict[str, torch.Tensor] = {}
        for depth, module_states in enumerate(states_per_depth, start=1):
            # Real positions j whose chain of `depth` drafts starts from the base state at j - depth or from the
            # zero state before the first token.
            in_chain = (attention_mask[:, :-1].bool() & (position_ids[:, :-1] >= depth - 1))[has_target]
            depth_loss, depth_statistics = self._module_loss(
                module_states[:, :-1][has_target][in_chain],
                target_ids[in_chain],
                teacher.rows(in_chain) if teacher is not None else None,
                target_base_states[in_chain],
            )
            loss = loss + settings.draft_depth_decay ** (depth - 1) * depth_loss
            if depth == 1:
                statistics.update(depth_statistics)
            elif depth == 2 and "base_agreement" in depth_statistics:
                statistics["second_draft_agreement"] = depth_statistics["base_agreement"]
        if self.recycle_loss_weight != 1.0:
            loss = self.recycle_loss_weight * loss
        if base_trainable:
            lm_loss = F.cross_entropy(base_logits, target_ids)
            loss = loss + settings.lm_loss_weight * lm_loss
            statistics["lm_loss"] = lm_loss.detach()
        # Built in one go: a ModelOutput only lists (and DDP only sees) the fields given to its constructor.
        return RecycleTrainingOutput(loss=loss, **statistics)

    def _module_loss(
        self,
        module_states: torch.Tensor,
        target_ids: torch.Tensor,
        teacher: _Teacher | None,
        base_states: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The module's loss at one draft depth, over [tokens, dim] states, and its detached statistics."""
        settings = self.loss_settings
        recycle_logits = self.model.vocab_logits(module_states).float()
        recycle_loss = F.cross_entropy(recycle_logits, target_ids)
        statistics = {
            "recycle_loss": recycle_loss.detach(),
            "recycle_accuracy": (recycle_logits.argmax(-1) == target_ids).float().mean().detach(),
        }
        loss = recycle_loss
        if teacher is not None:
            statistics["base_agreement"] = (recycle_logits.argmax(-1) == teacher.top1).float().mean().detach()
            if teacher.log_probs is not None:
                distill_loss = _kl_to_teacher(recycle_logits, teacher.log_probs, settings.distill_temperature)
                loss = (1 - settings.distill_weight) * recycle_loss + settings.distill_weight * distill_loss
                statistics["distill_loss"] = distill_loss.detach()
        if settings.state_loss_weight > 0:
            # The module's state at j stands in for h_j when verify mode drafts the token after next.
            state_loss = F.smooth_l1_loss(module_states.float(), base_states.float())
            loss = loss + settings.state_loss_weight * state_loss
            statistics["state_loss"] = state_loss.detach()
        return loss, statistics


# Attention implementations that apply `chained_draft_mask` (flash attention takes only causal and padding masks).
_CUSTOM_MASK_ATTENTION = ("eager", "sdpa", "flex_attention")


def chained_draft_mask(block_length: int) -> Callable:
    """Attention of `copies` stacked copies of a block of `block_length` pairs (see [`chained_module_states`]).

    Copy c (0-based) at position j stands for the c-th draft after the first of a verify-mode chain that began at
    position j - c. When drafting, the module's cache then holds entries computed from true base states up to
    position j - c (copy 0) and the chain's own entries at j - c + 1 .. j, one from each copy 1 .. c.
    """

    def mask(batch_idx: torch.Tensor, head_idx: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor):
        q_copy, q_position = q_idx // block_length, q_idx % block_length
        kv_copy, kv_position = kv_idx // block_length, kv_idx % block_length
        lag = q_copy - kv_copy
        in_chain = (lag >= 0) & (kv_position == q_position - lag)
        true_context = (kv_copy == 0) & (kv_position < q_position - q_copy)
        return in_chain | true_context

    return mask


def chained_module_states(
    model: RecycleGPTForCausalLM,
    input_ids: torch.LongTensor,
    base_states: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.LongTensor,
    depth: int,
) -> list[torch.Tensor]:
    """The module's output states at draft depths 1..`depth`, for every position, exactly as verify mode chains them.

    Depth 1 reads the base's states (h_{j-1}, x_j). Depth d > 1 reads the module's own depth d-1 state at j-1 in
    place of h_{j-1}, and attends as a chain's d-th draft does: to entries from true states up to j - d + 1 and to
    the chain's own entries after that. The copies run as one sequence under [`chained_draft_mask`]; depth d
    recomputes depths < d (the module is small next to the LM head) and gradients flow through the whole chain.
    """
    attention = model.recycle_module.config._attn_implementation
    if depth > 1 and attention not in _CUSTOM_MASK_ATTENTION:
        raise ValueError(
            f"Training chained drafts (draft_depth > 1) needs an attention that takes a custom mask "
            f"({', '.join(_CUSTOM_MASK_ATTENTION)}); the module uses {attention!r}. Load the base with "
            f"attn_implementation='sdpa', or train with draft_depth=1."
        )
    previous_per_depth = [model.shift_states(base_states, attention_mask, None)]
    states = [model.recycle_step(input_ids, previous_per_depth[0], attention_mask, position_ids, None)]
    block_length = input_ids.shape[1]
    for copies in range(2, depth + 1):
        previous_per_depth.append(model.shift_states(states[-1], attention_mask, None))
        chained = model.recycle_step(
            input_ids.repeat(1, copies),
            torch.cat(previous_per_depth, dim=1),
            attention_mask.repeat(1, copies),
            position_ids.repeat(1, copies),
            None,
            mask_function=chained_draft_mask(block_length),
        )
        states.append(chained[:, -block_length:])
    return states


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean KL(teacher || student) over rows of [tokens, vocab] logits, scaled by temperature² (Hinton et al.)."""
    return _kl_to_teacher(student_logits, F.log_softmax(teacher_logits / temperature, dim=-1), temperature)


def _kl_to_teacher(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return kl * temperature**2


@dataclass
class _Teacher:
    """The base's next-token targets at the positions with a target: top-1 ids and, for distillation, log-probs."""

    top1: torch.Tensor
    log_probs: torch.Tensor | None

    def rows(self, selected: torch.Tensor) -> _Teacher:
        return _Teacher(self.top1[selected], self.log_probs[selected] if self.log_probs is not None else None)


class RecycleTrainer(Trainer):
    """`Trainer` for the recyclable module: give it the [`RecycleGPTForCausalLM`] itself.

    It trains through a [`RecycleTrainingModel`] wrapper, logs the module's loss and top-1 accuracy (and, with
    distillation, the KL term and top-1 agreement with the base; with LoRA, the base's loss), writes checkpoints as
    recycle adapters and resumes from them. `base_model_name_or_path` is recorded in the adapters (default: the
    base's `name_or_path`).
    """

    def __init__(
        self,
        model: RecycleGPTForCausalLM,
        args: RecycleTrainingArguments,
        base_model_name_or_path: str | None = None,
        **kwargs: Any,
    ):
        if not isinstance(model, RecycleGPTForCausalLM):
            raise ValueError(
                f"RecycleTrainer trains a RecycleGPTForCausalLM (see recycle_hf.graft_recycle_module), got "
                f"{type(model).__name__}."
            )
        if not isinstance(args, RecycleTrainingArguments):
            raise ValueError(
                "RecycleTrainer needs RecycleTrainingArguments (TrainingArguments plus the loss settings)."
            )
        if not any(parameter.requires_grad for parameter in model.parameters()):
            raise ValueError(
                "Nothing in the model is trainable; graft a fresh module or load the adapter with is_trainable=True."
            )
        self.recycle_model = model
        self.base_model_name_or_path = base_model_name_or_path
        super().__init__(model=self._training_model(model, args), args=args, **kwargs)
        self._metric_sums: dict[str, dict[str, float]] = {"train": {}, "eval": {}}
        self._metric_counts: dict[str, dict[str, int]] = {"train": {}, "eval": {}}

    def _training_model(self, model: RecycleGPTForCausalLM, args: RecycleTrainingArguments) -> RecycleTrainingModel:
        """The wrapper `Trainer` trains (subclasses choose another loss)."""
        return RecycleTrainingModel(model, **loss_settings(args))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        split = "train" if model.training else "eval"
        for name in TRAINING_METRICS:
            value = getattr(outputs, name)
            if value is not None:
                self._metric_sums[split][name] = self._metric_sums[split].get(name, 0.0) + float(value)
                self._metric_counts[split][name] = self._metric_counts[split].get(name, 0) + 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        # Evaluation reports losses and the logged statistics; the wrapper returns no logits to gather.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._pop_metrics("train", prefix=""))
        if "eval_loss" in logs:
            logs.update(self._pop_metrics("eval", prefix="eval_"))
        super().log(logs, start_time)

    def _pop_metrics(self, split: str, prefix: str) -> dict[str, float]:
        names = [name for name in TRAINING_METRICS if name in self._metric_counts[split]]
        if not names:
            return {}
        as_tensor = functools.partial(torch.tensor, dtype=torch.float64, device=self.args.device)
        sums = as_tensor([self._metric_sums[split][name] for name in names])
        counts = as_tensor([self._metric_counts[split][name] for name in names])
        # Every rank logs at the same steps, so the statistics can be summed over ranks here.
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._metric_sums[split], self._metric_counts[split] = {}, {}
        return {f"{prefix}{name}": round(float(s / c), 4) for name, s, c in zip(names, sums, counts)}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints and the final model are adapters: the module (and LoRA) only, never the base.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is not None:
            # A gathered state dict of the training wrapper: its keys start with the wrapper's "model." prefix.
            state_dict = {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}
        if self.args.should_save:
            save_recycle_adapter(self.recycle_model, output_dir, self.base_model_name_or_path, state_dict)
        if self.args.world_size > 1:
            # The save replaces the whole folder by renames; other ranks write their RNG states into it next, and
            # must not do so before it is in place (what they wrote into the old folder would be deleted with it).
            self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        logger.info("Loading the module's weights from %s", resume_from_checkpoint)
        load_adapter_weights(self.recycle_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading the best module (%s)", self.state.best_model_checkpoint)
        load_adapter_weights(self.recycle_model, self.state.best_model_checkpoint)


def train_recycle_module(
    model: RecycleGPTForCausalLM,
    train_dataset: Dataset,
    args: RecycleTrainingArguments,
    eval_dataset: Dataset | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> RecycleTrainer:
    """Train `model`'s module (and LoRA layers, if added) on `train_dataset`, then save the adapter to
    `args.output_dir`. `resume_from_checkpoint=True` continues from the last checkpoint in `args.output_dir`.

    Items of the datasets are dicts with `input_ids`, `attention_mask` and `labels` (-100 = no target), e.g. a
    `recycle_hf.data.TokenBlockDataset`, optionally with the base's `base_states` (a [`BaseStateDataset`]).
    Returns the trainer: `trainer.state.log_history` holds the logged losses and accuracies.
    """
    trainer = RecycleTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    return trainer


__all__ = [
    "BaseStateDataset",
    "base_fingerprint",
    "RecycleTrainer",
    "RecycleTrainingArguments",
    "RecycleTrainingModel",
    "RecycleTrainingOutput",
    "chained_module_states",
    "soft_target_kl",
    "train_recycle_module",
]
