"""Prompts written by the base itself (`recycle_hf.self_prompts`, `recycle-hf self-prompts`)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from recycle_hf.distill import read_prompts
from recycle_hf.errors import InvalidInputError
from recycle_hf.self_prompts import PromptFilter, sample_user_prompts, user_turn_prefix


SETTINGS = {"max_new_tokens": 32, "batch_size": 4}


def test_user_turn_prefix_is_the_template_up_to_the_users_message(smollm2):
    _, tokenizer = smollm2
    prefix = user_turn_prefix(tokenizer)
    assert prefix.endswith("<|im_start|>user\n") and prefix.startswith("<|im_start|>system\n")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Name a color."}], tokenize=False)
    assert rendered.startswith(prefix + "Name a color.<|im_end|>")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(InvalidInputError, match="chat template"):
        user_turn_prefix(plain)


def test_prompt_filter_refuses_repeats_fragments_and_excluded_terms_and_prompts():
    keep = PromptFilter(exclude_terms=["Glacier"], exclude_prompts=["Write a poem about the sea."])
    assert keep.accept("How do I bake bread at home?")
    assert not keep.accept("how do  I bake bread at HOME?")  # a repeat up to case and spacing
    assert not keep.accept("Hello there")  # fewer than three words
    assert not keep.accept("Why do glaciers move?")  # an excluded term, in any case
    assert not keep.accept("write a poem about the sea.")  # an excluded prompt
    assert keep.accept("Write a poem about the mountains.")


def test_self_prompts_are_seeded_distinct_short_and_free_of_excluded_terms(smollm2):
    model, tokenizer = smollm2
    prompts = sample_user_prompts(model, tokenizer, 3, seed=0, **SETTINGS)
    assert len(prompts) == 3 and len(set(prompts)) == 3
    assert all(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) < SETTINGS["max_new_tokens"]
               for prompt in prompts)
    assert sample_user_prompts(model, tokenizer, 3, seed=1, **SETTINGS) != prompts
    # Excluding a word of the first prompt drops every prompt holding it; the same samples are drawn, so the other
    # prompts come first, in their order.
    word = max(prompts[0].split(), key=len).strip(".,?!:;\"'").lower()
    filtered = sample_user_prompts(model, tokenizer, 3, seed=0, exclude_terms=[word], **SETTINGS)
    assert all(word not in prompt.lower() for prompt in filtered)
    kept = [prompt for prompt in prompts if word not in prompt.lower()]
    assert filtered[: len(kept)] == kept


def test_self_prompts_command_writes_what_the_library_samples(tmp_path, smollm2):
    model, tokenizer = smollm2
    excluded = tmp_path / "heldout.txt"
    excluded.write_text("Explain glaciers.\n")
    output = tmp_path / "prompts.jsonl"
    command = [sys.executable, "-m", "recycle_hf.cli", "self-prompts", "--count", "3", "--output", str(output),
               "--max-new-tokens", "32", "--batch-size", "4", "--seed", "2", "--exclude-prompts", str(excluded),
               "--exclude-terms", "glacier"]
    subprocess.run(command, check=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["heldout.txt", "prompts.jsonl"]  # no partial file
    expected = sample_user_prompts(model, tokenizer, 3, seed=2, exclude_terms=["glacier"],
                                   exclude_prompts=["Explain glaciers."], **SETTINGS)
    assert read_prompts([output]) == expected
