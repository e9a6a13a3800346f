"""A worker that `torchrun` starts for the two-process joint-training tests (gloo, CPU).

Run as `torchrun --nproc_per_node 2 tests/pretrain_worker.py OUTPUT_DIR DATA_FILE...`. Every rank builds the same
tiny preset model and:

1. DDP: trains a few joint steps on the streamed files through `JointTrainer` (Trainer's data loader shards the
   stream), records the blocks it trained on in `OUTPUT_DIR/rank<N>.json` and saves the model to `OUTPUT_DIR/ddp`;
2. FSDP2: shards a fresh copy of the model with `fully_shard` as `examples/accelerate/fsdp.yaml` asks
   (accelerate's own wrap policy over the config's block classes), trains the same steps on the same per-rank
   batches with Trainer's optimizer, schedule and clipping, gathers the full state dict and saves it to
   `OUTPUT_DIR/fsdp`. accelerate itself enables FSDP only on accelerators (on the CPU its state stays MULTI_CPU),
   so this step drives the same torch FSDP2 calls directly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from recycle_hf.pretraining import (
    JointTrainer,
    JointTrainingArguments,
    build_pretraining_model,
    byte_level_tokenizer,
    save_full_model,
)
from recycle_hf.streaming_data import stream_token_blocks

from ddp_train_worker import tiny_training_arguments


# Shared with the single-process reference run of the tests.
STEPS = 4
BATCH_SIZE = 2
BLOCK_SIZE = 32


def joint_arguments(output_dir: str | Path, **overrides):
    """`JointTrainingArguments` for short CPU runs on the tiny preset, logging every step."""
    settings = {"max_steps": STEPS, "per_device_train_batch_size": BATCH_SIZE, "logging_steps": 1, **overrides}
    return tiny_training_arguments(output_dir, JointTrainingArguments, **settings)


class RecordingTrainer(JointTrainer):
    """Keeps the token blocks of every training batch this process sees."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_batches: list[list[list[int]]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen_batches.append(inputs["input_ids"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


FSDP_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp.yaml"


def fsdp_plugin_from_config(path: Path = FSDP_CONFIG):
    """accelerate's FSDP plugin with the wrapping and state-dict settings of an accelerate config file."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = yaml.safe_load(path.read_text())["fsdp_config"]
    return FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"],
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        transformer_cls_names_to_wrap=fsdp["fsdp_transformer_layer_cls_to_wrap"],
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )


def train_like_trainer(wrapper, batches, max_grad_norm: float = 1.0, learning_rate: float = 3e-3) -> None:
    """Trainer's defaults for `joint_arguments`: fused AdamW, linear decay from `learning_rate` without warmup,
    gradient clipping at `max_grad_norm`; one step per batch."""
    import torch

    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=learning_rate, weight_decay=0.0, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / len(batches)))
    wrapper.train()
    for batch in batches:
        wrapper(input_ids=torch.tensor(batch)).loss.backward()
        torch.nn.utils.clip_grad_norm_(wrapper.parameters(), max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()


def train_fsdp2(batches, output: Path) -> list[str]:
    """Step 2 of the module docstring; returns the names of the module classes that became FSDP units."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from recycle_hf.pretraining import JointTrainingModel

    model = build_pretraining_model(preset="tiny", seed=0)
    wrapper = JointTrainingModel(model)
    policy = fsdp2_prepare_auto_wrap_policy(fsdp_plugin_from_config(), wrapper)
    for module in get_module_children_bottom_up(wrapper)[:-1]:
        if policy(module):
            fully_shard(module, reshard_after_forward=True)
    fully_shard(wrapper)
    units = sorted({type(module).__name__ for module in wrapper.modules() if isinstance(module, FSDPModule)})
    train_like_trainer(wrapper, batches)
    state = get_model_state_dict(wrapper, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if int(os.environ["RANK"]) == 0:
        save_full_model(model, output, state)
    return units


def main(output_dir: str, data_files: list[str]) -> None:
    output = Path(output_dir)
    tokenizer = byte_level_tokenizer()
    blocks = stream_token_blocks(tokenizer, BLOCK_SIZE, data_files=data_files, documents_per_group=4)
    model = build_pretraining_model(preset="tiny", seed=0)
    args = joint_arguments(output / "run", ddp_backend="gloo")
    trainer = RecordingTrainer(model=model, args=args, train_dataset=blocks, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(output / "ddp"))
    fsdp_units = train_fsdp2(trainer.seen_batches, output / "fsdp")
    summary = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "batches": trainer.seen_batches,
        "logs": [log for log in trainer.state.log_history if "lm_loss" in log],
        "fsdp_units": fsdp_units,
    }
    (output / f"rank{trainer.args.process_index}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
