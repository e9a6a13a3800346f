"""Joint training of base and module (`recycle-hf pretrain`): the streamed corpus, the joint loss and its logs,
resuming, two processes (DDP through Trainer, FSDP2 with the shipped config's wrapping), the accelerate configs,
the memory estimate and the refusal of bad input."""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader, IterableDataset
from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

from recycle_hf.cli import main as cli_main
from recycle_hf.presets import preset_config
from recycle_hf.pretraining import (
    JointTrainingModel,
    activation_memory,
    build_pretraining_model,
    byte_level_tokenizer,
    count_parameters,
    model_state_memory,
)
from recycle_hf.streaming_data import pack_token_blocks, stream_documents, stream_token_blocks

from pretrain_worker import BATCH_SIZE, BLOCK_SIZE, STEPS, RecordingTrainer, joint_arguments


TESTS_DIR = Path(__file__).parent
ACCELERATE_CONFIGS = TESTS_DIR.parent / "examples" / "accelerate"
WORDS = "the cat sat on a mat and saw one red bird fly over green hills near water".split()


def write_corpus(folder: Path, num_files: int, documents_per_file: int, seed: int = 0) -> list[Path]:
    """JSON Lines files of distinct documents (each names its file and number) made of a few common words."""
    generator = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_index in range(num_files):
        path = folder / f"part{file_index}.jsonl"
        lines = []
        for document in range(documents_per_file):
            words = " ".join(generator.choice(WORDS) for _ in range(12))
            lines.append(json.dumps({"text": f"file {file_index} document {document}: {words}.", "id": document}))
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


class ListOfBatches(IterableDataset):
    """Blocks in a fixed order (Trainer reads an iterable dataset in order)."""

    def __init__(self, blocks: list[list[int]]):
        self.blocks = blocks

    def __iter__(self):
        return iter({"input_ids": torch.tensor(block)} for block in self.blocks)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from more threads, and on a busy 2-core machine OpenMP's waiting threads made the same
    # 8 steps six times slower (14 s against 2.4 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


# --------------------------------------------------------------------------------------------------------------------
# The streamed corpus


def test_streamed_blocks_pack_documents_lazily_and_shard_across_processes(tmp_path):
    from accelerate.data_loader import prepare_data_loader

    tokenizer = byte_level_tokenizer()
    files = write_corpus(tmp_path / "corpus", num_files=4, documents_per_file=6)
    documents = [json.loads(line)["text"] for path in files for line in path.read_text().splitlines()]
    # The last file is not JSON: reading it would fail, so the blocks below show it was never read.
    files[-1].write_text('{"text": not json\n')

    blocks = stream_token_blocks(tokenizer, 16, data_files=[str(tmp_path / "corpus")], documents_per_group=3)
    assert blocks.n_shards == 4  # one per file: what lets each process read its own files
    first = [item["input_ids"] for _, item in zip(range(30), blocks)]
    assert all(block.dtype == torch.long and block.shape == (16,) for block in first)
    # Packing: the documents' bytes, each closed by EOS, cut into blocks; each group of 3 documents drops its tail.
    eos = tokenizer.eos_token_id
    group = [token for text in documents[:3] for token in [*(byte + 3 for byte in text.encode()), eos]]
    assert torch.cat(first[: len(group) // 16]).tolist() == group[: len(group) // 16 * 16]
    with pytest.raises(Exception, match="JSON"):
        list(blocks)

    # Trainer's data loader (accelerate, without dispatching) gives each of two processes its own blocks: with at
    # least as many files as processes each reads its own files; with one file each keeps its slice of every global
    # batch (blocks 0-1 of each 4 to the first, 2-3 to the second).
    def blocks_per_process(data_files):
        stream = pack_token_blocks(stream_documents(data_files), tokenizer, 16, documents_per_group=3)
        loaders = [
            prepare_data_loader(DataLoader(stream, batch_size=2), num_processes=2, process_index=rank,
                                dispatch_batches=False, put_on_device=False)
            for rank in (0, 1)
        ]
        return [[block.tolist() for batch in loader for block in batch["input_ids"]] for loader in loaders]

    def packed(data_files):
        blocks = stream_token_blocks(tokenizer, 16, data_files, documents_per_group=3)
        return [item["input_ids"].tolist() for item in blocks]

    by_files = blocks_per_process(files[:2])
    assert by_files == [packed(files[:1]), packed(files[1:2])]
    one_file = packed(files[:1])
    by_slices = blocks_per_process(files[:1])
    complete = len(one_file) // 4 * 4
    assert by_slices[0][: complete // 2] == [one_file[i] for i in range(complete) if i % 4 < 2]
    assert by_slices[1][: complete // 2] == [one_file[i] for i in range(complete) if i % 4 >= 2]


# --------------------------------------------------------------------------------------------------------------------
# Joint training


class _WeightsAtStepBegin(TrainerCallback):
    def __init__(self, model):
        self.model, self.states = model, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.states.append({name: tensor.clone() for name, tensor in self.model.state_dict().items()})


def test_joint_training_lowers_both_losses_trains_every_parameter_and_logs_the_forwards_losses(tmp_path):
    files = write_corpus(tmp_path / "corpus", num_files=2, documents_per_file=40)
    tokenizer = byte_level_tokenizer()
    blocks = stream_token_blocks(tokenizer, BLOCK_SIZE, data_files=files)
    model = build_pretraining_model(preset="tiny", seed=0)
    before = _parameters(model)
    weights = _WeightsAtStepBegin(model)
    arguments = joint_arguments(tmp_path / "out", max_steps=40, per_device_train_batch_size=4, learning_rate=1e-2)
    trainer = RecordingTrainer(model=model, args=arguments, train_dataset=blocks, callbacks=[weights])
    trainer.train()

    logs = [log for log in trainer.state.log_history if "lm_loss" in log]
    assert [log["step"] for log in logs] == list(range(1, 41))
    first, last = logs[0], logs[-1]
    assert first["lm_loss"] > 5.5 and first["recycle_loss"] > 5.5  # about ln(512): a random start
    assert last["lm_loss"] < first["lm_loss"] - 2.5 and last["recycle_loss"] < first["recycle_loss"] - 2.5
    for log in logs:
        assert {"base_agreement", "recycle_accuracy", "learning_rate", "tokens_per_second", "grad_norm"} <= set(log)
        assert log["tokens_per_second"] > 0
    assert first["learning_rate"] > last["learning_rate"]
    after = dict(model.named_parameters())
    unchanged = [name for name, tensor in before.items() if torch.equal(after[name], tensor)]
    assert unchanged == [] and any(name.startswith("recycle_module.") for name in before)

    # The logged losses are the model's own forward(labels=...) on that step's batch with that step's weights.
    reference = build_pretraining_model(preset="tiny", seed=1)
    for step in (1, 20, 40):
        reference.load_state_dict(weights.states[step - 1])
        batch = torch.tensor(trainer.seen_batches[step - 1])
        with torch.no_grad():
            output = reference.train()(input_ids=batch, labels=batch)
        log = logs[step - 1]
        assert log["lm_loss"] == pytest.approx(output.lm_loss.item(), abs=1e-4)
        assert log["recycle_loss"] == pytest.approx(output.recycle_loss.item(), abs=1e-4)
        assert log["loss"] == pytest.approx(output.loss.item(), abs=1e-4)  # recycle_loss_weight 1: their sum


def test_recycle_loss_weight_and_gradient_checkpointing(tmp_path):
    model = build_pretraining_model(preset="tiny", seed=0)
    batch = torch.randint(3, 259, (2, BLOCK_SIZE), generator=torch.Generator().manual_seed(0))
    weighted = JointTrainingModel(model, recycle_loss_weight=0.25).train()(input_ids=batch)
    torch.testing.assert_close(weighted.loss, weighted.lm_loss + 0.25 * weighted.recycle_loss)

    wrapper = JointTrainingModel(model).train()
    wrapper(input_ids=batch).loss.backward()
    plain = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    wrapper.activation_checkpointing_enable()
    blocks = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert len(blocks) == 3 and all(block.gradient_checkpointing for block in blocks)  # base's 2, module's 1
    wrapper(input_ids=batch).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], rtol=1e-5, atol=1e-7)


def test_pretrain_command_saves_full_checkpoints_and_resumes_exactly(tmp_path, capsys):
    write_corpus(tmp_path / "corpus", num_files=2, documents_per_file=20)
    command = [
        "pretrain", "--preset", "tiny", "--data", str(tmp_path / "corpus" / "*.jsonl"), "--block-size", "32",
        "--batch-size", "4", "--max-steps", "8", "--save-steps", "4", "--logging-steps", "1", "--learning-rate",
        "3e-3", "--cpu",
    ]
    assert cli_main([*command, "--output", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "Trained to step 8" in printed and "tokens/s" in printed and "lm_loss" in printed

    checkpoint = tmp_path / "a" / "checkpoint-4"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_recyclegpt.py", "configuration_recyclegpt.py",
            "tokenizer.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    # Another seed: another random init, which resuming must replace by the checkpoint's weights.
    assert cli_main([*command, "--output", str(tmp_path / "b"), "--seed", "1", "--resume", str(checkpoint)]) == 0
    assert "Trained to step 8" in capsys.readouterr().out

    uninterrupted = load_file(tmp_path / "a" / "model.safetensors")
    resumed = load_file(tmp_path / "b" / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)
    logs = {}
    for run in ("a", "b"):
        history = json.loads((tmp_path / run / "checkpoint-8" / "trainer_state.json").read_text())["log_history"]
        logs[run] = [(log["step"], log["lm_loss"], log["recycle_loss"]) for log in history if "lm_loss" in log]
    assert [entry[0] for entry in logs["b"]] == list(range(1, 9))
    for resumed_log, uninterrupted_log in zip(logs["b"][4:], logs["a"][4:]):
        assert resumed_log == pytest.approx(uninterrupted_log, abs=1e-4)

    # The output is a full checkpoint: it loads without recycle-hf's classes being passed.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a", trust_remote_code=True)
    assert sum(parameter.numel() for parameter in model.recycle_module.parameters()) > 0


def test_continued_training_from_a_plain_base_and_from_a_recyclegpt_checkpoint(tmp_path, capsys):
    base_dir, first, second = tmp_path / "base", tmp_path / "first", tmp_path / "second"
    torch.manual_seed(0)
    base_config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    AutoModelForCausalLM.from_config(base_config).save_pretrained(base_dir)
    byte_level_tokenizer().save_pretrained(base_dir)
    write_corpus(tmp_path / "corpus", num_files=1, documents_per_file=10)
    common = [
        "--data", str(tmp_path / "corpus"), "--block-size", "32", "--batch-size", "2", "--max-steps", "2", "--cpu",
    ]

    # A plain base: a fresh 2-block module is grafted and the base trains with it.
    assert cli_main(["pretrain", "--model", str(base_dir), "--num-layers", "2", *common, "--output", str(first)]) == 0
    trained = load_file(first / "model.safetensors")
    for name, tensor in load_file(base_dir / "model.safetensors").items():
        assert not torch.equal(trained[f"base_lm.{name}"], tensor), name
    assert "recycle_module.mtp_block.1.mlp.up_proj.weight" in trained

    # A RecycleGPT checkpoint continues as it is, all of it trainable.
    model = build_pretraining_model(model_name_or_path=str(first))
    assert all(parameter.requires_grad for parameter in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert cli_main(["pretrain", "--model", str(first), *common, "--output", str(second)]) == 0
    assert "Trained to step 2" in capsys.readouterr().out
    assert cli_main(["pretrain", "--model", str(first), "--num-layers", "2", *common, "--output",
                     str(tmp_path / "x")]) == 2
    assert "already has one" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_ddp_and_fsdp2_give_the_one_process_weights_on_disjoint_blocks(tmp_path):
    files = write_corpus(tmp_path / "corpus", num_files=4, documents_per_file=8)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(TESTS_DIR / "pretrain_worker.py"), str(tmp_path / "runs"),
        *map(str, files),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=TESTS_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / "runs" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == STEPS and len(r["batches"]) == STEPS for r in ranks)
    losses = [[{name: log[name] for name in ("loss", "lm_loss", "recycle_loss")} for log in r["logs"]] for r in ranks]
    assert losses[0] == losses[1]  # averaged over both processes

    # Each process read its own two of the four files: its blocks are exactly the packed stream of those files.
    tokenizer = byte_level_tokenizer()
    for rank, own_files in ((0, files[:2]), (1, files[2:])):
        stream = stream_token_blocks(tokenizer, BLOCK_SIZE, data_files=own_files, documents_per_group=4)
        expected_blocks = [item["input_ids"].tolist() for _, item in zip(range(STEPS * BATCH_SIZE), stream)]
        assert [block for batch in ranks[rank]["batches"] for block in batch] == expected_blocks

    # One process, the same global batches (rank 0's then rank 1's blocks of each step): the same weights.
    global_blocks = [block for step in range(STEPS) for r in ranks for block in r["batches"][step]]
    model = build_pretraining_model(preset="tiny", seed=0)
    arguments = joint_arguments(tmp_path / "single", per_device_train_batch_size=2 * BATCH_SIZE)
    RecordingTrainer(model=model, args=arguments, train_dataset=ListOfBatches(global_blocks)).train()
    expected = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    # Two processes average their gradients, one process takes the mean over both halves: the same sum, rounded
    # in another order, and Adam's division by sqrt(v) magnifies that for near-zero gradients (one weight in 8192
    # differed by 2.3e-6 on one CPU). The tolerance stays far below what training moved the weights (checked), so
    # a process that trained on other blocks still fails it.
    initial = build_pretraining_model(preset="tiny", seed=0).state_dict()
    assert max((expected[name] - initial[name]).abs().max().item() for name in expected) > 1e-3
    for run in ("ddp", "fsdp"):
        weights = load_file(tmp_path / "runs" / run / "model.safetensors")
        assert "base_lm.lm_head.weight" not in weights  # tied to the embeddings: saved once
        for name, tensor in weights.items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5, msg=f"{run}: {name}")
    assert ranks[0]["fsdp_units"] == ["FSDPJointTrainingModel", "FSDPLlamaDecoderLayer", "FSDPRecycleModule"]


# --------------------------------------------------------------------------------------------------------------------
# Shipped configs and the memory estimate


def test_accelerate_configs_parse_and_wrap_the_presets_block_classes():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {path.stem: load_config_from_file(str(path)) for path in sorted(ACCELERATE_CONFIGS.glob("*.yaml"))}
    assert set(configs) == {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    assert {name: config.distributed_type.value for name, config in configs.items()} == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED",
    }
    assert {name: configs[name].deepspeed_config["zero_stage"] for name in configs if "deepspeed" in name} == {
        "deepspeed_zero2": 2, "deepspeed_zero3": 3,
    }
    assert configs["deepspeed_zero3"].deepspeed_config["zero3_save_16bit_model"] is True
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert all(config.mixed_precision == "bf16" for config in configs.values())
    # The wrapped classes are the base's block class (which the module's blocks share) and the module itself.
    for preset in ("tiny", "recyclegpt-1.3b"):
        with torch.device("meta"):
            model = build_meta_model(preset)
        classes = {type(module).__name__ for module in model.modules()}
        assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= classes
        assert type(model.recycle_module.mtp_block[0]).__name__ == "LlamaDecoderLayer"
    assert yaml.safe_load((ACCELERATE_CONFIGS / "fsdp.yaml").read_text())["num_processes"] == 8


def build_meta_model(preset: str):
    from recycle_hf.checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM

    return RecycleGPTForCausalLM(preset_config(preset))


def test_memory_estimate_of_the_paper_preset(capsys):
    counts = count_parameters(preset_config("recyclegpt-1.3b"))
    assert 1.3e9 < counts["base"] < 1.4e9 and 0.14 < counts["module"] / counts["base"] < 0.17
    total = counts["total"]
    gib = 2**30
    assert model_state_memory(total, 8, "ddp")["total"] == pytest.approx(16 * total / gib)
    assert model_state_memory(total, 8, "fsdp")["total"] == pytest.approx(16 * total / 8 / gib)
    assert model_state_memory(total, 8, "deepspeed_zero2")["total"] == pytest.approx((2 + 14 / 8) * total / gib)
    assert model_state_memory(total, 8, "deepspeed_zero3")["parameters"] == pytest.approx(2 * total / 8 / gib)
    config = preset_config("recyclegpt-1.3b")
    without, with_checkpointing = (activation_memory(config, 8, 2048, flag) for flag in (False, True))
    assert without["logits"] == with_checkpointing["logits"] == pytest.approx(20 * 8 * 2048 * 32000 / gib)
    assert with_checkpointing["blocks"] < without["blocks"] / 5
    assert cli_main(["pretrain", "--preset", "recyclegpt-1.3b", "--estimate-memory", "8"]) == 0
    table = capsys.readouterr().out
    assert "| ddp |" in table and "| deepspeed_zero3 |" in table


# --------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_refused_with_a_clear_error_before_training(tmp_path, monkeypatch, capsys):
    from recycle_hf.pretraining import JointTrainer

    monkeypatch.setattr(JointTrainer, "train", lambda *args, **kwargs: pytest.fail("training started"))
    write_corpus(tmp_path / "corpus", num_files=1, documents_per_file=4)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.txt").write_text("\n\n")
    (tmp_path / "short.jsonl").write_text(json.dumps({"text": "Too short for a block."}) + "\n")
    (tmp_path / "no-weights").mkdir()
    build_pretraining_model(preset="tiny").config.save_pretrained(tmp_path / "no-weights")
    good = ["--data", str(tmp_path / "corpus"), "--output", str(tmp_path / "out"), "--max-steps", "2"]

    cases = [
        ("Unknown preset 'tiny-2'. Available presets: recyclegpt-1.3b, tiny", ["--preset", "tiny-2", *good]),
        ("No data files found for", ["--preset", "tiny", *good, "--data", str(tmp_path / "nothing")]),
        ("unsupported data file type", ["--preset", "tiny", *good, "--data", str(TESTS_DIR / "conftest.py")]),
        (
            "larger than the model's maximum positions .* use --block-size 512 or less",
            ["--preset", "tiny", *good, "--block-size", "513"],
        ),
        (r"empty\.jsonl\) is empty; give files", ["--preset", "tiny", *good, "--data", str(tmp_path / "empty.jsonl")]),
        (r"blank\.txt\) is empty; give files", ["--preset", "tiny", *good, "--data", str(tmp_path / "blank.txt")]),
        (
            r"short\.jsonl\) gives no complete block of 256 tokens: .* Add text or lower --block-size",
            ["--preset", "tiny", *good, "--data", str(tmp_path / "short.jsonl")],
        ),
        (
            "has no 'content' column .* --text-column",
            ["--preset", "tiny", *good, "--text-column", "content"],
        ),
        ("no-weights has a config.json but no weights", ["--model", str(tmp_path / "no-weights"), *good]),
        (
            "no-weights has a config.json but no weights",
            ["--preset", "tiny", *good, "--resume", str(tmp_path / "no-weights")],
        ),
    ]
    for message, arguments in cases:
        assert cli_main(["pretrain", *arguments]) == 2  # README's status for a user error, as every command
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recycle-hf pretrain: ")]
        assert len(lines) == 1 and re.search(message, lines[0]), (message, lines)
    assert not (tmp_path / "out").exists()
