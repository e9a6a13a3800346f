"""Lossless verify mode: the module drafts, the base checks; output identical to plain decoding."""

import itertools

import pytest
import torch

import recycle_hf.checkpoint_code.reference_loop_recyclegpt as reference_loop
import recycle_hf.checkpoint_code.static_generation_recyclegpt as static_generation
from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.reference_loop_recyclegpt import ModuleDrafter

from conftest import PAD, left_padded_batch, tiny_base_config, tiny_recycle_model


FAMILIES = ["llama", "opt", "opt-350m-style"]


def plain_greedy(model, input_ids, attention_mask, max_new_tokens, **kwargs):
    return model.base_lm.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_draft_tokens", [1, 2, 4])
def test_greedy_verify_equals_plain_greedy_with_mixed_padding(family, num_draft_tokens):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 2, 6, 4], seed=1)
    expected = plain_greedy(model, input_ids, attention_mask, 12)
    ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False,
                          recycle_mode="verify", num_draft_tokens=num_draft_tokens)
    assert torch.equal(ours, expected)


class OracleDrafter(ModuleDrafter):
    """A drafter that replaces the module's drafts by the true plain-greedy continuation for a row- and
    step-dependent number of tokens, then wrong tokens: exercises acceptance, ragged rows, masked holes and both
    rollbacks on the real loop (the module still runs and fills its cache; only the tokens it proposes change)."""

    def __init__(self, plain_sequences, prompt_length, vocab_size):
        self.plain, self.prompt_length, self.vocab_size = plain_sequences, prompt_length, vocab_size
        self.step = 0

    def draft(self, decoder, num_drafts):
        tokens, scores, probs = super().draft(decoder, num_drafts)
        tokens = tokens.clone()
        for row, count in enumerate(decoder.rows.new_counts):
            correct = (self.step + 2 * row) % (num_drafts + 1)
            start = self.prompt_length + count
            truth = self.plain[row, start : start + num_drafts]
            if len(truth) < num_drafts:
                continue
            tokens[row] = torch.where(torch.arange(num_drafts) < correct, truth, (truth + 1) % self.vocab_size)
        self.step += 1
        return tokens, scores, probs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_draft_tokens", [2, 3])
def test_verify_with_partly_correct_drafts_equals_plain_and_accepts(family, num_draft_tokens):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 2, 6, 4], seed=2)
    expected = plain_greedy(model, input_ids, attention_mask, 16, eos_token_id=None, pad_token_id=PAD)
    oracle = OracleDrafter(expected, input_ids.shape[1], model.config.base_config.vocab_size)
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=16, do_sample=False,
                            recycle_mode="verify", num_draft_tokens=num_draft_tokens, return_dict_in_generate=True,
                            eos_token_id=None, pad_token_id=PAD, recycle_drafter=oracle)
    assert torch.equal(output.sequences, expected)
    stats = output.recycle_stats
    assert stats["accepted_drafts"] > 0.25 * stats["drafted_tokens"]
    assert stats["base_forwards"] < 16
    assert stats["tokens_per_row"] == [16, 16, 16, 16]


def test_rows_accept_independently_and_are_not_changed_by_neighbours():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([7, 3, 5], seed=5)
    expected = plain_greedy(model, input_ids, attention_mask, 14, eos_token_id=None, pad_token_id=PAD)
    oracle = OracleDrafter(expected, input_ids.shape[1], model.config.base_config.vocab_size)
    width = input_ids.shape[1]
    batched = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=14, recycle_mode="verify",
                             num_draft_tokens=3, eos_token_id=None, pad_token_id=PAD, recycle_drafter=oracle)
    for row in range(3):
        start = width - int(attention_mask[row].sum())
        alone = model.generate(input_ids[row : row + 1, start:], max_new_tokens=14, recycle_mode="verify",
                               num_draft_tokens=3, eos_token_id=None, pad_token_id=PAD)
        assert torch.equal(batched[row, width:], alone[0, width - start :])


def test_caches_roll_back_to_the_accepted_sequence():
    """Batch 1. After every step the base cache holds exactly the committed tokens except the newest one; the
    module cache additionally lacks the drafts accepted in that step (it recomputes them from true base states
    at the start of the next step)."""
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([6], seed=7)
    expected = plain_greedy(model, input_ids, None, 12, eos_token_id=None, pad_token_id=PAD)
    checks = []

    class CheckingOracle(OracleDrafter):
        def update(self, decoder, num_drafts, accepted):
            committed = 6 + decoder.rows.new_counts[0]
            checks.append((decoder.base_cache.get_seq_length(), committed - 1,
                           decoder.module_cache.get_seq_length(), committed - 1 - accepted[0], num_drafts,
                           accepted[0]))

    oracle = CheckingOracle(expected, 6, model.config.base_config.vocab_size)
    output = model.generate(input_ids, max_new_tokens=12, recycle_mode="verify", num_draft_tokens=3,
                            eos_token_id=None, pad_token_id=PAD, recycle_drafter=oracle)
    assert torch.equal(output, expected)
    assert any(num_drafts > accepted for *_, num_drafts, accepted in checks), "no step had a rejection"
    for base_length, expected_base, module_length, expected_module, num_drafts, _ in checks:
        assert base_length == expected_base
        if num_drafts > 0:  # a last step without drafts is a plain decoding step that leaves the module alone
            assert module_length == expected_module


def test_verify_with_processors_and_eos_equals_plain():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([8, 3, 5], seed=9)
    settings = dict(max_new_tokens=14, do_sample=False, repetition_penalty=1.8, no_repeat_ngram_size=2,
                    min_new_tokens=3)
    free = model.base_lm.generate(input_ids, attention_mask=attention_mask, eos_token_id=None, pad_token_id=PAD,
                                  **settings)
    eos = int(free[1, input_ids.shape[1] + 4])
    expected = model.base_lm.generate(input_ids, attention_mask=attention_mask, eos_token_id=eos, pad_token_id=PAD,
                                      **settings)
    ours = model.generate(input_ids, attention_mask=attention_mask, eos_token_id=eos, pad_token_id=PAD,
                          recycle_mode="verify", num_draft_tokens=3, **settings)
    assert torch.equal(ours, expected)


def test_tokens_per_base_forward_counts_each_row_only_while_it_generates():
    """A row that stops early must not dilute the rate: the batched count of base forwards per generating row is
    the sum of the rows' own solo counts."""
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([8, 3, 5], seed=9)
    free = plain_greedy(model, input_ids, attention_mask, 14, eos_token_id=None, pad_token_id=PAD)
    eos = int(free[1, input_ids.shape[1] + 2])
    settings = dict(max_new_tokens=14, do_sample=False, recycle_mode="verify", num_draft_tokens=2, eos_token_id=eos,
                    pad_token_id=PAD, return_dict_in_generate=True)
    batched = model.generate(input_ids, attention_mask=attention_mask, **settings).recycle_stats
    width = input_ids.shape[1]
    solo_forwards, solo_tokens = 0, 0
    for row in range(3):
        start = width - int(attention_mask[row].sum())
        solo = model.generate(input_ids[row : row + 1, start:], **settings).recycle_stats
        solo_forwards += solo["base_forwards"]
        solo_tokens += solo["new_tokens"]
    assert min(batched["tokens_per_row"]) < 14  # one row did stop early
    assert batched["row_base_forwards"] == solo_forwards
    assert batched["new_tokens"] == solo_tokens
    assert batched["tokens_per_base_forward"] == solo_tokens / solo_forwards


def test_verify_max_new_tokens_one_and_two():
    model = tiny_recycle_model("opt")
    input_ids, attention_mask = left_padded_batch([5, 3])
    for max_new_tokens in (1, 2):
        expected = plain_greedy(model, input_ids, attention_mask, max_new_tokens, eos_token_id=None,
                                pad_token_id=PAD)
        ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                              recycle_mode="verify", eos_token_id=None, pad_token_id=PAD)
        assert torch.equal(ours, expected)


# ---------------------------------------------------------------------------------------------------- sampling
VOCAB = 8


def peaked_tiny_model(seed):
    """Vocabulary 8 and a scaled-up head, so that base (p) and module (q) distributions are far from uniform
    (entropy about 1 nat) and far from each other (total variation about 0.8): a wrong acceptance rule shows."""
    torch.manual_seed(seed)
    base = tiny_base_config("llama", vocab_size=VOCAB, tie_word_embeddings=False)
    model = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=base)).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(12)
    return model


def exact_joint_distribution(model, prompt, length):
    """Plain sampling's probability of every continuation of `length` tokens (temperature 1, no warpers)."""
    continuations = torch.tensor(list(itertools.product(range(VOCAB), repeat=length)))
    sequences = torch.cat([prompt.expand(len(continuations), -1), continuations], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(sequences, return_recycle_logits=False).logits.float(), dim=-1)
    steps = log_probs[:, prompt.shape[1] - 1 : -1].gather(-1, continuations.unsqueeze(-1)).squeeze(-1)
    return steps.sum(dim=1).exp()


def empirical_joint_distribution(model, prompt, length, samples, **generate_kwargs):
    torch.manual_seed(0)
    output = model.generate(prompt.expand(samples, -1), max_new_tokens=length, do_sample=True, top_k=0,
                            eos_token_id=None, pad_token_id=0, **generate_kwargs)
    codes = torch.zeros(samples, dtype=torch.long)
    for column in output[:, prompt.shape[1] :].T:
        codes = codes * VOCAB + column
    return torch.bincount(codes, minlength=VOCAB**length).float() / samples


TRUE_RULE = static_generation.speculative_acceptance


def always_accept(drafts, draft_probs, target_probs):
    """A deliberately wrong rule: keep every draft (what the lossy alternating mode does)."""
    batch_size, k = drafts.shape
    accepted = torch.full((batch_size,), k, dtype=torch.long)
    bonus = torch.multinomial(target_probs[:, k], 1).squeeze(1)
    return accepted, bonus


def accept_by_inverse_ratio(drafts, draft_probs, target_probs):
    """Another wrong rule: min(1, q/p) instead of min(1, p/q)."""
    swapped_targets = torch.cat([draft_probs, target_probs[:, -1:]], dim=1)
    return TRUE_RULE(drafts, target_probs[:, :-1], swapped_targets)


@pytest.mark.parametrize("path", ["static", "dynamic"])
def test_sampled_verify_output_distribution_equals_plain_sampling(monkeypatch, path):
    """Joint distribution of the first 3 tokens (512 outcomes; k = 2 so both drafts and the bonus token count), on
    the fast path and on the reference loop; a wrong acceptance rule put in either must show."""
    model = peaked_tiny_model(seed=1)
    prompt = torch.tensor([[3, 5, 2, 7]])
    length, samples = 3, 30000
    exact = exact_joint_distribution(model, prompt, length)
    # Both implementations share one rule; each looks it up in its own module, where the test swaps it.
    rule_owner = static_generation if path == "static" else reference_loop

    def total_variation(**kwargs):
        return 0.5 * (empirical_joint_distribution(model, prompt, length, samples, **kwargs) - exact).abs().sum()

    # The bound: plain sampling itself, measured with the same number of samples, plus a margin.
    plain_distance = total_variation()
    bound = 1.5 * plain_distance + 0.02
    verify = dict(recycle_mode="verify", num_draft_tokens=2, cache_implementation=path)
    verify_distance = total_variation(**verify)
    assert verify_distance < bound, (verify_distance, plain_distance)
    for wrong_rule in (always_accept, accept_by_inverse_ratio):
        monkeypatch.setattr(rule_owner, "speculative_acceptance", wrong_rule)
        wrong_distance = total_variation(**verify)
        monkeypatch.undo()
        assert wrong_distance > bound, (wrong_rule.__name__, wrong_distance, bound)


# ------------------------------------------------------------------------------------------- draft vocabulary
def test_draft_vocabulary_restricts_drafts_and_keeps_output_identical(tmp_path):
    model = tiny_recycle_model("llama")
    allowed = torch.tensor([5, 9, 17, 23, 40, 41, 77, 88, 90, 99])
    model.set_draft_vocabulary(allowed)
    seen = []

    class RecordingDrafter(ModuleDrafter):
        def draft(self, decoder, num_drafts):
            tokens, scores, probs = super().draft(decoder, num_drafts)
            seen.append(tokens)
            return tokens, scores, probs

    input_ids, attention_mask = left_padded_batch([8, 3, 6], seed=12)
    expected = plain_greedy(model, input_ids, attention_mask, 10)
    ours = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, recycle_mode="verify",
                          num_draft_tokens=3, recycle_drafter=RecordingDrafter())
    assert torch.equal(ours, expected)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10,
                                      recycle_mode="verify", num_draft_tokens=3), expected)  # the fast path
    assert torch.isin(torch.cat([t.flatten() for t in seen]), allowed).all()

    model.save_pretrained(tmp_path)
    reloaded = RecycleGPTForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.recycle_draft_vocab_size == 10
    assert torch.equal(reloaded.draft_token_ids, allowed)


def test_draft_vocabulary_is_validated():
    model = tiny_recycle_model("llama")
    with pytest.raises(ValueError, match=r"ids in \[0, 101\)"):
        model.set_draft_vocabulary(torch.tensor([3, 101]))
    with pytest.raises(ValueError, match="must not repeat"):
        model.set_draft_vocabulary(torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="recycle_draft_vocab_size"):
        RecycleGPTConfig(base_config=tiny_base_config("llama"), recycle_draft_vocab_size=0)


def test_sampled_verify_with_a_draft_vocabulary_keeps_the_distribution():
    """q is zero outside the draft vocabulary; the residual max(0, p - q) must still restore p exactly."""
    model = peaked_tiny_model(seed=2)
    model.set_draft_vocabulary(torch.tensor([0, 2, 3, 6]))
    prompt = torch.tensor([[4, 1, 6, 2]])
    length, samples = 3, 30000
    exact = exact_joint_distribution(model, prompt, length)
    plain = 0.5 * (empirical_joint_distribution(model, prompt, length, samples) - exact).abs().sum()
    for path in ("static", "dynamic"):
        verify = 0.5 * (empirical_joint_distribution(model, prompt, length, samples, recycle_mode="verify",
                                                     num_draft_tokens=2, cache_implementation=path) - exact).abs().sum()
        assert verify < 1.5 * plain + 0.02, (path, verify, plain)


def test_a_custom_drafter_is_checked_before_decoding():
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([5])
    with pytest.raises(ValueError, match="recycle modes only"):
        model.generate(input_ids, max_new_tokens=3, recycle_drafter=ModuleDrafter())
    with pytest.raises(ValueError, match="not a custom drafter: pass an integer"):
        model.generate(input_ids, max_new_tokens=3, recycle_mode="verify", recycle_drafter=ModuleDrafter())
    with pytest.raises(ValueError, match="object lacks one"):
        model.generate(input_ids, max_new_tokens=3, recycle_mode="verify", num_draft_tokens=2,
                       recycle_drafter=object())
