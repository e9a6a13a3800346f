"""Tree verify on the fast path: token for token plain greedy decoding, the longest agreeing path accepted (also
through second-ranked branches), EOS and budgets inside a branch, one compiled graph, trees in `auto`, clear errors."""

import json

import pytest
import torch
from test_static_generation import FAMILIES, compile_config, oracle_model, plain
from torch._dynamo.testing import CompileCounter
from transformers import LogitsProcessorList, StoppingCriteriaList

from recycle_hf.checkpoint_code.draft_choice_recyclegpt import decide_draft_shape
from recycle_hf.checkpoint_code.draft_length_recyclegpt import (
    acceptance_by_rank,
    calibration_file,
    calibration_key,
    draft_length_choices,
)
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape, best_draft_tree, spine_tree
from recycle_hf.checkpoint_code.runtime_recyclegpt import decoding_runtime
from recycle_hf.checkpoint_code.static_generation_recyclegpt import DecodingSettings, StaticRecycleDecoder
from recycle_hf.checkpoint_code.tree_generation_recyclegpt import StaticTreeDecoder

from conftest import PAD, VOCAB_SIZE, left_padded_batch, tiny_recycle_model


TREES = [
    [[0], [1], [0, 0]],
    [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]],
    [[1], [1, 1], [1, 1, 1], [0], [0, 2]],
    [[3], [3, 2]],  # no rank-0 candidate at all
]


def tree_generate(model, input_ids, attention_mask, tree, **kwargs):
    output = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, recycle_mode="verify",
                            num_draft_tokens=tree, return_dict_in_generate=True, **kwargs)
    return output


@pytest.mark.parametrize("family", FAMILIES)
def test_tree_verify_equals_plain_greedy(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([9, 2, 6], seed=1)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=12)
    for tree in TREES:
        output = tree_generate(model, input_ids, attention_mask, tree, max_new_tokens=12)
        assert output.recycle_stats["decoding_path"] == "static"
        assert output.recycle_stats["num_draft_tokens"] == DraftShape.from_paths(tree).setting
        assert torch.equal(output.sequences, expected), tree


def decoder_settings(draft_shape, max_new_tokens=12):
    return DecodingSettings(mode="verify", draft_shape=DraftShape.of(draft_shape), do_sample=False,
                            logits_processor=LogitsProcessorList(), stopping_criteria=StoppingCriteriaList(),
                            streamer=None, pad_token_id=PAD, max_new_tokens=max_new_tokens)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_chain_run_as_a_tree_is_the_chain_step_for_step(family):
    """The tree step over a chain-shaped tree drafts, accepts and emits exactly what the chain step does."""
    model = oracle_model(agrees=True) if family == "llama" else tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([7, 3, 5], seed=2)
    eos = torch.tensor([1])
    chain = StaticRecycleDecoder(model, input_ids, attention_mask, decoder_settings(3), eos)
    tree = StaticTreeDecoder(model, input_ids, attention_mask, decoder_settings(DraftShape.chain(3)), eos)
    chain_sequences, chain_stats = chain.run()
    tree_sequences, tree_stats = tree.run()
    assert torch.equal(tree_sequences, chain_sequences)
    assert torch.equal(tree_sequences, plain(model, input_ids, attention_mask, max_new_tokens=12, eos_token_id=1))
    for name in ("base_forwards", "accepted_drafts", "tokens_per_row", "recycle_forwards"):
        assert tree_stats[name] == chain_stats[name], name
    if family == "llama":
        assert chain_stats["tokens_per_base_forward"] >= 3  # every draft accepted: the test covers acceptance


def oracle_drafts(expected_new_tokens, right_rank):
    """A `draft_nodes` that knows plain decoding's continuation: the nodes whose ranks all equal `right_rank` carry
    the true tokens, every other node a wrong one (`right_rank=None`: every node wrong)."""

    def draft_nodes(decoder, state):
        paths = decoder.tree.paths
        depths = torch.tensor([len(path) for path in paths])
        right = torch.tensor([all(rank == right_rank for rank in path) for path in paths])
        index = (state.new_counts - 1).unsqueeze(1) + depths
        true = expected_new_tokens.gather(1, index.clamp(max=expected_new_tokens.shape[1] - 1))
        return torch.where(right, true, (true + 1) % VOCAB_SIZE)

    return draft_nodes


SECOND_BRANCH_TREE = [[0], [1], [0, 0], [1, 0], [1, 1], [1, 1, 0], [1, 1, 1], [2]]


def test_the_longest_agreeing_path_is_accepted_through_the_second_branch(monkeypatch):
    model = tiny_recycle_model("qwen2")
    input_ids, attention_mask = left_padded_batch([8, 3, 6], seed=5)
    width = input_ids.shape[1]
    free = plain(model, input_ids, attention_mask, max_new_tokens=20, eos_token_id=None)[:, width:]
    monkeypatch.setattr(StaticTreeDecoder, "draft_nodes", oracle_drafts(free, right_rank=1))
    output = tree_generate(model, input_ids, attention_mask, SECOND_BRANCH_TREE, max_new_tokens=13,
                           eos_token_id=None)
    assert torch.equal(output.sequences, plain(model, input_ids, attention_mask, max_new_tokens=13,
                                               eos_token_id=None))
    # The prefill's token, then 3 drafts + the base's token per step: 13 tokens in 1 + 3 steps.
    assert output.recycle_stats["base_forwards"] == 4
    assert output.recycle_stats["accepted_drafts"] == 3 * 3 * 3


def test_a_tree_whose_every_node_is_rejected_still_equals_plain(monkeypatch):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([8, 3, 6], seed=5)
    width = input_ids.shape[1]
    free = plain(model, input_ids, attention_mask, max_new_tokens=20, eos_token_id=None)[:, width:]
    monkeypatch.setattr(StaticTreeDecoder, "draft_nodes", oracle_drafts(free, right_rank=None))
    output = tree_generate(model, input_ids, attention_mask, SECOND_BRANCH_TREE, max_new_tokens=9)
    assert torch.equal(output.sequences, plain(model, input_ids, attention_mask, max_new_tokens=9))
    assert output.recycle_stats["accepted_drafts"] == 0
    assert output.recycle_stats["tokens_per_base_forward"] == 1.0


def test_real_drafting_follows_a_second_ranked_branch():
    """Base and module states made constant (final norms with zero weight and a bias): the base always chooses
    token A, the module ranks token B first and A second. A chain accepts nothing; the tree's all-second path
    everything, drafted by the module's own top-r."""
    model = tiny_recycle_model("gpt2")
    base_norm, module_norm = model.base_lm.transformer.ln_f, model.recycle_module.post_norm
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for norm, direction in ((base_norm, 0), (module_norm, 1)):
            norm.weight.zero_()
            norm.bias.zero_()
            norm.bias[direction] = 1.0
        head.zero_()
        token_a, token_b = 7, 9
        head[token_a, 0] = 1.0  # base state e_0: A scores 1, every other token 0
        head[token_b, 1] = 2.0  # module state e_1: B scores 2, A 1, the rest 0
        head[token_a, 1] = 1.0
    input_ids, attention_mask = left_padded_batch([5, 2, 4], seed=3)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=None)
    assert set(expected[:, input_ids.shape[1]:].flatten().tolist()) == {token_a}
    chain = tree_generate(model, input_ids, attention_mask, 3, max_new_tokens=10, eos_token_id=None)
    tree = tree_generate(model, input_ids, attention_mask, SECOND_BRANCH_TREE, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(chain.sequences, expected) and torch.equal(tree.sequences, expected)
    assert chain.recycle_stats["accepted_drafts"] == 0
    assert tree.recycle_stats["base_forwards"] == 4  # 1 + 3 steps of 3 drafts + 1: 10 tokens


def test_eos_inside_a_branch_and_budgets_ending_inside_one(monkeypatch):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([7, 3, 5], seed=3)
    width = input_ids.shape[1]
    free = plain(model, input_ids, attention_mask, max_new_tokens=24, eos_token_id=None, pad_token_id=PAD)
    monkeypatch.setattr(StaticTreeDecoder, "draft_nodes", oracle_drafts(free[:, width:], right_rank=1))
    tested = 0
    for position in range(1, 10):
        eos = int(free[0, width + position])
        if eos in free[0, width : width + position].tolist():
            continue  # an earlier EOS would end the row first
        tested += 1
        expected = plain(model, input_ids, attention_mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
        output = tree_generate(model, input_ids, attention_mask, SECOND_BRANCH_TREE, max_new_tokens=10,
                               eos_token_id=eos, pad_token_id=PAD)
        assert torch.equal(output.sequences, expected), position
    assert tested >= 5
    for max_new_tokens in range(1, 9):
        expected = plain(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=None)
        output = tree_generate(model, input_ids, attention_mask, SECOND_BRANCH_TREE, max_new_tokens=max_new_tokens,
                               eos_token_id=None)
        assert torch.equal(output.sequences, expected), max_new_tokens


# --------------------------------------------------------------------------------------------------- compiled
def test_the_compiled_tree_step_is_one_graph_for_prompts_within_a_bucket_and_equals_eager():
    torch._dynamo.reset()
    model = tiny_recycle_model("llama")
    counter = CompileCounter()
    tree = TREES[1]
    for seed, lengths in ((1, [9, 2, 6]), (2, [3, 7, 5])):
        input_ids, attention_mask = left_padded_batch(lengths, seed=seed)
        eager = tree_generate(model, input_ids, attention_mask, tree, max_new_tokens=12)
        compiled = tree_generate(model, input_ids, attention_mask, tree, max_new_tokens=12,
                                 compile_config=compile_config(counter))
        assert compiled.recycle_stats["base_forwards"] > 3
        assert torch.equal(compiled.sequences, eager.sequences)
        assert torch.equal(compiled.sequences, plain(model, input_ids, attention_mask, max_new_tokens=12))
    assert counter.frame_count == 1  # one graph, traced once, used by every step of both calls
    torch._dynamo.reset()


def test_inductor_compiled_tree_step_equals_plain_greedy():
    torch._dynamo.reset()
    model = oracle_model(agrees=True)
    input_ids, attention_mask = left_padded_batch([6, 3], seed=11)
    output = tree_generate(model, input_ids, attention_mask, [[0], [1], [0, 0], [0, 1]], max_new_tokens=10,
                           compile_config=compile_config())
    assert torch.equal(output.sequences, plain(model, input_ids, attention_mask, max_new_tokens=10))
    assert output.recycle_stats["compile_seconds"] > 0
    assert output.recycle_stats["tokens_per_base_forward"] > 2
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ shapes and choices
def test_the_best_tree_for_a_budget_takes_the_nodes_of_largest_path_probability():
    by_rank = [[0.6, 0.2, 0.1], [0.5, 0.1, 0.0], [0.4, 0.0, 0.0]]
    assert best_draft_tree(by_rank, 3).setting == [[0], [1], [0, 0]]  # 0.6, 0.2, 0.3 beat 0.12 and 0.1
    five = best_draft_tree(by_rank, 5)
    assert five.setting == [[0], [1], [2], [0, 0], [0, 0, 0]]  # then 0.12 ([0,0,0]) and 0.1 ([2]) over 0.1 ([1,0])
    assert five.expected_tokens(by_rank) == pytest.approx(1 + 0.6 + 0.2 + 0.1 + 0.3 + 0.12)
    assert best_draft_tree([[1.0, 0.0]] * 3, 3).is_chain  # only first choices ever accepted: the best tree is a chain
    assert best_draft_tree([[0.5, 0.0]], 2) is None  # nothing more has a chance
    # Measured from spine-tree paths: of 4 paths at depth 1, ranks 0, 0, 1, none.
    assert acceptance_by_rank([(0, 0), (0, 1), (1,), ()], depth=2, ranks=2) == [[0.5, 0.25], [0.5, 0.5]]
    assert len(spine_tree(5, 4).paths) == 20


def test_auto_chooses_a_tree_only_where_it_is_faster_per_second():
    by_rank = [[0.5, 0.3], [0.5, 0.3]]
    tree = best_draft_tree(by_rank, 3)
    assert not tree.is_chain
    shapes = {1: DraftShape.chain(1), 2: DraftShape.chain(2), "tree3": tree}

    def choice(step_costs, acceptance=by_rank):
        expected = {name: shape.expected_tokens(acceptance) for name, shape in shapes.items()}
        rounds = {name: [cost * (1 + 0.02 * (i % 3)) for i in range(9)] for name, cost in step_costs.items()}
        return decide_draft_shape(expected, rounds, [1.0 * (1 + 0.02 * (i % 3)) for i in range(9)]).shape

    fast_tree = {1: 1.0, 2: 1.2, "tree3": 1.2}
    assert choice(fast_tree) == "tree3"
    assert choice({1: 1.0, 2: 1.2, "tree3": 2.0}) == 1
    assert choice(fast_tree, [[0.0, 0.0]] * 2) == 0


def test_auto_measures_trees_for_greedy_calls_and_chains_only_for_sampling(monkeypatch, tmp_path):
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(tmp_path / "draft_lengths.json"))
    model = oracle_model(agrees=True)
    input_ids, attention_mask = left_padded_batch([6, 4], seed=2)
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, recycle_mode="verify",
                            return_dict_in_generate=True)
    assert torch.equal(greedy.sequences, plain(model, input_ids, attention_mask, max_new_tokens=8))
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, recycle_mode="verify",
                   do_sample=True)
    greedy_measurement, sampling_measurement = draft_length_choices(model).measured.values()
    # Every first choice is right: acceptance by rank is [1, 0, 0, 0] at every depth, so the best trees are chains.
    assert greedy_measurement.acceptance_by_rank == [[1.0, 0.0, 0.0, 0.0]] * 5
    chains = list(range(1, 6))
    assert list(greedy_measurement.candidates) == chains  # no tree beyond the chains
    assert list(sampling_measurement.candidates) == chains
    assert sampling_measurement.choice.is_chain


def test_a_stored_tree_choice_is_decoded_and_an_invalid_one_measured_again(monkeypatch, tmp_path, caplog):
    path = tmp_path / "draft_lengths.json"
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(path))
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 4, 5], seed=2)
    key = calibration_key(model, 3, "verify")
    tree = [[0], [1], [0, 0]]
    path.write_text(json.dumps({key: tree}))
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, recycle_mode="verify",
                            do_sample=False, return_dict_in_generate=True)
    assert output.recycle_stats["num_draft_tokens"] == tree
    assert torch.equal(output.sequences, plain(model, input_ids, attention_mask, max_new_tokens=8))
    assert not draft_length_choices(model).measured
    decoding_runtime(model).draft_choices = None  # as a new process starts: only the file remembers
    path.write_text(json.dumps({key: [[1, 0]]}))  # not a tree: [1, 0] lacks its parent [1]
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, recycle_mode="verify",
                   do_sample=False)
    assert len(draft_length_choices(model).measured) == 1
    assert calibration_file() == path


# ------------------------------------------------------------------------------------------ errors, fallbacks
@pytest.mark.parametrize("bad, message", [
    ([], "must be a list of paths"),
    ([[0], [0]], r"\[0\] is listed twice"),
    ([[1, 0]], r"\[1\] is missing"),
    ([[0], [16]], "ranks must be integers from 0 to 15"),
    ([[0], ["a"]], "ranks must be integers"),
    ([[0], []], "not a non-empty list of ranks"),
    ([[rank] for rank in range(16)] + [[0, rank] for rank in range(16)] + [[1, r] for r in range(16)]
     + [[2, r] for r in range(16)] + [[3, 0]], "at most 64 nodes"),
])
def test_bad_trees_get_a_clear_error(bad, message):
    model = tiny_recycle_model("llama")
    input_ids, _ = left_padded_batch([4])
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids, max_new_tokens=3, recycle_mode="verify", num_draft_tokens=bad)


def test_trees_are_refused_where_they_cannot_run_and_the_reference_loop_drafts_their_chain():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 3, 5], seed=4)
    tree = TREES[1]
    with pytest.raises(ValueError, match="greedy decoding only"):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, recycle_mode="verify",
                       num_draft_tokens=tree, do_sample=True)
    with pytest.raises(ValueError, match="does not apply to recycle_mode='alternate'"):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, recycle_mode="alternate",
                       num_draft_tokens=tree)
    loop = tree_generate(model, input_ids, attention_mask, tree, max_new_tokens=10, cache_implementation="dynamic")
    assert loop.recycle_stats["decoding_path"] == "reference_loop"
    assert torch.equal(loop.sequences, plain(model, input_ids, attention_mask, max_new_tokens=10))
