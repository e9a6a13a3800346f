"""Fine-tuning the recyclable module: the training loss, Trainer runs (single, resumed, LoRA, two
processes) and the `recycle-hf train` command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from recycle_hf import graft_recycle_module, load_recycle_adapter
from recycle_hf.adapter import add_base_lora
from recycle_hf.checkpoint_code.modeling_recyclegpt import positions_from_attention_mask
from recycle_hf.cli import main as cli_main
from recycle_hf.data import load_token_blocks
from recycle_hf.draft_vocabulary import frequent_token_ids
from recycle_hf.training import (
    BaseStateDataset,
    RecycleTrainer,
    RecycleTrainingModel,
    chained_module_states,
    soft_target_kl,
    train_recycle_module,
)

from conftest import PAD, left_padded_batch, save_tiny_base_with_tokenizer, tiny_base_config, tiny_base_model
from ddp_train_worker import permutation_chain_blocks, tiny_training_arguments


TESTS_DIR = Path(__file__).parent


def _module_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.recycle_module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------------
# The training loss


def _right_padded_batch() -> dict[str, torch.Tensor]:
    input_ids, _ = left_padded_batch([9, 9, 9], seed=4)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("family", ["llama", "opt-350m-style"])
def test_training_loss_is_the_models_recycle_loss(family):
    model = graft_recycle_module(tiny_base_model(family), init="identity")
    batch = _right_padded_batch()
    training_outputs = RecycleTrainingModel(model).eval()(**batch)
    with torch.no_grad():
        reference = model.eval()(**batch)
    torch.testing.assert_close(training_outputs.recycle_loss, reference.recycle_loss)
    torch.testing.assert_close(training_outputs.loss, reference.recycle_loss)

    targets = batch["labels"][:, 1:]
    predictions = reference.recycle_logits[:, :-1].argmax(-1)
    expected_accuracy = (predictions == targets)[targets != -100].float().mean()
    torch.testing.assert_close(training_outputs.recycle_accuracy, expected_accuracy)


def test_distillation_mixes_cross_entropy_and_kl_to_the_base():
    model = graft_recycle_module(tiny_base_model("llama"), init="random")
    batch = _right_padded_batch()
    outputs = RecycleTrainingModel(model, distill_weight=0.25, distill_temperature=2.0).eval()(**batch)
    with torch.no_grad():
        reference = model.eval()(**batch)
    has_target = batch["labels"][:, 1:] != -100
    student = reference.recycle_logits[:, :-1][has_target]
    teacher = reference.logits[:, :-1][has_target]
    expected_kl = (
        F.softmax(teacher / 2, -1) * (F.log_softmax(teacher / 2, -1) - F.log_softmax(student / 2, -1))
    ).sum(-1).mean() * 4
    torch.testing.assert_close(outputs.distill_loss, expected_kl)
    torch.testing.assert_close(outputs.loss, 0.75 * reference.recycle_loss + 0.25 * expected_kl)
    expected_agreement = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
    torch.testing.assert_close(outputs.base_agreement, expected_agreement)
    assert soft_target_kl(teacher, teacher).abs() < 1e-6


def test_head_only_training_runs_the_base_once_without_autograd():
    model = graft_recycle_module(tiny_base_model("llama"))
    base_calls = []
    model.base_backbone.register_forward_hook(lambda *_: base_calls.append(torch.is_grad_enabled()))
    wrapper = RecycleTrainingModel(model, distill_weight=0.5).train()

    outputs = wrapper(**_right_padded_batch())
    outputs.loss.backward()

    assert base_calls == [False]
    assert not model.base_lm.training  # frozen base: no dropout, the states decoding will see
    assert all(parameter.grad is not None for parameter in model.recycle_module.parameters())
    assert all(parameter.grad is None for parameter in model.base_lm.parameters())


@pytest.mark.parametrize("family", ["llama", "opt-350m-style"])
def test_precomputed_base_states_give_exactly_the_live_losses_and_gradients(family):
    model = graft_recycle_module(tiny_base_model(family), init="random")
    batch = _right_padded_batch()
    blocks = [{name: tensor[row] for name, tensor in batch.items()} for row in range(3)]
    dataset = BaseStateDataset.compute(model, blocks, batch_size=2)
    assert len(dataset) == 3 and set(dataset[1]) == {"input_ids", "attention_mask", "labels", "base_states"}
    # OPT-350m-style bases project their states out to the LM head's narrower width; that is what is stored.
    assert dataset.base_states.shape[-1] == model.get_output_embeddings().weight.shape[1]

    wrapper = RecycleTrainingModel(model, distill_weight=0.5, state_loss_weight=0.3).train()
    base_calls = []
    model.base_backbone.register_forward_hook(lambda *_: base_calls.append(1))
    torch.manual_seed(0)  # the same dropout masks in the module (OPT blocks have dropout)
    live = wrapper(**batch)
    live.loss.backward()
    live_grads = [parameter.grad.clone() for parameter in model.recycle_module.parameters()]
    model.zero_grad()
    torch.manual_seed(0)
    precomputed = wrapper(**batch, base_states=torch.stack([dataset[row]["base_states"] for row in range(3)]))
    precomputed.loss.backward()

    assert len(base_calls) == 1  # the precomputed step ran no base forward
    for name in ("loss", "recycle_loss", "distill_loss", "state_loss", "base_agreement"):
        torch.testing.assert_close(getattr(precomputed, name), getattr(live, name), rtol=1e-5, atol=1e-6)
    for parameter, live_grad in zip(model.recycle_module.parameters(), live_grads):
        torch.testing.assert_close(parameter.grad, live_grad, rtol=1e-4, atol=1e-6)


def test_state_loss_pulls_module_states_towards_the_base_states():
    model = graft_recycle_module(tiny_base_model("llama"), init="random").eval()
    batch = _right_padded_batch()
    outputs = RecycleTrainingModel(model, state_loss_weight=2.0).eval()(**batch)
    with torch.no_grad():
        position_ids = torch.arange(9).expand(3, 9)
        base_states = model.base_step(batch["input_ids"], batch["attention_mask"], position_ids, None)
        previous = model.shift_states(base_states, batch["attention_mask"], None)
        module_states = model.recycle_step(batch["input_ids"], previous, batch["attention_mask"], position_ids, None)
    has_target = batch["labels"][:, 1:] != -100
    differences = (module_states[:, :-1] - base_states[:, :-1])[has_target]
    expected = torch.where(differences.abs() < 1, 0.5 * differences**2, differences.abs() - 0.5).mean()
    torch.testing.assert_close(outputs.state_loss, expected)
    torch.testing.assert_close(outputs.loss, outputs.recycle_loss + 2.0 * expected)
    # Without the weight the term is neither computed nor logged.
    assert RecycleTrainingModel(model).eval()(**batch).state_loss is None



def _draft_chain_as_verify_mode_runs_it(model, batch, position_ids, end: int, depth: int) -> torch.Tensor:
    """The module's state for the `depth`-th draft of a chain ending at position `end`, drafted incrementally.

    Verify mode first catches the module up on every column the base has finished (true base states, ending with
    the newest token at `end - depth + 1`), then drafts one token at a time from its own previous state.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    base_states = model.base_step(input_ids, attention_mask, position_ids, None)
    previous = model.shift_states(base_states, attention_mask, None)
    cache = DynamicCache(config=model.recycle_module.config)
    newest = end - depth + 1
    states = model.recycle_step(
        input_ids[:, : newest + 1],
        previous[:, : newest + 1],
        attention_mask[:, : newest + 1],
        position_ids[:, : newest + 1],
        cache,
    )[:, -1:]
    for column in range(newest + 1, end + 1):
        states = model.recycle_step(
            input_ids[:, column : column + 1],
            states,
            attention_mask[:, : column + 1],
            position_ids[:, column : column + 1],
            cache,
        )
    return states[:, 0]


@pytest.mark.parametrize("family", ["llama", "opt-350m-style"])
def test_chained_training_states_are_exactly_verify_modes_chained_drafts(family):
    model = graft_recycle_module(tiny_base_model(family), num_layers=2, init="random").eval()
    input_ids, attention_mask = left_padded_batch([10, 7, 9], seed=5)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    position_ids = positions_from_attention_mask(attention_mask, input_ids.shape[1])
    with torch.no_grad():
        base_states = model.base_step(input_ids, attention_mask, position_ids, None)
        states_per_depth = chained_module_states(model, input_ids, base_states, attention_mask, position_ids, 3)

        compared = 0
        for depth, states in enumerate(states_per_depth, start=1):
            for end in range(input_ids.shape[1]):
                # Rows whose chain of `depth` drafts ending here starts at or after the zero state before the prompt.
                rows = attention_mask[:, end].bool() & (position_ids[:, end] >= depth - 1)
                if not rows.any():
                    continue
                expected = _draft_chain_as_verify_mode_runs_it(model, batch, position_ids, end, depth)
                torch.testing.assert_close(states[rows, end], expected[rows], rtol=1e-4, atol=1e-5)
                compared += int(rows.sum())
    assert compared == 26 + 23 + 20
    # A deeper chain reads different inputs, so its states differ from the single-draft ones.
    assert not torch.allclose(states_per_depth[1][:, 5:], states_per_depth[0][:, 5:], atol=1e-3)


def test_chained_training_loss_adds_decayed_losses_of_each_depth():
    model = graft_recycle_module(tiny_base_model("llama"), init="random").eval()
    batch = _right_padded_batch()
    wrapper = RecycleTrainingModel(
        model, distill_weight=0.5, state_loss_weight=0.3, draft_depth=3, draft_depth_decay=0.5
    )
    outputs = wrapper.eval()(**batch)
    single = RecycleTrainingModel(model, distill_weight=0.5, state_loss_weight=0.3).eval()(**batch)

    attention_mask = batch["attention_mask"]
    position_ids = positions_from_attention_mask(attention_mask, 9)
    with torch.no_grad():
        base_states = model.base_step(batch["input_ids"], attention_mask, position_ids, None)
        states_per_depth = chained_module_states(
            model, batch["input_ids"], base_states, attention_mask, position_ids, 3
        )
    has_target = batch["labels"][:, 1:] != -100
    expected_loss = 0.0
    for depth, states in enumerate(states_per_depth, start=1):
        kept = has_target & attention_mask[:, :-1].bool() & (position_ids[:, :-1] >= depth - 1)
        student = model.vocab_logits(states[:, :-1][kept])
        teacher = model.vocab_logits(base_states[:, :-1][kept])
        cross_entropy = F.cross_entropy(student, batch["labels"][:, 1:][kept])
        state_loss = F.smooth_l1_loss(states[:, :-1][kept], base_states[:, :-1][kept])
        depth_loss = 0.5 * cross_entropy + 0.5 * soft_target_kl(student, teacher) + 0.3 * state_loss
        expected_loss = expected_loss + 0.5 ** (depth - 1) * depth_loss
        if depth == 2:
            expected_second = (student.argmax(-1) == teacher.argmax(-1)).float().mean()

    torch.testing.assert_close(outputs.loss, expected_loss)
    torch.testing.assert_close(outputs.second_draft_agreement, expected_second)
    # The logged statistics stay those of the first draft, so runs with and without chains compare.
    for name in ("recycle_loss", "recycle_accuracy", "distill_loss", "base_agreement", "state_loss"):
        torch.testing.assert_close(getattr(outputs, name), getattr(single, name))
    assert single.second_draft_agreement is None
    with pytest.raises(ValueError, match="draft_depth must be >= 1"):
        tiny_training_arguments("unused", draft_depth=0)
    # Flash attention would silently drop the chained mask: refused, with what to do.
    model.recycle_module.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        wrapper(**batch)

def test_cached_base_states_are_read_back_only_for_the_same_blocks_and_base(tmp_path):
    model = graft_recycle_module(tiny_base_model("llama"), init="random")
    batch = _right_padded_batch()
    blocks = [{name: tensor[row] for name, tensor in batch.items()} for row in range(3)]
    cache_file = tmp_path / "states" / "train.safetensors"
    base_calls = []
    model.base_backbone.register_forward_hook(lambda *_: base_calls.append(1))

    computed = BaseStateDataset.compute(model, blocks, batch_size=2, cache_file=cache_file)
    assert len(base_calls) == 2 and cache_file.is_file()
    assert [path.name for path in cache_file.parent.iterdir()] == ["train.safetensors"]  # no partial file left
    read_back = BaseStateDataset.compute(model, blocks, batch_size=2, cache_file=cache_file)
    assert len(base_calls) == 2  # read from the file, no base forward
    assert torch.equal(read_back.base_states, computed.base_states)
    assert torch.equal(computed.base_states, BaseStateDataset.compute(model, blocks, batch_size=2).base_states)
    base_calls.clear()

    # Other token blocks: computed again (and the file now holds the new ones).
    other_blocks = [{**block, "input_ids": block["input_ids"].flip(0)} for block in blocks]
    BaseStateDataset.compute(model, other_blocks, batch_size=3, cache_file=cache_file)
    assert len(base_calls) == 1
    # Another base (one weight changed): computed again, with that base's states.
    with torch.no_grad():
        model.base_lm.get_input_embeddings().weight[5] += 1.0
    changed = BaseStateDataset.compute(model, other_blocks, batch_size=3, cache_file=cache_file)
    assert len(base_calls) == 2
    torch.testing.assert_close(
        changed.base_states, BaseStateDataset.compute(model, other_blocks, batch_size=3).base_states
    )


def test_precomputed_base_states_are_refused_for_a_trainable_base():
    model = graft_recycle_module(tiny_base_model("llama"))
    add_base_lora(model, LoraConfig(r=2, target_modules=["q_proj"]))
    batch = _right_padded_batch()
    with pytest.raises(ValueError, match="frozen base"):
        BaseStateDataset.compute(model, [{name: tensor[0] for name, tensor in batch.items()}])
    with pytest.raises(ValueError, match="frozen base"):
        RecycleTrainingModel(model)(**batch, base_states=torch.zeros(3, 9, 32))
    with pytest.raises(ValueError, match="state_loss_weight must be >= 0"):
        tiny_training_arguments("unused", state_loss_weight=-1.0)


# --------------------------------------------------------------------------------------------------------------------
# Trainer runs


def _base_with_confident_head(seed: int = 0):
    # With the default initializer_range (0.02) the tied random embeddings give logits too small for any confident
    # prediction, which caps how far any loss can fall; 0.2 gives a head with the scale of a real model's.
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_base_config("llama", initializer_range=0.2)).eval()


def test_training_clearly_lowers_the_recycle_loss_and_leaves_the_base_alone(tmp_path):
    base = _base_with_confident_head()
    base_before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = graft_recycle_module(base)
    dataset = permutation_chain_blocks(num_blocks=64, block_size=16)

    arguments = tiny_training_arguments(tmp_path / "out", max_steps=100, learning_rate=1e-2)
    trainer = train_recycle_module(model, dataset, arguments)

    logs = [log for log in trainer.state.log_history if "recycle_loss" in log]
    assert [log["step"] for log in logs] == list(range(10, 101, 10))
    first, last = logs[0], logs[-1]
    assert first["recycle_loss"] > 3.5 and first["recycle_accuracy"] < 0.3
    assert last["recycle_loss"] < first["recycle_loss"] - 3.0
    assert last["recycle_accuracy"] > 0.9
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, base_before[name])

    # The output folder is the adapter: it reloads the trained module exactly onto a fresh copy of the base.
    reloaded = load_recycle_adapter(_base_with_confident_head(), tmp_path / "out")
    batch = _right_padded_batch()
    with torch.no_grad():
        expected = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        actual = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(actual.recycle_logits, expected.recycle_logits)
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.is_file()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_resumed_training_ends_where_uninterrupted_training_ends(tmp_path):
    dataset = permutation_chain_blocks(num_blocks=32, block_size=16)
    arguments = dict(max_steps=8, per_device_train_batch_size=4, logging_steps=4, save_strategy="steps", save_steps=4)

    uninterrupted = graft_recycle_module(tiny_base_model("llama"), init="random")
    RecycleTrainer(uninterrupted, tiny_training_arguments(tmp_path / "a", **arguments), train_dataset=dataset).train()
    checkpoint = tmp_path / "a" / "checkpoint-4"
    assert sorted(path.name for path in checkpoint.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    base = tiny_base_model("llama")
    torch.manual_seed(5)  # another random module: resuming must load the checkpoint's
    resumed = graft_recycle_module(base, init="random")
    trainer = RecycleTrainer(resumed, tiny_training_arguments(tmp_path / "b", **arguments), train_dataset=dataset)
    trainer.train(resume_from_checkpoint=str(checkpoint))

    assert trainer.state.global_step == 8
    expected = _module_state(uninterrupted)
    for name, tensor in _module_state(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)


def test_lora_trains_jointly_and_reloads_on_a_fresh_base(tmp_path):
    base = tiny_base_model("opt")
    base_before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = graft_recycle_module(base)
    add_base_lora(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    lora_before = {name: p.clone() for name, p in model.base_lm.named_parameters() if "lora_B" in name}
    dataset = permutation_chain_blocks(num_blocks=32, block_size=16)

    arguments = tiny_training_arguments(tmp_path / "out", max_steps=10, logging_steps=5)
    trainer = train_recycle_module(model, dataset, arguments)

    assert "lm_loss" in trainer.state.log_history[0]
    lora_after = dict(model.base_lm.named_parameters())
    assert all(not torch.equal(lora_after[name], before) for name, before in lora_before.items())
    base_after = {
        name.replace(".base_layer", ""): tensor
        for name, tensor in model.base_lm.state_dict().items()
        if "lora_" not in name
    }
    for name, tensor in base_before.items():
        assert torch.equal(base_after[name], tensor)

    reloaded = load_recycle_adapter(tiny_base_model("opt"), tmp_path / "out")
    batch = _right_padded_batch()
    with torch.no_grad():
        expected = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        actual = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.recycle_logits, expected.recycle_logits)


def test_trainer_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="RecycleGPTForCausalLM"):
        RecycleTrainer(tiny_base_model("llama"), tiny_training_arguments(tmp_path))
    frozen = graft_recycle_module(tiny_base_model("llama")).requires_grad_(False)
    with pytest.raises(ValueError, match="Nothing in the model is trainable"):
        RecycleTrainer(frozen, tiny_training_arguments(tmp_path))
    with pytest.raises(ValueError, match="distill_weight must be between 0 and 1"):
        tiny_training_arguments(tmp_path, distill_weight=2.0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_data_parallel_training_keeps_ranks_identical(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(TESTS_DIR / "ddp_train_worker.py"), str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=TESTS_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]

    summaries = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(summary["world_size"] == 2 and summary["global_step"] == 4 for summary in summaries)
    assert summaries[0]["logs"] == summaries[1]["logs"]  # statistics are averaged over both ranks
    weights = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    initial = graft_recycle_module(tiny_base_model("llama", seed=0), init="random").recycle_module.state_dict()
    assert not torch.equal(weights[0]["eh_proj.weight"], initial["eh_proj.weight"])


# --------------------------------------------------------------------------------------------------------------------
# recycle-hf train


def _tiny_base_and_text_lines(tmp_path: Path, num_blocks: int) -> tuple[Path, list[str]]:
    """A saved tiny base with a word tokenizer, and `num_blocks` lines of learnable text in its words."""
    base_dir = tmp_path / "base"
    save_tiny_base_with_tokenizer(base_dir)
    dataset = permutation_chain_blocks(num_blocks=num_blocks, block_size=16)
    return base_dir, [" ".join(f"t{token}" for token in block["input_ids"].tolist()) for block in dataset]


def test_train_command_writes_an_adapter_and_resumes(tmp_path, capsys):
    base_dir, lines = _tiny_base_and_text_lines(tmp_path, num_blocks=16)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[:8]))
    (tmp_path / "extra.txt").write_text(lines[8])
    output = tmp_path / "adapter"
    command = [
        "train", "--base", str(base_dir), "--data", str(tmp_path / "*.jsonl"), str(tmp_path / "extra.txt"),
        "--output", str(output), "--block-size", "16", "--batch-size", "4", "--logging-steps", "2",
        "--save-steps", "3", "--distill-weight", "0.5", "--init", "identity", "--draft-vocab-size", "20",
    ]

    assert cli_main([*command, "--max-steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "Trained to step 6" in printed and "tokens/s" in printed and str(output) in printed
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    assert config["recycle_settings"]["recycle_draft_vocab_size"] == 20
    assert sorted(path.name for path in output.iterdir() if path.name.startswith("checkpoint-")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    state = json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())
    assert {"recycle_loss", "recycle_accuracy", "distill_loss", "base_agreement"} <= set(state["log_history"][0])

    assert cli_main([*command, "--max-steps", "8", "--resume"]) == 0
    assert "Trained to step 8" in capsys.readouterr().out
    model = load_recycle_adapter(AutoModelForCausalLM.from_pretrained(base_dir), output)
    checkpoint_6 = load_file(output / "checkpoint-6" / "adapter_model.safetensors")
    assert not torch.equal(model.recycle_module.eh_proj.weight, checkpoint_6["recycle_module.eh_proj.weight"])
    # The draft vocabulary, saved with the adapter: the 20 commonest tokens of the training data.
    training_data = load_token_blocks(
        [str(tmp_path / "*.jsonl"), str(tmp_path / "extra.txt")], AutoTokenizer.from_pretrained(base_dir), 16
    )
    expected_draft_ids = frequent_token_ids([training_data.token_ids().tolist()], 20, 101)
    assert torch.equal(model.draft_token_ids, expected_draft_ids)


def test_train_command_with_precomputed_states_trains_the_same_module_and_reports_held_out(tmp_path, capsys):
    base_dir, lines = _tiny_base_and_text_lines(tmp_path, num_blocks=12)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[:10]))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[10:]))
    command = [
        "train", "--base", str(base_dir), "--data", str(tmp_path / "train.jsonl"), "--block-size", "16",
        "--batch-size", "4", "--max-steps", "5", "--distill-weight", "0.5", "--state-loss-weight", "0.5",
        "--init", "random", "--eval-data", str(tmp_path / "heldout.jsonl"), "--draft-depth", "2",
    ]

    assert cli_main([*command, "--output", str(tmp_path / "live")]) == 0
    live_printed = capsys.readouterr().out
    assert cli_main([*command, "--output", str(tmp_path / "precomputed"), "--precompute-base-states"]) == 0
    precomputed_printed = capsys.readouterr().out

    live = load_file(tmp_path / "live" / "adapter_model.safetensors")
    precomputed = load_file(tmp_path / "precomputed" / "adapter_model.safetensors")
    assert live.keys() == precomputed.keys()
    for name in live:
        torch.testing.assert_close(precomputed[name], live[name], rtol=1e-4, atol=1e-5)
    for printed in (live_printed, precomputed_printed):
        assert "Held-out: recycle_loss" in printed and "agreement with the base" in printed
        assert "second chained draft's agreement" in printed
    def held_out_line(printed):
        return next(line for line in printed.splitlines() if line.startswith("Held-out"))
    assert held_out_line(live_printed) == held_out_line(precomputed_printed)

    # Kept on disk, the states train the same module, in this run and in the next one that reads them back.
    cached_command = [*command, "--precompute-base-states", "--base-states-cache", str(tmp_path / "states")]
    for run in ("cached-first", "cached-again"):
        assert cli_main([*cached_command, "--output", str(tmp_path / run)]) == 0
        cached = load_file(tmp_path / run / "adapter_model.safetensors")
        for name in live:
            torch.testing.assert_close(cached[name], precomputed[name], rtol=0, atol=0)
    assert sorted(path.name for path in (tmp_path / "states").iterdir()) == ["eval.safetensors", "train.safetensors"]

    capsys.readouterr()
    assert cli_main([*command, "--output", str(tmp_path / "lora"), "--precompute-base-states", "--lora"]) == 2
    assert "frozen base" in capsys.readouterr().err
    assert cli_main([*command, "--output", str(tmp_path / "x"), "--base-states-cache", str(tmp_path / "states")]) == 2
    assert "add --precompute-base-states" in capsys.readouterr().err


def test_train_command_says_when_no_step_was_logged(tmp_path, capsys):
    base_dir, lines = _tiny_base_and_text_lines(tmp_path, num_blocks=4)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    command = [
        "train", "--base", str(base_dir), "--data", str(tmp_path / "train.jsonl"), "--block-size", "16",
        "--batch-size", "2", "--save-steps", "100",
    ]
    assert cli_main([*command, "--output", str(tmp_path / "a"), "--max-steps", "1"]) == 0  # logs every 10 steps
    summary = capsys.readouterr().out
    assert "nan" not in summary and "no step logged (the run is shorter than --logging-steps 10)" in summary
    assert cli_main([*command, "--max-steps", "2", "--logging-steps", "2", "--output", str(tmp_path / "b")]) == 0
    summary = capsys.readouterr().out
    assert "nan" not in summary and "last logged at step 2: recycle_loss" in summary
