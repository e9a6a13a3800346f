"""The static fast path: token for token equal to the reference loop and to plain `generate`, one compiled graph,
automatic fallback, and `num_draft_tokens="auto"`."""

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from transformers import CompileConfig, LlamaConfig, StoppingCriteria, StoppingCriteriaList

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.draft_choice_recyclegpt import decide_draft_shape
from recycle_hf.checkpoint_code.draft_length_recyclegpt import MAX_AUTO_DRAFT_TOKENS, draft_length_choices
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape
from recycle_hf.checkpoint_code.runtime_recyclegpt import decoding_runtime
from recycle_hf.checkpoint_code.static_generation_recyclegpt import SLOT_BUCKET

from conftest import PAD, VOCAB_SIZE, left_padded_batch, tiny_recycle_model


FAMILIES = ["llama", "opt", "opt-350m-style", "qwen2", "gpt_neox", "gpt2"]


def generate_on(path, model, input_ids, attention_mask, **kwargs):
    """Recycle decoding on the fast path ("static") or the reference loop ("dynamic"), with its statistics."""
    output = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, return_dict_in_generate=True,
                            cache_implementation=path, **kwargs)
    assert output.recycle_stats["decoding_path"] == ("static" if path == "static" else "reference_loop")
    return output.sequences


def plain(model, input_ids, attention_mask, **kwargs):
    return model.base_lm.generate(input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_equals_reference_loop_and_plain_greedy(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 2, 6], seed=1)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=12)
    for k in (1, 2, 3, 4):
        settings = dict(max_new_tokens=12, recycle_mode="verify", num_draft_tokens=k)
        assert torch.equal(generate_on("static", model, input_ids, attention_mask, **settings), expected), k
        assert torch.equal(generate_on("dynamic", model, input_ids, attention_mask, **settings), expected), k


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_alternate_equals_reference_loop(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 2, 6], seed=4)
    for max_new_tokens in (1, 2, 11):
        settings = dict(max_new_tokens=max_new_tokens, recycle_mode="alternate")
        assert torch.equal(generate_on("static", model, input_ids, attention_mask, **settings),
                           generate_on("dynamic", model, input_ids, attention_mask, **settings)), max_new_tokens


def test_eos_at_every_position_of_a_step_ends_the_row_as_plain_decoding_does():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([7, 3, 5], seed=3)
    width = input_ids.shape[1]
    free = plain(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
    tested = 0
    for position in range(10):
        eos = int(free[0, width + position])
        if eos in free[0, width : width + position].tolist():
            continue  # an earlier EOS would end the row first
        tested += 1
        expected = plain(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
        for k in (1, 3):
            ours = generate_on("static", model, input_ids, attention_mask, max_new_tokens=10, recycle_mode="verify",
                               num_draft_tokens=k, eos_token_id=eos, pad_token_id=PAD)
            assert torch.equal(ours, expected), (position, k)
    assert tested >= 6


def test_every_small_token_budget():
    model = tiny_recycle_model("opt")
    input_ids, attention_mask = left_padded_batch([5, 8, 3], seed=6)
    for max_new_tokens in range(1, 10):
        expected = plain(model, input_ids, attention_mask, max_new_tokens=max_new_tokens)
        for k in (1, 3):
            ours = generate_on("static", model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                               recycle_mode="verify", num_draft_tokens=k)
            assert torch.equal(ours, expected), (max_new_tokens, k)


def test_several_eos_tokens_and_absolute_max_length():
    model = tiny_recycle_model("qwen2")
    input_ids, attention_mask = left_padded_batch([6, 4], seed=8)
    free = plain(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=None, pad_token_id=PAD)
    width = input_ids.shape[1]
    eos = [int(free[0, width + 5]), int(free[1, width + 2])]
    settings = dict(max_length=width + 12, eos_token_id=eos, pad_token_id=PAD)
    expected = plain(model, input_ids, attention_mask, **settings)
    ours = generate_on("static", model, input_ids, attention_mask, recycle_mode="verify", num_draft_tokens=3,
                       **settings)
    assert torch.equal(ours, expected)


def test_context_free_warpers_run_inside_the_step():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 4], seed=2)
    settings = dict(max_new_tokens=10, do_sample=True, top_k=1, temperature=0.7, top_p=0.9)
    expected = model.base_lm.generate(input_ids, attention_mask=attention_mask, **settings)
    output = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="verify", num_draft_tokens=3,
                            return_dict_in_generate=True, **settings)
    assert output.recycle_stats["decoding_path"] == "static"
    assert torch.equal(output.sequences, expected)  # top_k=1 makes sampling greedy


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


@pytest.mark.parametrize("needs_context", [
    dict(repetition_penalty=1.7),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=4),
    "custom_stopping_criterion",
])
def test_calls_that_need_the_whole_context_go_to_the_reference_loop_and_equal_plain(needs_context):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([7, 4], seed=5)
    if needs_context == "custom_stopping_criterion":
        needs_context = dict(stopping_criteria=StoppingCriteriaList([StopAfter(input_ids.shape[1] + 6)]))
    settings = dict(max_new_tokens=10, pad_token_id=PAD, **needs_context)
    expected = plain(model, input_ids, attention_mask, **settings)
    output = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="verify", num_draft_tokens=2,
                            return_dict_in_generate=True, **settings)
    assert output.recycle_stats["decoding_path"] == "reference_loop"
    assert torch.equal(output.sequences, expected)
    with pytest.raises(ValueError, match="cache_implementation='static' cannot decode this call"):
        model.generate(input_ids, attention_mask=attention_mask, recycle_mode="verify", num_draft_tokens=2,
                       cache_implementation="static", **settings)


def test_static_caches_are_reused_by_calls_of_the_same_size():
    model = tiny_recycle_model("llama")
    for call, (seed, lengths) in enumerate(((1, [9, 2, 6]), (2, [4, 8, 7]))):
        input_ids, attention_mask = left_padded_batch(lengths, seed=seed)
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, recycle_mode="verify",
                       num_draft_tokens=2)
        if call == 0:
            caches = dict(decoding_runtime(model).static_caches)
    assert decoding_runtime(model).static_caches == caches
    (batch_size, num_slots, _, _), = caches
    assert (batch_size, num_slots) == (3, SLOT_BUCKET)
    model.free_decoding_caches()
    assert not decoding_runtime(model).static_caches
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, recycle_mode="verify",
                            num_draft_tokens=2)
    assert torch.equal(output, plain(model, input_ids, attention_mask, max_new_tokens=8))
    assert list(decoding_runtime(model).static_caches) == list(caches)


# --------------------------------------------------------------------------------------------------- compiled
def compile_config(backend="inductor"):
    config = CompileConfig(backend=backend)
    config._compile_all_devices = True  # transformers' own switch for compiling on the CPU
    return config


def test_one_compiled_graph_for_every_step_and_for_prompts_within_a_bucket():
    torch._dynamo.reset()
    model = tiny_recycle_model("llama")
    counter = CompileCounter()
    for seed, lengths in ((1, [9, 2, 6]), (2, [3, 7, 5])):
        input_ids, attention_mask = left_padded_batch(lengths, seed=seed)
        expected = plain(model, input_ids, attention_mask, max_new_tokens=12)
        output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                                recycle_mode="verify", num_draft_tokens=2, compile_config=compile_config(counter),
                                return_dict_in_generate=True)
        assert output.recycle_stats["base_forwards"] > 3
        assert torch.equal(output.sequences, expected)
    assert counter.frame_count == 1  # one graph, traced once, used by every step of both calls
    torch._dynamo.reset()


def test_inductor_compiled_step_equals_plain_greedy():
    torch._dynamo.reset()
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 3], seed=11)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=10)
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
                            recycle_mode="verify", num_draft_tokens=2, compile_config=compile_config(),
                            return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected)
    assert output.recycle_stats["compile_seconds"] > 0
    torch._dynamo.reset()


@pytest.mark.parametrize("settings", [
    dict(recycle_mode="alternate", do_sample=False),
    dict(recycle_mode="verify", num_draft_tokens=3, do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
])
def test_alternate_and_sampling_steps_trace_whole_and_equal_the_eager_fast_path(settings):
    """The other kinds of step also trace as one whole graph (fullgraph=True would raise otherwise): the alternating
    schedule, and sampling with warpers (the exponential race, the speculative rule). Run eagerly from the traced
    graph, they give the eager step's tokens, random draws included."""
    torch._dynamo.reset()
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 3, 5], seed=12)
    counter = CompileCounter()
    sequences = []
    for config in (None, compile_config(counter)):
        torch.manual_seed(0)
        output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, compile_config=config,
                                return_dict_in_generate=True, **settings)
        assert output.recycle_stats["decoding_path"] == "static"
        sequences.append(output.sequences)
    assert torch.equal(sequences[0], sequences[1])
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_no_compilation_on_the_cpu_unless_asked_for_as_transformers_is_asked():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([5], seed=1)
    plain_config = CompileConfig()  # without _compile_all_devices: transformers would not compile on the CPU
    for kwargs in ({}, dict(cache_implementation="static"), dict(compile_config=plain_config)):
        output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, recycle_mode="verify",
                                num_draft_tokens=2, return_dict_in_generate=True, **kwargs)
        assert output.recycle_stats["compile_seconds"] == 0


# ------------------------------------------------------------------------------------------ num_draft_tokens
def test_expected_tokens_and_the_choice_of_k():
    assert DraftShape.chain(2).expected_tokens([[0.5], [0.5]]) == 1.75
    costs = {1: 1.2, 2: 1.4, 3: 1.6}
    rounds = {k: [cost * (1 + 0.01 * i) for i in range(9)] for k, cost in costs.items()}
    plain_rounds = [1.0 * (1 + 0.01 * i) for i in range(9)]

    def choice(acceptance):
        by_depth = [[acceptance[min(depth, len(acceptance) - 1)]] for depth in range(3)]
        expected = {k: DraftShape.chain(k).expected_tokens(by_depth) for k in costs}
        return decide_draft_shape(expected, rounds, plain_rounds).shape

    assert choice([0.0]) == 0
    assert choice([1.0]) == 3
    assert choice([0.9, 0.2, 0.1]) == 1


def oracle_model(agrees):
    """A model whose LM head is zero: base and module both predict token 0 everywhere, so every draft is accepted;
    with a draft vocabulary without token 0, no draft ever is. The base is 4 layers of width 512, so that its
    forward, not Python overhead, decides what a step costs (as for real models) even on a loaded machine."""
    torch.manual_seed(3)
    base_config = LlamaConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
                              num_key_value_heads=4, vocab_size=VOCAB_SIZE, pad_token_id=PAD, eos_token_id=None,
                              bos_token_id=None, max_position_embeddings=512)
    model = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=base_config)).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    if not agrees:
        model.set_draft_vocabulary(torch.arange(1, 40))
    return model


@pytest.mark.parametrize("agrees", [True, False])
def test_auto_draft_length_measures_acceptance_and_is_kept(agrees, monkeypatch, tmp_path):
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(tmp_path / "draft_lengths.json"))
    model = oracle_model(agrees)
    input_ids, attention_mask = left_padded_batch([6, 4], seed=2)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=8)
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, recycle_mode="verify",
                            return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected)
    choices = draft_length_choices(model)
    (measurement,) = choices.measured.values()
    decision = decide_draft_shape(measurement.expected_tokens, measurement.step_seconds, measurement.plain_seconds)
    assert decision == measurement.decision
    assert measurement.choice == measurement.candidates.get(decision.shape, DraftShape.chain(0))
    assert output.recycle_stats["num_draft_tokens_source"].startswith("auto, ")
    if agrees:
        assert measurement.acceptance == [1.0] * MAX_AUTO_DRAFT_TOKENS
        # Every draft is accepted, so the counts follow from the chosen shape alone. Which shape the timings choose
        # is not asserted here (it moves with the machine's load): the rule is tested with injected timings in
        # test_auto_decision.py.
        k = measurement.choice.num_nodes
        assert measurement.choice == DraftShape.chain(k) and output.recycle_stats["num_draft_tokens"] == k
        forwards = 1 + math.ceil(7 / (k + 1)) if k else 8  # the prefill's token, then k + 1 tokens a step
        assert output.recycle_stats["tokens_per_base_forward"] == pytest.approx(8 / forwards)
    else:
        # Nothing is ever accepted: a step yields one token, so only a step cheaper than a plain token (possible on
        # a tiny model, where `generate`'s own overhead dominates) may be chosen over plain decoding.
        assert measurement.acceptance == [0.0] * MAX_AUTO_DRAFT_TOKENS
        if measurement.choice.num_nodes == 0:
            assert output.recycle_stats["decoding_path"] == "plain"  # k = 0: the base's own generate ran
            assert output.recycle_stats["num_draft_tokens"] == 0
        else:
            assert decision.decided and decision.speedup.low > 1
            assert output.recycle_stats["num_draft_tokens"] == measurement.choice.setting
    # Kept when decided: neither a later call in this process nor a new process (only the file remembers) measures
    # again. A provisional choice is measured again by the next call.
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, recycle_mode="verify")
    (latest,) = choices.measured.values()
    assert (latest is measurement) == decision.decided
    decoding_runtime(model).draft_choices = None  # as a new process starts: only the file remembers
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, recycle_mode="verify")
    assert len(draft_length_choices(model).measured) == (0 if decision.decided else 1)
    assert (tmp_path / "draft_lengths.json").is_file()


def test_num_draft_tokens_is_validated():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([4])
    for bad in (True, False, -1, 17, 2.0, "three", None.__class__):
        with pytest.raises(ValueError, match=r"must be 'auto' or an integer from 0 \(plain decoding\) to 16"):
            model.generate(input_ids, max_new_tokens=3, recycle_mode="verify", num_draft_tokens=bad)
