"""lm-evaluation-harness wrapper: the `recyclegpt` model in std / rec / verify mode, local-data tasks, the CLI.

A tiny random LLaMA RecycleGPT with a character-level tokenizer (vocabulary 101, built offline) stands in for a real
model: every score is checked against an independent computation (lm-eval's own `hf` model on the saved base, or
`generate(recycle_mode="alternate")` forced along the continuation), never against stored numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer, decoders, models
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import AUTO, DraftShape
from recycle_hf.eval import (
    DATA_DIR_ENV,
    EVAL_MODES,
    LOCAL_TASKS,
    SUITE_TASKS,
    TASKS_DIR,
    RecycleGPTLM,
    local_data,
    task_manager,
)
from recycle_hf.eval.cli import _with_package_tasks

from conftest import BOS, EOS, PAD, TEST_DATA_DIR, VOCAB_SIZE, tiny_base_config


DATA_DIR = TEST_DATA_DIR
DATA_FILES = (
    "piqa/valid.jsonl",
    "piqa/valid-labels.lst",
    "hellaswag/hellaswag_val.jsonl",
    "boolq/boolq_validation.jsonl",
    "copa/super_glue_copa_validation.jsonl",
    "lambada/lambada_test.jsonl",
)
LM_EVAL_TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
# lm-eval's own task of each local variant: the local task must build the very same requests from the same docs.
BUILTIN_TASK_YAMLS = {
    "boolq_local": "super_glue/boolq/default.yaml",
    "copa_local": "super_glue/copa/default.yaml",
    "hellaswag_local": "hellaswag/hellaswag.yaml",
    "lambada_openai_local": "lambada/lambada_openai.yaml",
    "piqa_local": "piqa/piqa.yaml",
}
LIMIT = 8
FEWSHOT = 2
GENERATION_CONTEXTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The cat",
    "Once upon a time, in a land far away, there lived",
    "1, 2, 3,",
]


# ---------------------------------------------------------------------------------------------------------- fixtures
def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII, with the special ids of conftest (PAD, EOS, BOS) + <unk>."""
    specials = ["<pad>", "</s>", "<s>", "<unk>"]
    characters = ["\t", "\n"] + [chr(code) for code in range(32, 127)]
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (
        VOCAB_SIZE, PAD, EOS, BOS,
    )
    return tokenizer


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The first 60 records of every benchmark file, kept in the repository (tests/data/MANIFEST.md)."""
    missing = [name for name in DATA_FILES if not (DATA_DIR / name).is_file()]
    if missing:
        pytest.fail(f"Test data missing under {DATA_DIR}: {', '.join(missing)} (see tests/data/MANIFEST.md).")
    return DATA_DIR


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> SimpleNamespace:
    """A tiny RecycleGPT checkpoint, its base alone, and its module as an adapter; each folder with the tokenizer."""
    root = tmp_path_factory.mktemp("eval_checkpoints")
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    # Few-shot prompts are ~1000 characters: a long position range keeps lm-eval from truncating them.
    model = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=tiny_base_config("llama", max_position_embeddings=2048)))
    model.eval()
    paths = SimpleNamespace(recycle=root / "recycle", base=root / "base", adapter=root / "adapter")
    model.save_pretrained(paths.recycle)
    tokenizer.save_pretrained(paths.recycle)
    model.base_lm.save_pretrained(paths.base)
    tokenizer.save_pretrained(paths.base)
    model.save_adapter(paths.adapter)
    return paths


@pytest.fixture(scope="module")
def recycle_lms(checkpoints) -> dict[str, RecycleGPTLM]:
    return {
        mode: RecycleGPTLM(pretrained=str(checkpoints.recycle), mode=mode, device="cpu", batch_size=4)
        for mode in EVAL_MODES
    }


@pytest.fixture(scope="module")
def hf_lm(checkpoints) -> HFLM:
    """lm-eval's own `hf` model on the saved base: the reference for std mode."""
    return HFLM(pretrained=str(checkpoints.base), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def local_tasks(data_dir):
    # Only this package's tasks (lm-eval's thousands of YAMLs take seconds to index); the data folder is given as
    # task metadata here, and through the environment variable in the command-line test.
    return task_manager(include_defaults=False, metadata={"data_dir": str(data_dir)})


# ----------------------------------------------------------------------------------------------------------- helpers
class ForcedTokenScores(LogitsProcessor):
    """Inside `generate`: records log p(forced token) and whether it is the argmax, then forces that token.

    Being the only processor, it sees the raw logits of whichever network (base or module) picks each token.
    """

    def __init__(self, forced_tokens: list[int], prompt_length: int):
        self.forced_tokens = forced_tokens
        self.prompt_length = prompt_length
        self.logprobs: list[float] = []
        self.greedy: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        token = self.forced_tokens[input_ids.shape[1] - self.prompt_length]
        self.logprobs.append(torch.log_softmax(scores[0].float(), dim=-1)[token].item())
        self.greedy.append(int(scores[0].argmax()) == token)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


def alternating_decoding_score(model, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
    """(log-likelihood, is-greedy) that greedy alternating decoding gives the continuation under teacher forcing."""
    processor = ForcedTokenScores(continuation_ids, len(context_ids))
    model.generate(
        torch.tensor([context_ids]),
        attention_mask=torch.ones(1, len(context_ids), dtype=torch.long),
        recycle_mode="alternate",
        do_sample=False,
        max_new_tokens=len(continuation_ids),
        logits_processor=LogitsProcessorList([processor]),
        pad_token_id=PAD,
    )
    assert len(processor.logprobs) == len(continuation_ids)
    return sum(processor.logprobs), all(processor.greedy)


def loglikelihood_requests(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=index) for index, pair in enumerate(pairs)
    ]


def generation_requests(until: list[str], max_gen_toks: int) -> list[Instance]:
    settings = {"until": until, "max_gen_toks": max_gen_toks, "do_sample": False}
    return [
        Instance(request_type="generate_until", doc={}, arguments=(context, dict(settings)), idx=0)
        for context in GENERATION_CONTEXTS
    ]


def evaluate(lm, tasks: list[str], num_fewshot: int, manager) -> dict:
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=LIMIT,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
    )


def responses(result: dict) -> dict[str, list]:
    """Per task, every document's raw model responses (log-likelihoods and greedy flags, or generated text)."""
    return {
        task: [(sample["doc_id"], sample["resps"]) for sample in sorted(samples, key=lambda s: s["doc_id"])]
        for task, samples in result["samples"].items()
    }


def self_generated_pair(lm: RecycleGPTLM, context: str, num_tokens: int) -> tuple[str, str]:
    """A context and the continuation greedy alternating decoding writes after it."""
    context_ids = lm.tok_encode(context)
    output = lm.model.generate(
        torch.tensor([context_ids]), attention_mask=torch.ones(1, len(context_ids), dtype=torch.long),
        recycle_mode="alternate", do_sample=False, max_new_tokens=num_tokens, pad_token_id=PAD,
    )
    new_ids = output[0, len(context_ids) :].tolist()
    continuation = lm.tokenizer.decode(new_ids)
    # The character tokenizer must give the same tokens back, or the pair would not be what was decoded.
    assert lm.tok_encode(context + continuation)[len(context_ids) :] == new_ids
    return context, continuation


# ------------------------------------------------------------------------------------------ scores on real tasks
@pytest.mark.parametrize("num_fewshot", [0, FEWSHOT])
def test_task_scores_std_and_verify_equal_hf_and_rec_differs(num_fewshot, recycle_lms, hf_lm, local_tasks):
    tasks = ["piqa_local", "copa_local", "lambada_openai_gen_local"]
    results = {"hf": evaluate(hf_lm, tasks, num_fewshot, local_tasks)}
    results.update({mode: evaluate(lm, tasks, num_fewshot, local_tasks) for mode, lm in recycle_lms.items()})

    for name, result in results.items():
        assert result["n-shot"] == {task: num_fewshot for task in tasks}, name
        for task, metric in (("piqa_local", "acc,none"), ("copa_local", "acc,none"),
                             ("lambada_openai_gen_local", "exact_match,first_word")):
            assert result["n-samples"][task]["effective"] == LIMIT
            assert 0.0 <= float(result["results"][task][metric]) <= 1.0, (name, task)
    # std is the base model, verify decodes losslessly: both give exactly the `hf` model's responses and scores.
    for mode in ("std", "verify"):
        assert responses(results[mode]) == responses(results["hf"]), mode
        assert results[mode]["results"] == results["hf"]["results"], mode
    # rec scores with the module's logits at every other continuation token.
    rec, std = responses(results["rec"]), responses(results["std"])
    assert rec["piqa_local"] != std["piqa_local"] and rec["copa_local"] != std["copa_local"]


# ------------------------------------------------------------------------------------------------ rec scoring
def test_rec_loglikelihood_equals_teacher_forced_alternating_decoding(recycle_lms):
    rec_lm = recycle_lms["rec"]
    pairs = [
        ("Question: How do you boil an egg?\nAnswer:", " Put it in boiling water for ten minutes."),
        ("The cat sat on", " the mat"),
        ("Hello", "!"),
        # Same context + continuation[:-1], different boundary: lm-eval's one-token logits cache would share them.
        ("abcd", "efgh"),
        ("abcde", "fgh"),
        self_generated_pair(rec_lm, "Once upon a time", 9),
    ]
    scores = rec_lm.loglikelihood(loglikelihood_requests(pairs))
    for (context, continuation), (loglikelihood, is_greedy) in zip(pairs, scores):
        context_ids, continuation_ids = rec_lm._encode_pair(context, continuation)
        expected = alternating_decoding_score(rec_lm.model, context_ids, continuation_ids)
        assert loglikelihood == pytest.approx(expected[0], abs=1e-4), (context, continuation)
        assert is_greedy == expected[1], (context, continuation)
    # The continuation alternating decoding wrote is, by definition, its greedy choice.
    assert scores[-1][1] is True

    std_scores = recycle_lms["std"].loglikelihood(loglikelihood_requests(pairs))
    assert recycle_lms["verify"].loglikelihood(loglikelihood_requests(pairs)) == std_scores
    for (context, continuation), rec, std in zip(pairs, scores, std_scores):
        if len(continuation) == 1:  # one token: the base's, in both modes
            assert rec[0] == pytest.approx(std[0], abs=1e-5)
        else:  # every second token is the module's
            assert abs(rec[0] - std[0]) > 1e-3, (context, continuation)


def counted_forwards(lm: RecycleGPTLM, monkeypatch) -> list[int]:
    """The rows of each forward `lm` runs from now on."""
    forwards = []
    model_call = lm._model_call

    def counting_model_call(inps: torch.Tensor, **kwargs) -> torch.Tensor:
        forwards.append(inps.shape[0])
        return model_call(inps, **kwargs)

    monkeypatch.setattr(lm, "_model_call", counting_model_call)
    return forwards


def test_rec_shares_one_forward_between_choices_only_when_their_boundaries_agree(
    recycle_lms, checkpoints, monkeypatch
):
    rec_lm = recycle_lms["rec"]
    forwards = counted_forwards(rec_lm, monkeypatch)
    # Multiple choice: one context, answers that differ only in their last token (short ones and longer ones).
    choices = [("Is the sky blue? Answer:", answer) for answer in (" y", " n", " yes", " yet", " yen")]
    scores = rec_lm.loglikelihood(loglikelihood_requests(choices))
    for (context, continuation), score in zip(choices, scores):
        expected = alternating_decoding_score(rec_lm.model, *rec_lm._encode_pair(context, continuation))
        assert score[0] == pytest.approx(expected[0], abs=1e-4) and score[1] == expected[1], continuation
    # Two rows in all: " y" / " n" share one, " yes" / " yet" / " yen" another.
    assert sum(forwards) == 2

    # "abcd" + "efgh" and "abcde" + "fgh" would share a forward but not a schedule: every request gets its own.
    forwards.clear()
    pairs = [("abcd", "efgh"), ("abcde", "fgh"), ("abcd", "efgz")]
    rec_lm.loglikelihood(loglikelihood_requests(pairs))
    assert sum(forwards) == 3

    # A user's logits_cache=False holds in rec mode too.
    uncached_lm = RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="rec", device="cpu", batch_size=4,
                               logits_cache=False)
    uncached_forwards = counted_forwards(uncached_lm, monkeypatch)
    assert uncached_lm.loglikelihood(loglikelihood_requests(choices)) == scores
    assert sum(uncached_forwards) == len(choices)


def test_rec_rolling_loglikelihood_restarts_the_schedule_at_each_window(checkpoints):
    max_length = 16
    text = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun."
    request = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    rec_lm = RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="rec", max_length=max_length, device="cpu",
                          batch_size=3)
    windows = list(map(make_disjoint_window, get_rolling_token_windows(
        token_list=rec_lm.tok_encode(text), prefix_token=rec_lm.prefix_token_id, max_seq_len=max_length,
        context_len=1,
    )))
    # Several full windows (base, module, base, ... inside each) and a one-token last window.
    assert sum(len(continuation) >= 3 for _, continuation in windows) >= 4 and len(windows[-1][1]) == 1
    expected = sum(alternating_decoding_score(rec_lm.model, *window)[0] for window in windows)
    assert rec_lm.loglikelihood_rolling(request)[0] == pytest.approx(expected, abs=1e-3)

    std_lm = RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="std", max_length=max_length, device="cpu",
                          batch_size=3)
    hf_lm = HFLM(pretrained=str(checkpoints.base), max_length=max_length, device="cpu", batch_size=3)
    assert std_lm.loglikelihood_rolling(request) == hf_lm.loglikelihood_rolling(request)


def test_base_plus_adapter_and_in_memory_model_score_like_the_checkpoint(checkpoints, recycle_lms):
    requests = loglikelihood_requests(
        [("The cat sat on", " the mat"), ("Question: Why is the sky blue?\nAnswer:", " Rayleigh scattering.")]
    )
    expected = recycle_lms["rec"].loglikelihood(requests)
    adapter_lm = RecycleGPTLM(base=str(checkpoints.base), adapter=str(checkpoints.adapter), mode="rec", device="cpu")
    assert isinstance(adapter_lm.model, RecycleGPTForCausalLM)
    assert adapter_lm.loglikelihood(requests) == expected
    in_memory_lm = RecycleGPTLM(pretrained=recycle_lms["rec"].model, tokenizer=recycle_lms["rec"].tokenizer, mode="rec")
    assert in_memory_lm.loglikelihood(requests) == expected


def test_default_base_in_std_mode_scores_like_hf_on_smollm2(smollm2, tmp_path):
    from recycle_hf.defaults import dequantized_base_dir
    from recycle_hf.graft import graft_recycle_module

    base_model, _ = smollm2
    torch.manual_seed(0)
    # freeze_base=False: the session's SmolLM2 fixture is wrapped, never changed.
    graft_recycle_module(base_model, init="random", freeze_base=False).save_adapter(tmp_path / "adapter")
    requests = loglikelihood_requests(
        [("The capital of France is", " Paris"), ("The capital of France is", " Rome"), ("The cat sat on", " the mat.")]
    )
    default_lm = RecycleGPTLM(base="default", adapter=str(tmp_path / "adapter"), mode="std", device="cpu",
                              dtype="float32")
    hf_lm = HFLM(pretrained=str(dequantized_base_dir()), device="cpu", dtype="float32")
    scores = default_lm.loglikelihood(requests)
    assert scores == hf_lm.loglikelihood(requests)
    # The real model knows its capitals: a sanity check that these are SmolLM2's weights, not a random base.
    assert scores[0][1] is True and scores[0][0] > scores[1][0] + 5


# ------------------------------------------------------------------------------------------------- generation
def test_generate_until_decodes_in_the_models_mode(recycle_lms, hf_lm):
    max_gen_toks = 12
    outputs = {
        name: lm.generate_until(generation_requests(["\n\n"], max_gen_toks))
        for name, lm in {"hf": hf_lm, **recycle_lms}.items()
    }
    rec_lm = recycle_lms["rec"]
    expected_rec = []
    for context in GENERATION_CONTEXTS:
        context_ids = rec_lm.tok_encode(context)
        sequence = rec_lm.model.generate(
            torch.tensor([context_ids]), attention_mask=torch.ones(1, len(context_ids), dtype=torch.long),
            recycle_mode="alternate", do_sample=False, max_new_tokens=max_gen_toks, pad_token_id=PAD,
        )
        text = rec_lm.tokenizer.decode(sequence[0, len(context_ids) :], skip_special_tokens=True)
        expected_rec.append(text.split("\n\n")[0])
    # Batched (left-padded) rec generation is alternating decoding of each context alone.
    assert outputs["rec"] == expected_rec
    # std is the base's own decoding and verify is lossless: both write what lm-eval's hf model writes.
    assert outputs["std"] == outputs["hf"] and outputs["verify"] == outputs["hf"]
    assert outputs["rec"] != outputs["std"]
    assert all(len(text) <= max_gen_toks for texts in outputs.values() for text in texts)


@pytest.mark.parametrize("mode", EVAL_MODES)
def test_each_row_stops_right_after_its_first_stop_sequence(mode, recycle_lms):
    lm = recycle_lms[mode]
    max_new_tokens = 16
    context, attention_mask = lm.tok_batch_encode(GENERATION_CONTEXTS)
    prompt_length = context.shape[1]

    def generate(stop: list[str]) -> list[list[int]]:
        sequences = lm._model_generate(context, max_length=prompt_length + max_new_tokens, stop=stop,
                                       attention_mask=attention_mask, do_sample=False)
        return [row + [PAD] * (max_new_tokens - len(row)) for row in sequences[:, prompt_length:].tolist()]

    unstopped = generate([])
    # A stop character that some rows write before their last token; none of the letters of "<unk>", "</s>" ...
    counts = Counter(token for row in unstopped for token in row[:-1] if token > 3)
    stop_token = next(token for token, _ in counts.most_common() if lm.tokenizer.decode([token]) not in "<>/unkpads")
    stop = lm.tokenizer.decode([stop_token])
    expected = []
    for row in unstopped:
        cut = row.index(stop_token) + 1 if stop_token in row else len(row)
        expected.append(row[:cut] + [PAD] * (len(row) - cut))
    assert expected != unstopped
    assert generate([stop]) == expected


def test_generate_until_honours_max_gen_toks_and_stop_strings(recycle_lms):
    lm = recycle_lms["verify"]
    long_outputs = lm.generate_until(generation_requests([], 10))
    short_outputs = lm.generate_until(generation_requests([], 4))
    assert all(len(short) <= 4 and long.startswith(short) for long, short in zip(long_outputs, short_outputs))
    assert long_outputs != short_outputs
    # A character the outputs contain (none of the letters of the special tokens' names).
    counts = Counter(char for text in long_outputs for char in text[1:] if char not in "<>/unkpads")
    stop = counts.most_common(1)[0][0]
    stopped = lm.generate_until(generation_requests([stop], 10))
    assert stopped == [text.split(stop)[0] for text in long_outputs] and stopped != long_outputs


# ---------------------------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("local_name", sorted(BUILTIN_TASK_YAMLS))
def test_local_task_builds_lm_evals_own_requests(local_name, data_dir):
    local_tasks = task_manager(include_defaults=False, metadata={"data_dir": str(data_dir)})
    local_config = load_yaml(TASKS_DIR / f"{local_name}.yaml")
    builtin_on_local_data = {
        **load_yaml(LM_EVAL_TASKS_DIR / BUILTIN_TASK_YAMLS[local_name]),
        "task": f"{local_name}_as_lm_eval",
        "tag": None,
        "custom_dataset": local_config["custom_dataset"],
        "dataset_path": None,
        "dataset_name": None,
        "training_split": None,
        "validation_split": None,
        "test_split": local_config["test_split"],
        "fewshot_split": local_config["fewshot_split"],
    }
    loaded = local_tasks.load([local_name, builtin_on_local_data])["tasks"]
    local_task, builtin_task = loaded[local_name], loaded[f"{local_name}_as_lm_eval"]
    for num_fewshot in (0, FEWSHOT):
        requests = []
        for task in (local_task, builtin_task):
            task.set_config(key="num_fewshot", value=num_fewshot)
            task.set_fewshot_seed(seed=1234)
            task.build_all_requests(limit=5, rank=0, world_size=1)
            requests.append([instance.arguments for instance in task.instances])
        assert len(requests[0]) >= 5
        assert requests[0] == requests[1]
        # Few-shot examples come from the evaluation split, but never the document being asked.
        for instance in local_task.instances:
            assert instance.arguments[0].count(local_task.doc_to_text(instance.doc)) == 1


def test_lambada_generation_task_scores_the_first_word(local_tasks):
    config = load_yaml(TASKS_DIR / "lambada_openai_gen_local.yaml")
    assert config["filter_list"][0]["filter"][0]["regex_pattern"] == local_data.FIRST_WORD_PATTERN
    assert local_data.lambada_target_word({"text": 'she said to "Nadia'}) == "Nadia"
    assert local_data.lambada_target_word({"text": "it wasn't hers"}) == "hers"
    assert local_data.first_word(" didn't. Then") == "didn't"
    task = local_tasks.load(["lambada_openai_gen_local", "lambada_openai_local"])["tasks"]
    generation, loglikelihood = task["lambada_openai_gen_local"], task["lambada_openai_local"]
    for built in (generation, loglikelihood):
        built.build_all_requests(limit=5, rank=0, world_size=1)
    # Same contexts as lm-eval's lambada_openai; the target is its last word.
    assert [i.arguments[0] for i in generation.instances] == [i.arguments[0] for i in loglikelihood.instances]
    assert [generation.doc_to_target(i.doc) for i in generation.instances] == [
        i.arguments[1].strip() for i in loglikelihood.instances
    ]


def test_recyclegpt_suite_is_the_papers_suite_of_lm_eval_tasks(local_tasks):
    suite = load_yaml(TASKS_DIR / "recyclegpt_suite.yaml")
    assert suite["group"] == "recyclegpt_suite" and tuple(suite["task"]) == SUITE_TASKS
    manager = task_manager()  # with lm-eval's own tasks
    assert set(SUITE_TASKS) <= set(manager.all_subtasks)
    assert {"recyclegpt_suite", "recyclegpt_suite_local"} <= set(manager.all_groups)
    assert set(LOCAL_TASKS) <= set(manager.all_subtasks)
    local_suite = load_yaml(TASKS_DIR / "recyclegpt_suite_local.yaml")
    assert local_suite["task"] == ["boolq_local", "hellaswag_local", "piqa_local"]
    assert {name.removesuffix("_local") for name in local_suite["task"]} <= set(SUITE_TASKS)
    assert "recyclegpt_suite_local" in local_tasks.all_groups


def test_local_data_errors_name_the_missing_folder_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=DATA_DIR_ENV):
        local_data.piqa()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_data.piqa(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="piqa/valid.jsonl"):
        local_data.piqa(data_dir=str(tmp_path))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lambada/lambada_test.jsonl"):
        local_data.lambada_openai()


def test_local_data_reads_every_record_of_the_files(data_dir):
    piqa_lines = (data_dir / "piqa" / "valid.jsonl").read_text().splitlines()
    piqa = local_data.piqa(data_dir=str(data_dir))["validation"]
    labels = (data_dir / "piqa" / "valid-labels.lst").read_text().split()
    assert len(piqa) == len(piqa_lines) == len(labels) and [str(label) for label in piqa["label"]] == labels
    assert piqa[-1]["goal"] == json.loads(piqa_lines[-1])["goal"]
    boolq_lines = (data_dir / "boolq" / "boolq_validation.jsonl").read_text().splitlines()
    boolq = local_data.boolq(data_dir=str(data_dir))["validation"]
    assert len(boolq) == len(boolq_lines)
    for row, line in ((boolq[0], boolq_lines[0]), (boolq[-1], boolq_lines[-1])):
        record = json.loads(line)
        assert (row["question"], row["label"]) == (record["question"], int(record["answer"]))


def test_test_data_lies_in_the_repository_and_is_described():
    """A fresh clone has no data beside it: every benchmark file the tests read is in tests/data, with provenance."""
    repository = Path(__file__).resolve().parents[1]
    assert DATA_DIR.is_relative_to(repository)
    manifest = (DATA_DIR / "MANIFEST.md").read_text()
    for name in DATA_FILES:
        assert f"`{name}`" in manifest, name
        assert len((DATA_DIR / name).read_text().splitlines()) >= 2 * LIMIT, name  # few-shot needs other documents
    assert sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file()) == sorted(
        [*DATA_FILES, "MANIFEST.md"]
    )


# ---------------------------------------------------------------------------------------------- model arguments
def test_bad_model_arguments_are_refused_with_a_hint(checkpoints):
    with pytest.raises(ValueError, match="std, rec, verify"):
        RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="alternate")
    with pytest.raises(ValueError, match="not both"):
        RecycleGPTLM(pretrained=str(checkpoints.recycle), base=str(checkpoints.base), adapter=str(checkpoints.adapter))
    with pytest.raises(ValueError, match="Name the model"):
        RecycleGPTLM(mode="rec")
    with pytest.raises(ValueError, match="needs adapter="):
        RecycleGPTLM(base=str(checkpoints.base))
    with pytest.raises(ValueError, match="not a RecycleGPT model"):
        RecycleGPTLM(pretrained=str(checkpoints.base), device="cpu")
    with pytest.raises(ValueError, match="num_draft_tokens"):
        RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="verify", num_draft_tokens=17)
    with pytest.raises(ValueError, match="an integer from 0"):
        RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="verify", num_draft_tokens="17")


def test_the_lm_eval_model_builds_its_draft_shape_from_text_or_value(checkpoints):
    """lm-eval passes model arguments as text ("num_draft_tokens=2"); Python callers pass values: one `DraftShape`."""
    def shape_of(value):
        return RecycleGPTLM(pretrained=str(checkpoints.recycle), mode="verify", num_draft_tokens=value,
                            device="cpu").num_draft_tokens

    assert shape_of("2") == shape_of(2) == DraftShape.chain(2)
    assert shape_of("auto") == AUTO
    assert shape_of([[0], [1], [0, 0]]) == shape_of("[[0], [1], [0, 0]]") == DraftShape.of([[0], [1], [0, 0]])


# ------------------------------------------------------------------------------------------------- command line
def test_recycle_hf_eval_hands_over_to_lm_evals_cli(capsys):
    from recycle_hf.cli import main

    assert main(["eval", "--help"]) == 0
    assert "Language Model Evaluation Harness" in capsys.readouterr().out
    assert main(["eval", "run", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--model_args" in help_text and "--include_path" in help_text and "--num_fewshot" in help_text


def test_package_tasks_come_first_on_the_include_path():
    user_paths = os.pathsep.join(["/my/tasks", "/more/tasks"])
    assert _with_package_tasks(Namespace(include_path=user_paths)).include_path == [
        str(TASKS_DIR), "/my/tasks", "/more/tasks",
    ]
    assert _with_package_tasks(Namespace(include_path=None)).include_path == [str(TASKS_DIR)]


def test_python_m_recycle_hf_eval_runs_local_tasks_and_writes_results(checkpoints, data_dir, tmp_path):
    output_path = tmp_path / "results"
    command = [
        sys.executable, "-m", "recycle_hf.eval",
        "--model", "recyclegpt",
        "--model_args", f"pretrained={checkpoints.recycle},mode=rec",
        "--tasks", "recyclegpt_suite_local,lambada_openai_gen_local",
        "--limit", "3",
        "--num_fewshot", "1",
        "--device", "cpu",
        "--batch_size", "4",
        "--output_path", str(output_path),
    ]
    environment = {**os.environ, DATA_DIR_ENV: str(data_dir)}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    result_files = list(output_path.rglob("results_*.json"))
    assert len(result_files) == 1
    results = json.loads(result_files[0].read_text())
    assert results["config"]["model"] == "recyclegpt" and results["config"]["model_args"]["mode"] == "rec"
    tasks = {"boolq_local": "acc,none", "hellaswag_local": "acc,none", "piqa_local": "acc,none",
             "lambada_openai_gen_local": "exact_match,first_word"}
    assert all(results["n-shot"][task] == 1 for task in tasks)
    for task, metric in tasks.items():
        assert results["n-samples"][task]["effective"] == 3
        assert 0.0 <= results["results"][task][metric] <= 1.0
    suite_scores = [results["results"][task]["acc,none"] for task in ("boolq_local", "hellaswag_local", "piqa_local")]
    assert results["groups"]["recyclegpt_suite_local"]["acc,none"] == pytest.approx(sum(suite_scores) / 3)
