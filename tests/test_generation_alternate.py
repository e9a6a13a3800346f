"""Alternating recycle decoding (the paper's schedule) inside `generate`, and plain mode equivalence."""

import math

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

import recycle_hf.checkpoint_code.reference_loop_recyclegpt as reference_loop
from recycle_hf import RecycleGPTForCausalLM

from conftest import EOS, PAD, left_padded_batch, tiny_recycle_model


FAMILIES = ["llama", "opt", "opt-350m-style"]


def first_eos_cut(tokens: torch.Tensor) -> int:
    """Number of generated tokens up to and including the first EOS."""
    positions = (tokens == EOS).nonzero()
    return int(positions[0]) + 1 if len(positions) else len(tokens)


def alternate_teacher_forced_argmax(model, sequences, prompt_attention_mask, processors=None):
    """Per new position t: argmax of `logits[t-1]` where the base produced token t, of `recycle_logits[t-1]` where
    the module did, from ONE parallel forward over the final sequences."""
    prompt_length = prompt_attention_mask.shape[1]
    new_mask = torch.ones(sequences.shape[0], sequences.shape[1] - prompt_length, dtype=prompt_attention_mask.dtype)
    attention_mask = torch.cat([prompt_attention_mask, new_mask], dim=1)
    output = model(sequences, attention_mask=attention_mask)
    predictions = []
    for t in range(prompt_length, sequences.shape[1]):
        from_module = (t - prompt_length) % 2 == 1
        scores = (output.recycle_logits if from_module else output.logits)[:, t - 1].float()
        if processors is not None:
            scores = processors(sequences[:, :t], scores)
        predictions.append(scores.argmax(-1))
    return torch.stack(predictions, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_alternate_greedy_equals_teacher_forced_schedule(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 6, 3])
    sequences = model.generate(
        input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=11, do_sample=False
    )
    predicted = alternate_teacher_forced_argmax(model, sequences, attention_mask)
    new_tokens = sequences[:, input_ids.shape[1] :]
    for row in range(3):
        keep = first_eos_cut(new_tokens[row])
        assert torch.equal(new_tokens[row, :keep], predicted[row, :keep]), row
        assert (new_tokens[row, keep:] == PAD).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_padded_row_equals_the_prompt_alone(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 6, 3], seed=3)
    batched = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=10)
    width = input_ids.shape[1]
    for row in range(3):
        start = width - int(attention_mask[row].sum())
        alone = model.generate(input_ids[row : row + 1, start:], recycle_mode="alternate", max_new_tokens=10)
        alone_new = alone[0, width - start :]
        assert torch.equal(batched[row, width : width + len(alone_new)], alone_new)


@pytest.mark.parametrize("family", ["llama", "opt-350m-style"])
def test_plain_mode_equals_the_base_generate(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([7, 4])
    ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=False)
    theirs = model.base_lm.generate(input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=False)
    assert torch.equal(ours, theirs)
    torch.manual_seed(5)
    ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=True, top_k=20)
    torch.manual_seed(5)
    theirs = model.base_lm.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=True, top_k=20
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 4, 5, 6, 9])
def test_base_forwards_formula(max_new_tokens):
    """alternate: base_forwards = ceil(N / 2), recycle_forwards = floor(N / 2) for N new tokens (no early stop)."""
    model = tiny_recycle_model("llama")
    model.generation_config.eos_token_id = None
    input_ids, _ = left_padded_batch([5])
    output = model.generate(
        input_ids, recycle_mode="alternate", max_new_tokens=max_new_tokens, return_dict_in_generate=True,
        eos_token_id=None, pad_token_id=PAD,
    )
    stats = output.recycle_stats
    assert output.sequences.shape[1] == 5 + max_new_tokens
    assert stats["new_tokens"] == max_new_tokens
    assert stats["base_forwards"] == math.ceil(max_new_tokens / 2)
    assert stats["recycle_forwards"] == max_new_tokens // 2


def test_absolute_max_length():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    output = model.generate(input_ids, recycle_mode="alternate", max_length=12, eos_token_id=None, pad_token_id=PAD)
    assert output.shape[1] == 12


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_eos_at_either_position_of_a_pair_ends_the_row(position):
    """Make the token at new position `position` (module: odd, base: even) the EOS; nothing may follow it."""
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 4], seed=11)
    free = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=8,
                          eos_token_id=None, pad_token_id=PAD)
    width = input_ids.shape[1]
    stop_token = int(free[0, width + position])
    stopped = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=8,
                             eos_token_id=stop_token, pad_token_id=PAD)
    for row in range(2):
        expected = free[row, width:]
        hits = (expected == stop_token).nonzero()
        keep = int(hits[0]) + 1 if len(hits) else len(expected)
        got = stopped[row, width:]
        assert torch.equal(got[:keep], expected[:keep])
        assert (got[keep:] == PAD).all()
    assert stopped.shape[1] <= free.shape[1]


def test_several_eos_tokens():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([6], seed=2)
    free = model.generate(input_ids, recycle_mode="alternate", max_new_tokens=8, eos_token_id=None, pad_token_id=PAD)
    stops = [int(free[0, 6 + 3]), int(free[0, 6 + 5])]
    stopped = model.generate(
        input_ids, recycle_mode="alternate", max_new_tokens=8, eos_token_id=stops, pad_token_id=PAD
    )
    first_hit = min(int(i) for i in range(8) if int(free[0, 6 + i]) in stops)
    assert torch.equal(stopped[0], free[0, : 6 + first_hit + 1])


def test_custom_stopping_criteria_are_honoured():
    class StopAfterTokenCount(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 9, dtype=torch.bool)

    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    output = model.generate(input_ids, recycle_mode="alternate", max_new_tokens=10, eos_token_id=None,
                            pad_token_id=PAD, stopping_criteria=[StopAfterTokenCount()])
    assert output.shape[1] == 9


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("mode", ["alternate", "verify"])
def test_streamer_receives_prompt_then_each_token_once_in_order(mode):
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5], seed=4)
    streamer = RecordingStreamer()
    output = model.generate(input_ids, recycle_mode=mode, max_new_tokens=7, streamer=streamer, eos_token_id=None,
                            pad_token_id=PAD)
    assert torch.equal(streamer.chunks[0].reshape(-1), input_ids[0])
    streamed = torch.cat([chunk.reshape(-1) for chunk in streamer.chunks[1:]])
    assert torch.equal(streamed, output[0, 5:])
    assert streamer.ended


def test_sampling_with_top_k_one_is_greedy_and_seeded_sampling_repeats():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([7, 3])
    greedy = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=9)
    top1 = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=9,
                          do_sample=True, top_k=1, temperature=0.7)
    assert torch.equal(greedy, top1)
    runs = []
    for _ in range(2):
        torch.manual_seed(9)
        runs.append(model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate",
                                   max_new_tokens=9, do_sample=True, temperature=1.3, top_p=0.9))
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], greedy)


def test_repetition_penalty_applies_to_module_and_base_tokens():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 6], seed=6)
    sequences = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate", max_new_tokens=10,
                               repetition_penalty=3.0, eos_token_id=None, pad_token_id=PAD)
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(3.0)])
    predicted = alternate_teacher_forced_argmax(model, sequences, attention_mask, processors)
    assert torch.equal(sequences[:, 6:], predicted)
    unpenalised = model.generate(input_ids, attention_mask=attention_mask, recycle_mode="alternate",
                                 max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
    assert not torch.equal(unpenalised, sequences)


def test_recycle_stats_in_dict_output():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5, 5])
    output = model.generate(input_ids, recycle_mode="alternate", max_new_tokens=6, return_dict_in_generate=True,
                            eos_token_id=None, pad_token_id=PAD)
    assert {"base_forwards", "recycle_forwards", "new_tokens"} <= set(output.recycle_stats)
    assert output.recycle_stats["new_tokens"] == 12
    assert output.sequences.shape == (2, 11)


def test_unknown_mode_lists_the_valid_ones():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    with pytest.raises(ValueError, match="Valid modes: None .*'alternate'.*'verify'"):
        model.generate(input_ids, recycle_mode="alternating")


def test_mode_from_generation_config_and_its_json(tmp_path):
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5], seed=8)
    expected = model.generate(input_ids, recycle_mode="alternate", max_new_tokens=6, eos_token_id=None,
                              pad_token_id=PAD)
    config = GenerationConfig(recycle_mode="alternate", max_new_tokens=6, eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(model.generate(input_ids, generation_config=config), expected)
    model.generation_config = config
    model.save_pretrained(tmp_path)
    reloaded = RecycleGPTForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.recycle_mode == "alternate"
    assert torch.equal(reloaded.generate(input_ids), expected)
    plain = reloaded.base_lm.generate(input_ids, max_new_tokens=6, eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(reloaded.generate(input_ids, recycle_mode=None), plain)


def test_unsupported_generate_options_are_refused_in_recycle_modes():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    with pytest.raises(ValueError, match="num_beams=2 is not supported with recycle_mode='alternate'"):
        model.generate(input_ids, recycle_mode="alternate", num_beams=2)


@pytest.mark.parametrize("option, value", [
    ("output_scores", True),
    ("output_logits", True),
    ("output_hidden_states", True),
    ("output_attentions", True),
    ("prompt_lookup_num_tokens", 3),
    ("num_return_sequences", 2),
])
@pytest.mark.parametrize("mode", ["alternate", "verify"])
def test_options_that_recycle_modes_cannot_honour_are_refused_not_ignored(option, value, mode):
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    with pytest.raises(ValueError, match=f"{option}={value!r} is not supported with recycle_mode='{mode}'"):
        model.generate(input_ids, recycle_mode=mode, num_draft_tokens=2 if mode == "verify" else 1, max_new_tokens=3,
                       do_sample=True, return_dict_in_generate=True, **{option: value})


def test_an_empty_prompt_gets_a_clear_error():
    model = tiny_recycle_model("llama")
    for mode in (None, "alternate", "verify"):
        with pytest.raises(ValueError, match="empty prompt: give every row at least one token"):
            model.generate(torch.zeros((2, 0), dtype=torch.long), recycle_mode=mode, max_new_tokens=3)


def test_the_reference_loop_allocates_slots_for_what_it_can_use():
    """At most k + 1 columns per step and at most what every row gains: batch 1 needs about max_new_tokens + 2k."""
    assert reference_loop.slot_columns_needed(1, 20, 16) == 20 + 16 + 16 + 1
    assert reference_loop.slot_columns_needed(4, 20, 1) == 20 * 2 + 1 + 1
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([5, 3], seed=4)
    expected = model.base_lm.generate(input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=False)
    for k in (1, 16):
        ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=9, do_sample=False,
                              recycle_mode="verify", num_draft_tokens=k, cache_implementation="dynamic")
        assert torch.equal(ours, expected)
