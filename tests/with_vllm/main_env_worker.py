"""The vLLM tests' work that needs this package's own environment (transformers >= 5.24, which vLLM's pins exclude):
building tiny bases with modules, RecycleModule on the inputs vLLM's drafter saw, and verify mode's acceptance.

    python main_env_worker.py make-family FAMILY FOLDER
    python main_env_worker.py compare-trace BASE ADAPTER TRACE_FOLDER MARKER RESULT.json
    python main_env_worker.py verify-stats BASE ADAPTER PROMPTS.json K MAX_NEW_TOKENS RESULT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config, Qwen3Config

from recycle_hf import graft_recycle_module
from recycle_hf.loading import load_recycle_model


def family_config(family: str):
    # Heads of 64: vLLM's CPU attention kernels take only some head sizes.
    common = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    if family == "llama3":
        return LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=64)
    raise ValueError(family)


def make_family(family: str, folder: str) -> None:
    """A random base of `family` (folder/base) and a random 2-block module with a draft vocabulary (folder/adapter)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(family_config(family)).eval()
    base.save_pretrained(Path(folder) / "base")
    model = graft_recycle_module(base, num_layers=2, init="random")
    with torch.no_grad():
        for parameter in model.recycle_module.parameters():  # norms away from 1, so that each one counts
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
    model.set_draft_vocabulary(torch.randperm(512, generator=torch.Generator().manual_seed(1))[:300].sort().values)
    model.save_adapter(Path(folder) / "adapter")


def _load(base: str, adapter: str):
    # "default-adapter": the adapter `base="default"` loads with, the shipped SmolLM2 module.
    model, _ = load_recycle_model(base=base, adapter=None if adapter == "default-adapter" else adapter,
                                  with_tokenizer=False)
    return model


@torch.no_grad()
def compare_trace(base: str, adapter: str, trace_folder: str, marker: str, result: str) -> None:
    """RecycleModule on the pairs each drafter call saw, with the module's cache holding what vLLM's paged cache held
    (a call from position p overwrites p and later), against the drafter's states and logits."""
    model = _load(base, adapter)
    after = Path(marker).stat().st_mtime_ns
    calls = sorted((path for path in Path(trace_folder).glob("*.pt") if path.stat().st_mtime_ns >= after),
                   key=lambda path: int(path.name.split("-")[1]))
    cache = DynamicCache(config=model.recycle_module.config)
    state_diffs, logit_diffs, forwards, logit_calls, positions_checked = [], [], 0, 0, 0
    for path in calls:
        record = torch.load(path)
        if path.name.endswith("-forward.pt"):
            positions = record["positions"].long()
            start = int(positions[0])
            assert torch.equal(positions, torch.arange(start, start + len(positions))), positions
            if cache.get_seq_length() > start:
                cache.crop(start - cache.get_seq_length())
            assert cache.get_seq_length() == start, (cache.get_seq_length(), start)
            states = model.recycle_step(record["input_ids"][None].long(), record["hidden_states"][None].float(), None,
                                        (positions + 1)[None], cache)[0]
            state_diffs.append(float((states - record["states"].float()).abs().max()))
            forwards += 1
            positions_checked += len(positions)
        else:
            logits = model.vocab_logits(record["hidden_states"].float())
            allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
            allowed[model.draft_token_ids] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
            traced = record["logits"].float()
            assert torch.equal(torch.isinf(traced), torch.isinf(logits))
            finite = ~torch.isinf(logits)
            logit_diffs.append(float((logits[finite] - traced[finite]).abs().max()))
            logit_calls += 1
    Path(result).write_text(json.dumps({
        "forwards": forwards, "logit_calls": logit_calls, "positions": positions_checked,
        "max_state_diff": max(state_diffs), "max_logit_diff": max(logit_diffs),
    }))


@torch.no_grad()
def verify_stats(base: str, adapter: str, prompts_path: str, k: str, max_new_tokens: str, result: str) -> None:
    """Verify mode on each prompt alone (greedy, no EOS stop): tokens per decoding step after the first token."""
    model = _load(base, adapter)
    emitted, steps, sequences = 0, 0, []
    for ids in json.loads(Path(prompts_path).read_text()):
        output = model.generate(torch.tensor([ids]), max_new_tokens=int(max_new_tokens), do_sample=False,
                                recycle_mode="verify", num_draft_tokens=int(k), eos_token_id=None, pad_token_id=0,
                                return_dict_in_generate=True)
        stats = output.recycle_stats
        emitted += stats["new_tokens"] - 1  # the prefill's token is no decoding step's
        steps += stats["row_base_forwards"] - 1
        sequences.append(output.sequences[0, len(ids):].tolist())
    Path(result).write_text(json.dumps({"tokens_per_step": emitted / steps, "sequences": sequences}))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"make-family": make_family, "compare-trace": compare_trace, "verify-stats": verify_stats}[command](*arguments)
