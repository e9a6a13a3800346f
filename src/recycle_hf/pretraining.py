# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Joint training of the whole RecycleGPT network, base and recyclable module, as in the paper.

Every parameter trains on `lm_loss_weight * lm_loss + recycle_loss_weight * module_loss` (the paper's objective
with the defaults 1 and the config's `recycle_loss_weight`): `lm_loss` is the base's next-token cross-entropy and
`module_loss` the module's loss of `recycle_hf.training` (cross-entropy, optionally mixed with distillation to the
base's own distribution, state regression and chained drafts). The module reads the base's states with autograd,
so its loss also reaches the base, as `RecycleGPTForCausalLM.forward(labels=...)` computes it.

Training is transformers' `Trainer` ([`JointTrainer`], a [`RecycleTrainer`] that writes full checkpoints), so
DDP, FSDP and DeepSpeed come from `accelerate launch` (configs in `examples/accelerate/`), and resuming is
`Trainer`'s own. Checkpoints and the final model are `save_pretrained` folders (safetensors, the remote-code files,
the tokenizer) that load with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Trainer,
)

from .checkpoint_code.configuration_recyclegpt import RecycleGPTConfig
from .checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from .presets import preset_config
from .training import RecycleTrainer, RecycleTrainingArguments, RecycleTrainingModel, loss_settings


logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Weight files a plain base may come with (transformers loads them); RecycleGPT checkpoints are safetensors only.
_BASE_WEIGHT_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class JointTrainingArguments(RecycleTrainingArguments):
    r"""
    `RecycleTrainingArguments` for joint training of base and module.

    Args:
        recycle_loss_weight (`float`, *optional*):
            Weight of the module's loss next to the base's LM loss (weighted by `lm_loss_weight`, default 1). None
            (default) takes the model config's `recycle_loss_weight`, the weight its `forward(labels=...)` uses.

    Defaults that differ from `TrainingArguments`: the token count is tracked (`include_num_input_tokens_seen`, for
    the logged `tokens_per_second`); DDP does not search for unused parameters (every parameter trains); and every
    process reads its own part of a streamed dataset instead of the main process dispatching batches
    (`accelerator_config.dispatch_batches=False`).
    """

    recycle_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the module's loss (default: the model config's)."}
    )
    include_num_input_tokens_seen: str | bool = field(default="all", metadata={"help": "Count the tokens trained on."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "Every parameter trains."})

    def __post_init__(self):
        super().__post_init__()
        if self.recycle_loss_weight is not None and self.recycle_loss_weight < 0:
            raise ValueError(f"recycle_loss_weight must be >= 0, got {self.recycle_loss_weight}.")
        if self.accelerator_config.dispatch_batches is None:
            self.accelerator_config.dispatch_batches = False


class JointTrainingModel(RecycleTrainingModel):
    """The training wrapper with the base trainable; it also switches activation checkpointing on the model."""

    main_input_name = "input_ids"

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        # Trainer calls this on the model it trains, here the wrapper: the base's blocks and the module's (the
        # base's block class) recompute their activations in the backward pass.
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)


class JointTrainer(RecycleTrainer):
    """`Trainer` for joint training: give it the [`RecycleGPTForCausalLM`]; every parameter of it trains.

    Logs `loss`, `lm_loss`, `recycle_loss`, `recycle_accuracy`, `base_agreement` (the module's top-1 agreement with
    the base, what verify mode's speed depends on), `learning_rate`, `grad_norm` and `tokens_per_second` (all
    processes, over the logging interval). Checkpoints are full `save_pretrained` folders plus `Trainer`'s optimizer,
    scheduler and RNG states; `train(resume_from_checkpoint=...)` continues from one.
    """

    def __init__(self, model: RecycleGPTForCausalLM, args: JointTrainingArguments, **kwargs: Any):
        if not isinstance(args, JointTrainingArguments):
            raise ValueError("JointTrainer needs JointTrainingArguments.")
        if isinstance(model, RecycleGPTForCausalLM) and any("lora_" in name for name, _ in model.named_parameters()):
            raise ValueError(
                "The base carries LoRA layers; merge them first (recycle_hf.adapter.merge_base_lora(model)): joint "
                "training trains the base's own weights."
            )
        if isinstance(model, RecycleGPTForCausalLM):
            model.requires_grad_(True)
        super().__init__(model=model, args=args, **kwargs)
        self._rate_mark: tuple[float, int] | None = None

    def _training_model(self, model: RecycleGPTForCausalLM, args: RecycleTrainingArguments) -> RecycleTrainingModel:
        weight = args.recycle_loss_weight
        return JointTrainingModel(
            model,
            recycle_loss_weight=model.config.recycle_loss_weight if weight is None else weight,
            **loss_settings(args),
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.args.include_num_input_tokens_seen != "no":
            now = time.time()
            since, seen = self._rate_mark or (start_time or now, self._initial_num_input_tokens_seen)
            if now > since:
                logs["tokens_per_second"] = round((self.state.num_input_tokens_seen - seen) / (now - since), 1)
            self._rate_mark = (now, self.state.num_input_tokens_seen)
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_full_model(self.recycle_model, output_dir or self.args.output_dir, state_dict, self.processing_class)
        if self.args.world_size > 1:
            # Other processes write their RNG states into the checkpoint folder next: only once it is in place.
            self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:
            # FSDP resumes from the sharded model state Trainer saved beside the full weights.
            Trainer._load_from_checkpoint(self, resume_from_checkpoint, model)
            return
        logger.info("Loading the model's weights from %s", resume_from_checkpoint)
        load_full_checkpoint(self.recycle_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading the best model (%s)", self.state.best_model_checkpoint)
        load_full_checkpoint(self.recycle_model, self.state.best_model_checkpoint)


def save_full_model(
    model: RecycleGPTForCausalLM,
    output_dir: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """`model.save_pretrained(output_dir)` (and the tokenizer's), optionally with a state dict gathered from shards.

    A gathered state dict (FSDP, DeepSpeed) is the training wrapper's: its "model." prefix is removed, and a tied
    weight (the LM head tied to the embeddings), which arrives as a separate copy, is kept once as `save_pretrained`
    keeps it for the model itself.
    """
    if state_dict is not None:
        state_dict = {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}
        kept = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        state_dict = {name: tensor for name, tensor in state_dict.items() if name in kept}
    model.save_pretrained(output_dir, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def require_weights(folder: str | os.PathLike, recycle_checkpoint: bool = True) -> None:
    """Raise a `ValueError` saying what to do when a local model folder has no config or no weight files."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: it is not a model folder. Give a save_pretrained folder.")
    names = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if recycle_checkpoint else _BASE_WEIGHT_NAMES
    if not any((folder / name).is_file() for name in names):
        raise ValueError(
            f"{folder} has a config.json but no weights ({' or '.join(names[:2])}): the checkpoint is incomplete. "
            "Save it again, or start from --preset."
        )


def load_full_checkpoint(model: RecycleGPTForCausalLM, folder: str | os.PathLike) -> None:
    """Load the safetensors weights of a `save_pretrained` folder (one file or shards) into `model`, in place."""
    folder = Path(folder)
    require_weights(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        state = load_file(folder / SAFE_WEIGHTS_NAME)
    else:
        shards = sorted(set(json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"].values()))
        state = {name: tensor for shard in shards for name, tensor in load_file(folder / shard).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained writes a tied weight (the LM head tied to the embeddings) once.
    parameters = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(parameters[name]) for name in state if name in parameters}
    untied_missing = [name for name in missing if name not in parameters or id(parameters[name]) not in loaded]
    if untied_missing or unexpected:
        raise ValueError(
            f"{folder} does not fit the model: missing {', '.join(untied_missing[:4]) or 'none'}, unexpected "
            f"{', '.join(unexpected[:4]) or 'none'}. Resume with the model the checkpoint was trained from."
        )


def model_config_for_pretraining(
    preset: str | None = None, model_name_or_path: str | None = None
) -> RecycleGPTConfig | PretrainedConfig:
    """The config of what `build_pretraining_model` will build (a RecycleGPT or a plain base config), read without
    loading weights, so that bad settings are refused first."""
    if (preset is None) == (model_name_or_path is None):
        raise ValueError("Give either a preset or a model to train from, not both.")
    if preset is not None:
        return preset_config(preset)
    if model_name_or_path == "default":
        from .defaults import dequantized_base_dir, load_default_base

        if not (dequantized_base_dir() / "config.json").is_file():
            load_default_base()  # builds the cached copy once
        model_name_or_path = str(dequantized_base_dir())
    if os.path.isdir(model_name_or_path):
        config = AutoConfig.from_pretrained(model_name_or_path)
        require_weights(model_name_or_path, recycle_checkpoint=isinstance(config, RecycleGPTConfig))
        return config
    return AutoConfig.from_pretrained(model_name_or_path)


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's positions cover (`max_position_embeddings` of the base), if it states one."""
    base = config.base_config if isinstance(config, RecycleGPTConfig) else config
    return getattr(base, "max_position_embeddings", None)


def check_block_size(config: PretrainedConfig, block_size: int) -> None:
    limit = max_positions(config)
    if block_size < 2:
        raise ValueError(f"--block-size must be at least 2 (an input and its next token), got {block_size}.")
    if limit is not None and block_size > limit:
        raise ValueError(
            f"--block-size {block_size} is larger than the model's maximum positions (max_position_embeddings = "
            f"{limit}); use --block-size {limit} or less."
        )


def build_pretraining_model(
    preset: str | None = None,
    model_name_or_path: str | None = None,
    adapter: str | None = None,
    num_layers: int | None = None,
    init: str = "identity",
    seed: int = 0,
) -> RecycleGPTForCausalLM:
    """The model to train jointly, in float32 (the optimizer's master weights; `bf16` autocasts), all trainable.

    - `preset`: a random initialisation of `recycle_hf.presets` (seeded by `seed`);
    - `model_name_or_path` a RecycleGPT checkpoint: it continues as it is;
    - `model_name_or_path` a plain causal LM ("default": the embedded SmolLM2): with `adapter`, a trained module
      (its LoRA, if any, merged into the base), else a fresh module of `num_layers` blocks started as `init`.
    """
    config = model_config_for_pretraining(preset, model_name_or_path)
    torch.manual_seed(seed)
    if preset is not None or isinstance(config, RecycleGPTConfig):
        if adapter is not None or num_layers is not None:
            raise ValueError("--adapter and --num-layers add a module to a plain base; this model already has one.")
        if preset is not None:
            model = RecycleGPTForCausalLM(config)
            model.generation_config = GenerationConfig(
                bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
            )
        else:
            model = RecycleGPTForCausalLM.from_pretrained(model_name_or_path, dtype=torch.float32)
    else:
        from .adapter import load_recycle_adapter, merge_base_lora
        from .graft import graft_recycle_module
        from .loading import load_base

        base, _ = load_base(model_name_or_path, dtype="float32")
        if adapter is not None:
            if num_layers is not None:
                raise ValueError("--num-layers shapes a fresh module; a trained --adapter brings its own.")
            model = merge_base_lora(load_recycle_adapter(base, adapter, is_trainable=True))
        else:
            model = graft_recycle_module(base, num_layers=num_layers or 1, init=init, freeze_base=False)
    model = model.float().requires_grad_(True).train()
    base_parameters = sum(p.numel() for p in model.base_lm.parameters())
    module_parameters = sum(p.numel() for p in model.recycle_module.parameters())
    logger.info(
        "Joint training: base %.1fM parameters, module %.1fM (+%.1f%%), all trainable",
        base_parameters / 1e6,
        module_parameters / 1e6,
        100 * module_parameters / base_parameters,
    )
    return model


# Token ids of the byte-level tokenizer: the presets' special ids, then the 256 byte values.
_BYTE_SPECIAL_TOKENS = {"<pad>": 0, "<s>": 1, "</s>": 2}


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer without training or download: one token per UTF-8 byte (ids 3..258) after `<pad>` = 0, `<s>` = 1
    and `</s>` = 2, the special ids of the presets. Any text round-trips; it fits every preset's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = dict(_BYTE_SPECIAL_TOKENS)
    for byte, character in sorted(bytes_to_unicode().items()):
        vocab[character] = len(_BYTE_SPECIAL_TOKENS) + byte
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def load_pretraining_tokenizer(
    config: PretrainedConfig, tokenizer_name_or_path: str | None = None, model_name_or_path: str | None = None
) -> PreTrainedTokenizerBase:
    """`tokenizer_name_or_path`, else the model's own tokenizer, else (presets) [`byte_level_tokenizer`]; refused
    when its ids do not fit the model's vocabulary."""
    if tokenizer_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    elif model_name_or_path == "default":
        from .defaults import load_default_base

        tokenizer = load_default_base()[1]
    elif model_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    else:
        tokenizer = byte_level_tokenizer()
    base = config.base_config if isinstance(config, RecycleGPTConfig) else config
    if len(tokenizer) > base.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {base.vocab_size}; use a "
            "tokenizer that fits (--tokenizer) or a model with a larger vocabulary."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token to separate documents; set one or pick another tokenizer.")
    return tokenizer


# Bytes per parameter of the model states under bf16 mixed precision with AdamW (activations come on top).
# torch autocast (DDP, FSDP): fp32 parameters (4), fp32 gradients (4), Adam moments (8); FSDP shards all three.
# DeepSpeed bf16: bf16 parameters (2) and gradients (2), fp32 master copy and moments (12); ZeRO-2 shards gradients
# and optimizer states, ZeRO-3 the parameters too.
TRAINING_CONFIGS = {
    "ddp": {"parameters": (4, False), "gradients": (4, False), "optimizer": (8, False)},
    "fsdp": {"parameters": (4, True), "gradients": (4, True), "optimizer": (8, True)},
    "deepspeed_zero2": {"parameters": (2, False), "gradients": (2, True), "optimizer": (12, True)},
    "deepspeed_zero3": {"parameters": (2, True), "gradients": (2, True), "optimizer": (12, True)},
}


def model_state_memory(num_parameters: int, num_gpus: int, training_config: str) -> dict[str, float]:
    """GiB per GPU of parameters, gradients and optimizer states (and their total) under one of `TRAINING_CONFIGS`.

    A computed estimate (the ZeRO paper's accounting), not a measurement: activations, the unsharded working copy of
    one FSDP unit / ZeRO-3 layer, communication buckets and the CUDA context come on top.
    """
    if training_config not in TRAINING_CONFIGS:
        raise ValueError(f"Unknown training config {training_config!r}; one of {', '.join(TRAINING_CONFIGS)}.")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}.")
    memory = {
        part: num_parameters * bytes_per_parameter / (num_gpus if sharded else 1) / 2**30
        for part, (bytes_per_parameter, sharded) in TRAINING_CONFIGS[training_config].items()
    }
    memory["total"] = sum(memory.values())
    return memory


def activation_memory(
    config: RecycleGPTConfig, micro_batch: int, block_size: int, checkpointing: bool
) -> dict[str, float]:
    """Approximate GiB of activations per GPU for one micro-batch of `micro_batch` x `block_size` tokens (bf16).

    Blocks (the base's and the module's): about 34 bytes x tokens x hidden size each (Korthikanti et al. 2022,
    without the attention-score term that fused SDPA kernels never store); with activation checkpointing each
    keeps only its bf16 input (2 bytes) and one block is recomputed at a time. Logits: the base's and the module's,
    bf16 from the head, a float32 copy and float32 log-probabilities (10 bytes x tokens x vocabulary each).
    """
    base = config.base_config
    tokens = micro_batch * block_size
    num_blocks = base.num_hidden_layers + config.recycle_num_layers
    full_block = 34 * tokens * base.hidden_size
    blocks = num_blocks * 2 * tokens * base.hidden_size + full_block if checkpointing else num_blocks * full_block
    logits = 2 * 10 * tokens * base.vocab_size
    memory = {"blocks": blocks / 2**30, "logits": logits / 2**30}
    memory["total"] = memory["blocks"] + memory["logits"]
    return memory


def count_parameters(config: RecycleGPTConfig) -> dict[str, int]:
    """Parameters of the base and of the module of a model with `config`, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = RecycleGPTForCausalLM(config)
    base = sum(p.numel() for p in model.base_lm.parameters())
    module = sum(p.numel() for p in model.recycle_module.parameters())
    return {"base": base, "module": module, "total": base + module}


__all__ = [
    "JointTrainer",
    "JointTrainingArguments",
    "JointTrainingModel",
    "TRAINING_CONFIGS",
    "activation_memory",
    "build_pretraining_model",
    "byte_level_tokenizer",
    "check_block_size",
    "count_parameters",
    "load_full_checkpoint",
    "load_pretraining_tokenizer",
    "model_config_for_pretraining",
    "model_state_memory",
    "require_weights",
    "save_full_model",
]
