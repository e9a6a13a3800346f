"""Training data with a rule the module can learn, and a worker that `torchrun` starts for the data-parallel test.

Run as `torchrun --nproc_per_node 2 tests/ddp_train_worker.py OUTPUT_DIR`: every rank grafts the same module onto
the same tiny base, trains a few steps with `RecycleTrainer` (gloo on CPU) and writes its module weights to
`OUTPUT_DIR/rank<N>.safetensors` and its view of the run to `OUTPUT_DIR/rank<N>.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recycle_hf.data import TokenBlockDataset

from conftest import VOCAB_SIZE, tiny_base_model


FIRST_TOKEN = 3  # tokens below are PAD, EOS and BOS


def permutation_chain_blocks(num_blocks: int, block_size: int, seed: int = 0) -> TokenBlockDataset:
    """Blocks in which every token determines the next one through a fixed random permutation (x -> perm[x]).

    The module reads the current token, so it can learn the rule; the random base cannot predict it.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.arange(FIRST_TOKEN, VOCAB_SIZE)
    successor = dict(zip(tokens.tolist(), tokens[torch.randperm(len(tokens), generator=generator)].tolist()))
    stream: list[int] = []
    for _ in range(num_blocks):
        token = int(torch.randint(FIRST_TOKEN, VOCAB_SIZE, (1,), generator=generator))
        for _ in range(block_size):
            stream.append(token)
            token = successor[token]
    return TokenBlockDataset(stream, block_size, pad_token_id=0)


def tiny_training_arguments(output_dir: str | Path, arguments_class: type | None = None, **overrides):
    """`RecycleTrainingArguments` (or `arguments_class`) for short CPU runs on tiny models: no saving, no logging
    integrations."""
    from recycle_hf.training import RecycleTrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        max_steps=10,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return (arguments_class or RecycleTrainingArguments)(**settings)


def main(output_dir: str) -> None:
    from recycle_hf import graft_recycle_module
    from recycle_hf.training import RecycleTrainer

    model = graft_recycle_module(tiny_base_model("llama", seed=0), init="random")
    args = tiny_training_arguments(
        Path(output_dir) / "run", max_steps=4, per_device_train_batch_size=4, logging_steps=2, ddp_backend="gloo"
    )
    trainer = RecycleTrainer(model=model, args=args, train_dataset=permutation_chain_blocks(32, 16))
    trainer.train()
    rank = trainer.args.process_index
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in model.recycle_module.state_dict().items()}
    save_file(state, str(Path(output_dir) / f"rank{rank}.safetensors"))
    logged = [log for log in trainer.state.log_history if "recycle_loss" in log]
    summary = {"world_size": trainer.args.world_size, "global_step": trainer.state.global_step, "logs": logged}
    (Path(output_dir) / f"rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1])
