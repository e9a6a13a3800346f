"""The prompt lists of the self-distillation recipe: reproducible, and disjoint from what measures the module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recycle_hf.bench import BENCHMARK_PROMPTS


EXAMPLES_DIR = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def prompt_script():
    spec = importlib.util.spec_from_file_location("make_distill_prompts", EXAMPLES_DIR / "make_distill_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_shipped_prompt_files_are_what_the_script_builds(prompt_script):
    assert _read_lines(EXAMPLES_DIR / "data" / "train_prompts.txt") == prompt_script.build_training_prompts()
    heldout = prompt_script.build_prompts(prompt_script.HELDOUT_TEMPLATES, prompt_script.HELDOUT_TOPICS, 1)
    assert _read_lines(EXAMPLES_DIR / "data" / "heldout_prompts.txt") == heldout


def test_the_large_training_set_extends_the_default_one_and_stays_apart_from_measured_text(prompt_script):
    default = prompt_script.build_training_prompts()
    large = prompt_script.build_training_prompts(num_topic_prompts=8520, num_word_problems=600)
    assert len(large) == 9232 and len(set(large)) == len(large)
    assert set(default) <= set(large)
    heldout = set(_read_lines(EXAMPLES_DIR / "data" / "heldout_prompts.txt"))
    assert not set(large) & heldout
    assert not set(prompt_script.TRAIN_TOPICS) & set(prompt_script.HELDOUT_TOPICS)
    assert not set(prompt_script.TRAIN_TEMPLATES) & set(prompt_script.HELDOUT_TEMPLATES)
    assert not set(large) & set(BENCHMARK_PROMPTS)


def test_a_sample_of_the_large_set_is_seeded_and_drawn_from_it(prompt_script):
    large = prompt_script.build_training_prompts(num_topic_prompts=8520, num_word_problems=600)
    sample = prompt_script.sample_prompts(large, 320, seed=0)
    assert len(set(sample)) == 320 and set(sample) <= set(large)
    assert sample == prompt_script.sample_prompts(large, 320, seed=0) != prompt_script.sample_prompts(large, 320, 1)
