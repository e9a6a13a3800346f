"""One value for a draft shape (issue #33, item 5): `DraftShape` is built once where a value enters (`generate`, the
CLI, the lm-eval model (tests/test_eval.py), the file of auto's choices, benchmark records), is hashable, and is
carried as it is; every way of writing one shape gives the same object, and every form decodes the same tokens."""

import argparse
import json

import pytest
import torch
from test_static_generation import plain

from recycle_hf.bench.measurements import _shape_key
from recycle_hf.bench.modes import decoding_modes
from recycle_hf.checkpoint_code import draft_shape_recyclegpt
from recycle_hf.checkpoint_code.draft_length_recyclegpt import fixed_draft_shapes, stored_choices, write_choice
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import (
    AUTO,
    MAX_NUM_DRAFT_TOKENS,
    DraftShape,
    draft_request,
    draft_request_from_text,
)
from recycle_hf.commands import draft_trees_option, num_draft_tokens_list, num_draft_tokens_option

from conftest import left_padded_batch, tiny_recycle_model


TREE = [[0], [1], [0, 0]]


def test_every_way_of_writing_a_shape_is_one_hashable_value():
    chain = DraftShape.chain(3)
    same = [DraftShape.of(3), DraftShape.of([[0], [0, 0], [0, 0, 0]]), DraftShape.of(((0, 0, 0), (0,), (0, 0))),
            DraftShape.parse("3"), DraftShape.parse("[[0], [0, 0], [0, 0, 0]]"), draft_request(3),
            draft_request_from_text("3"), DraftShape.of(chain)]
    assert all(shape == chain and hash(shape) == hash(chain) for shape in same)
    assert DraftShape.of(chain) is chain
    assert len({*same, chain}) == 1
    tree = DraftShape.of(TREE)
    assert tree == DraftShape.of([[0, 0], [1], [0]]) == DraftShape.parse(json.dumps(TREE)) and tree != chain
    assert {chain: "a", tree: "b"}[DraftShape.of([[1], [0], [0, 0]])] == "b"


def test_the_setting_round_trips_through_json_and_text():
    for shape in (DraftShape.chain(0), DraftShape.chain(1), DraftShape.chain(5), DraftShape.of(TREE),
                  DraftShape.of([[3], [3, 2]])):
        assert DraftShape.of(json.loads(json.dumps(shape.setting))) == shape
        assert DraftShape.parse(str(shape)) == shape
    assert DraftShape.chain(4).setting == 4 and DraftShape.of(TREE).setting == TREE
    plain_shape = DraftShape.chain(0)
    assert (plain_shape.num_nodes, plain_shape.depth, plain_shape.is_chain, plain_shape.setting) == (0, 0, True, 0)


def test_auto_is_a_request_not_a_shape():
    assert draft_request("auto") == AUTO and draft_request_from_text(" auto ") == AUTO
    with pytest.raises(ValueError, match="auto is a mode of its own"):
        fixed_draft_shapes([1, "auto"])
    assert fixed_draft_shapes([1, TREE]) == (DraftShape.chain(1), DraftShape.of(TREE))


@pytest.mark.parametrize("value, message", [
    (True, "an integer from 0"), (-1, "an integer from 0"), (MAX_NUM_DRAFT_TOKENS + 1, "an integer from 0"),
    ("3", "an integer from 0"), (2.0, "an integer from 0"), ([[1, 0]], r"path \[1\] is missing"),
    ([[0], [0]], "listed twice"), ([], "A draft tree must be"),
])
def test_bad_values_are_refused_with_what_is_expected(value, message):
    with pytest.raises(ValueError, match=message):
        draft_request(value)


@pytest.mark.parametrize("text, message", [("three", "an integer from 0"), ("[[0],", "must be JSON"),
                                           ("1.5", "an integer from 0"), ("true", "an integer from 0")])
def test_bad_text_is_refused_with_what_is_expected(text, message):
    with pytest.raises(ValueError, match=message):
        draft_request_from_text(text)


def test_generate_checks_a_tree_once_and_every_form_decodes_the_same_tokens(monkeypatch):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 3], seed=4)
    expected = plain(model, input_ids, attention_mask, max_new_tokens=10)
    checks = []
    real_check = draft_shape_recyclegpt.check_tree_paths
    monkeypatch.setattr(draft_shape_recyclegpt, "check_tree_paths", lambda paths: checks.append(1) or real_check(paths))

    def decode(value):
        checks.clear()
        output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
                                recycle_mode="verify", num_draft_tokens=value, return_dict_in_generate=True)
        assert torch.equal(output.sequences, expected), value
        return output.recycle_stats, len(checks)

    tree_stats, tree_checks = decode(TREE)
    assert tree_checks == 1 and tree_stats["num_draft_tokens"] == TREE  # the user's form, as JSON keeps it
    shape_stats, shape_checks = decode(DraftShape.of(TREE))
    assert shape_checks == 0
    assert shape_stats.num_draft_tokens == TREE and shape_stats.new_tokens == tree_stats.new_tokens
    assert shape_stats.base_forwards == tree_stats.base_forwards
    for value in (2, [[0], [0, 0]], DraftShape.chain(2)):
        stats, _ = decode(value)
        assert stats["num_draft_tokens"] == 2  # a chain-shaped tree is the chain


def test_the_command_line_builds_shapes_once():
    assert num_draft_tokens_option("auto") == AUTO
    assert num_draft_tokens_option("[[0], [1], [0, 0]]") == DraftShape.of(TREE)
    assert num_draft_tokens_list("1, 3") == (DraftShape.chain(1), DraftShape.chain(3))
    assert draft_trees_option(json.dumps([TREE, [[0], [1]]])) == (DraftShape.of(TREE), DraftShape.of([[0], [1]]))
    with pytest.raises(argparse.ArgumentTypeError, match="listed twice"):
        draft_trees_option("[[[0], [0]]]")
    with pytest.raises(argparse.ArgumentTypeError, match="auto is a mode of its own"):
        num_draft_tokens_list("2,auto")


def test_benchmark_modes_and_records_key_by_the_shape():
    modes = {mode.name: mode for mode in decoding_modes((1, 2), False, draft_trees=(TREE,))}
    assert modes["verify_k2"].num_draft_tokens == DraftShape.chain(2)
    assert modes["verify_tree3"].num_draft_tokens == DraftShape.of(TREE)
    assert modes["verify_tree3"].num_draft_tokens_setting == TREE and modes["verify_auto"].num_draft_tokens == AUTO
    assert _shape_key(TREE) == DraftShape.of(TREE) and _shape_key(2) == DraftShape.chain(2)
    assert _shape_key("auto") == AUTO


def test_stored_choices_are_shapes(tmp_path):
    path = tmp_path / "choices.json"
    write_choice(path, "tree", {"choice": [[0, 0], [0], [1]], "decided": True})
    write_choice(path, "chain", 3)
    choices = stored_choices(path)
    assert choices["tree"].value == DraftShape.of(TREE) and choices["chain"].value == DraftShape.chain(3)

