"""How num_draft_tokens="auto" decides (draft_choice_recyclegpt) and keeps its choices (draft_length_recyclegpt), fed
injected timings: noisy, drifting and contended sequences. No test here times anything."""

import json
import random

import pytest

from recycle_hf.checkpoint_code import draft_length_recyclegpt as draft_length
from recycle_hf.checkpoint_code.draft_choice_recyclegpt import (
    DraftShapeDecision,
    PairedRatio,
    decide_draft_shape,
    paired_ratio,
)
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape

from conftest import left_padded_batch, tiny_recycle_model


ROUNDS = 9
# Expected tokens per step of three candidates, simplest first.
EXPECTED = {1: 1.5, 2: 1.7, "tree4": 2.0}


def rounds(step_costs, plain_cost=1.0, load=lambda i: 1.0, noise=0.0, seed=0):
    """Step seconds per candidate and plain seconds per token, `ROUNDS` rounds; `load(i)` scales round i (drift,
    contention), `noise` adds independent jitter to every sample."""
    generator = random.Random(seed)

    def sample(cost, i):
        return cost * load(i) * (1 + noise * generator.random())

    steps = {shape: [sample(cost, i) for i in range(ROUNDS)] for shape, cost in step_costs.items()}
    return steps, [sample(plain_cost, i) for i in range(ROUNDS)]


def decide(step_costs, **kwargs):
    return decide_draft_shape(EXPECTED, *rounds(step_costs, **kwargs))


def test_paired_ratio_is_the_median_of_per_round_ratios_with_a_notch_interval():
    ratio = paired_ratio([2, 4, 6, 8, 100], [1, 2, 3, 4, 5])  # ratios 2, 2, 2, 2, 20
    assert ratio.median == 2 and ratio.low == ratio.high == 2  # one interfered round moves neither
    spread = paired_ratio([1.0, 1.1, 1.2, 1.3], [1, 1, 1, 1])
    assert spread.low < spread.median < spread.high
    assert PairedRatio(0.5, 0.4, 0.625, 4).inverted() == PairedRatio(2.0, 1.6, 2.5, 4)


def test_a_quiet_machine_takes_the_fastest_shape_per_token():
    # Per token: k=1 0.8/1.5 = 0.533, k=2 0.9/1.7 = 0.529, tree4 1.2/2.0 = 0.6: k=2 is less than MIN_ADVANTAGE faster.
    decision = decide({1: 0.8, 2: 0.9, "tree4": 1.2})
    assert decision.decided and decision.shape == 1
    assert decision.speedup.median == pytest.approx(1.5 / 0.8)
    assert decide({1: 0.8, 2: 0.8, "tree4": 0.9}).shape == "tree4"  # 0.45 per token against 0.53


def test_drift_and_contention_that_hit_whole_rounds_change_nothing():
    costs = {1: 0.8, 2: 0.9, "tree4": 1.2}
    drifting = decide(costs, load=lambda i: 1 + 0.15 * i)  # the machine slows down 2.2x over the calibration
    contended = decide(costs, load=lambda i: 3.0 if i % 3 == 0 else 1.0)  # another process takes a core at times
    quiet = decide(costs)
    for decision in (drifting, contended):
        assert (decision.shape, decision.decided) == (quiet.shape, quiet.decided) == (1, True)
        assert decision.speedup.median == pytest.approx(quiet.speedup.median)


def test_noise_that_hides_the_difference_keeps_the_simpler_shape():
    # k=2 is 4% faster per token than k=1, inside 30% jitter per sample: the simpler shape stays.
    noisy = decide({1: 0.8, 2: 0.82, "tree4": 5.0}, noise=0.3, seed=3)
    assert noisy.decided and noisy.shape == 1


def test_plain_decoding_only_when_it_is_faster_beyond_the_noise():
    slow = decide({1: 2.0, 2: 2.3, "tree4": 3.0})  # 1.33 s per token against plain's 1.0
    assert slow.decided and slow.shape == 0 and slow.speedup.high < 1
    assert "plain decoding is faster" in slow.reason


def test_an_undecidable_calibration_falls_back_to_plain_decoding_provisionally():
    # k=1 costs what a plain token costs, and half the rounds favour each side by 30%: nothing can be decided.
    steps, plain_seconds = rounds({1: 1.5, 2: 1.9, "tree4": 2.5})
    plain_seconds = [seconds * (0.7 if i % 2 else 1.3) for i, seconds in enumerate(plain_seconds)]
    undecided = decide_draft_shape(EXPECTED, steps, plain_seconds)
    assert not undecided.decided and undecided.shape == 0
    assert undecided.speedup.low < 1 < undecided.speedup.high
    assert undecided.reason.startswith("undecided")


def test_contended_sequences_of_every_seed_never_choose_a_slower_shape():
    """Randomly contended rounds (a busy core in a third of them, 10% jitter): the true speed-up is 1.25x, and no
    seed ever chooses plain decoding or a shape that is slower per token."""
    for seed in range(40):
        generator = random.Random(seed)
        loads = [generator.choice([1.0, 1.0, 2.5]) for _ in range(ROUNDS)]
        decision = decide({1: 1.2, 2: 1.6, "tree4": 2.0}, load=lambda i: loads[i], noise=0.1, seed=seed)
        assert decision.shape == 1, seed
        assert decision.decided and decision.speedup.low > 1, seed


# ------------------------------------------------------------------------------------- keeping and re-measuring
def fake_measurement(shape, decided):
    speedup = PairedRatio(1.3, 1.2, 1.4, ROUNDS) if decided else PairedRatio(1.02, 0.9, 1.1, ROUNDS)
    decision = DraftShapeDecision(shape if decided else 0, decided, speedup, "injected")
    candidates = {1: DraftShape.chain(1)}
    return draft_length.DraftLengthMeasurement([[0.5]], candidates, {1: 1.5}, {1: [1.0] * ROUNDS}, [1.0] * ROUNDS,
                                               decision, DraftShape.chain(decision.shape), 0.5, 1.0)


@pytest.fixture
def choice_file(tmp_path, monkeypatch):
    path = tmp_path / "draft_lengths.json"
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(path))
    return path


def test_a_decided_choice_is_kept_with_what_it_was_measured_under(choice_file):
    choices, calls = draft_length.DraftLengthChoices(), []

    def measure():
        calls.append(1)
        return fake_measurement(2, decided=True)

    first = choices.resolve("key", 4, measure)
    assert first.value == DraftShape.chain(2) and first.source.startswith("measured in this process")
    record = json.loads(choice_file.read_text())["key"]
    assert record["choice"] == 2 and record["decided"] is True and record["batch_size"] == 4
    assert record["speedup"] == [1.3, 1.2, 1.4] and record["load"] == 0.5
    assert record["method"] == draft_length.CALIBRATION_METHOD and "threads" in record["machine"]
    assert record["measured"].endswith("Z")
    assert choices.resolve("key", 4, measure) == first
    again = draft_length.DraftLengthChoices().resolve("key", 4, measure)  # as a new process: the file remembers
    assert again.value == DraftShape.chain(2)
    assert again.source.startswith(f"stored in {choice_file}") and "1.30x" in again.source
    assert len(calls) == 1


def test_a_provisional_choice_is_not_final_and_is_measured_again(choice_file):
    choices, outcomes = draft_length.DraftLengthChoices(), []

    def measure():
        outcomes.append(len(outcomes) >= 1)  # undecided first, decided (k=3) after that
        return fake_measurement(3, decided=outcomes[-1])

    first = choices.resolve("key", 1, measure)
    assert first.value == DraftShape.chain(0) and first.source.startswith("provisional")
    assert json.loads(choice_file.read_text())["key"]["decided"] is False
    second = choices.resolve("key", 1, measure)  # the next call measures again, and now decides
    assert second.value == DraftShape.chain(3) and len(outcomes) == 2
    assert json.loads(choice_file.read_text())["key"]["decided"] is True
    assert choices.resolve("key", 1, measure) == second and len(outcomes) == 2


def test_a_stored_provisional_choice_is_measured_again_by_a_new_process(choice_file):
    draft_length.write_choice(choice_file, "key", {"choice": 0, "decided": False})
    calls = []
    resolved = draft_length.DraftLengthChoices().resolve(
        "key", 1, lambda: calls.append(1) or fake_measurement(1, decided=True))
    assert resolved.value == DraftShape.chain(1) and calls == [1]


def test_a_machine_that_stays_undecided_stops_paying_for_calibrations(choice_file):
    choices, calls = draft_length.DraftLengthChoices(), []
    for _ in range(draft_length.MAX_PROVISIONAL_CALIBRATIONS + 3):
        resolved = choices.resolve("key", 1, lambda: calls.append(1) or fake_measurement(1, decided=False))
        assert resolved.value == DraftShape.chain(0)
    assert len(calls) == draft_length.MAX_PROVISIONAL_CALIBRATIONS


def test_stored_choices_list_every_valid_entry(choice_file):
    draft_length.write_choice(choice_file, "a", 3)  # a bare shape (an older file, or written by hand): decided
    draft_length.write_choice(choice_file, "b", {"choice": [[0], [1]], "decided": False, "measured": "then"})
    stored = draft_length.stored_choices(choice_file)
    assert stored["a"].value == DraftShape.chain(3) and stored["a"].decided
    assert stored["b"].value == DraftShape.of([[0], [1]]) and not stored["b"].decided


def test_a_real_calibration_records_its_rounds_and_decides_from_them(choice_file):
    """The whole path on a tiny model: counted acceptance, paired rounds, the decision recomputed from the rounds."""
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([5, 3])
    measurement = draft_length.measure_draft_length(model, input_ids, attention_mask)
    assert all(len(samples) == draft_length.TIMED_ROUNDS for samples in measurement.step_seconds.values())
    assert len(measurement.plain_seconds) == draft_length.TIMED_ROUNDS
    assert list(measurement.candidates)[:5] == [1, 2, 3, 4, 5]  # chains first, simplest first
    assert measurement.decision == decide_draft_shape(measurement.expected_tokens, measurement.step_seconds,
                                                      measurement.plain_seconds)
