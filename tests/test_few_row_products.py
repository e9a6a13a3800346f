"""The decoding loop's few-row products (generation_recyclegpt): F.linear over 2-15 rows in the faster of two forms."""

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recycle_hf import generation_recyclegpt as generation


# Above the size worth measuring (8192 x 576, a draft-vocabulary head), and below it.
BIG_SHAPE, SMALL_SHAPE = (8192, 576), (64, 32)


@pytest.fixture(autouse=True)
def fresh_measurements(monkeypatch):
    monkeypatch.setattr(generation, "_swapped_product_is_faster", {})
    monkeypatch.setattr(generation, "_product_trials", {})


def _inputs(num_rows, shape=BIG_SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(*shape, generator=generator)
    bias = torch.randn(shape[0], generator=generator)
    states = torch.randn(1, num_rows, shape[1], generator=generator)
    return states, weight, bias


@pytest.mark.parametrize("swapped_is_faster", [True, False])
@pytest.mark.parametrize("num_rows", [2, 4, 15])
def test_project_rows_equals_linear_whichever_form_was_chosen(swapped_is_faster, num_rows):
    states, weight, bias = _inputs(num_rows, seed=num_rows)
    generation._swapped_product_is_faster[(weight.dtype, tuple(weight.shape), num_rows)] = swapped_is_faster
    with torch.inference_mode():
        output = generation.project_rows(states, weight, bias)
        expected = F.linear(states, weight, bias)
    assert output.shape == expected.shape
    if swapped_is_faster:
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)
    else:
        assert torch.equal(output, expected)


@pytest.mark.parametrize(
    "shape, num_rows, grad",
    [(BIG_SHAPE, 1, False), (BIG_SHAPE, 16, False), (BIG_SHAPE, 4, True), (SMALL_SHAPE, 4, False)],
)
def test_project_rows_is_linear_itself_where_the_swap_cannot_pay(shape, num_rows, grad):
    """One row, 16+ rows (the same kernel either way), training, and small weights: nn.Linear's product, untimed."""
    states, weight, bias = _inputs(num_rows, shape)
    with torch.set_grad_enabled(grad):
        output = generation.project_rows(states, weight, bias)
    assert torch.equal(output, F.linear(states, weight, bias))
    assert generation._swapped_product_is_faster == {} and generation._product_trials == {}


@pytest.mark.parametrize("swapped_cost, plain_cost, expected_choice", [(1.0, 3.0, True), (3.0, 1.0, False)])
def test_first_calls_alternate_the_forms_then_the_faster_is_kept(
    monkeypatch, swapped_cost, plain_cost, expected_choice
):
    clock = [0.0]
    used = []

    def swapped_product(rows, weight):
        clock[0] += swapped_cost
        used.append("swapped")
        return (weight @ rows.T).T

    def linear(rows, weight, bias=None):
        clock[0] += plain_cost
        used.append("plain")
        return F.linear(rows, weight, bias)

    monkeypatch.setattr(generation, "_swapped_product", swapped_product)
    monkeypatch.setattr(generation, "F", types.SimpleNamespace(linear=linear))
    monkeypatch.setattr(generation.time, "perf_counter", lambda: clock[0])
    states, weight, bias = _inputs(3)
    key = (weight.dtype, tuple(weight.shape), 3)
    trials = 2 * generation.TIMED_CALLS_PER_FORM
    with torch.inference_mode():
        outputs = [generation.project_rows(states, weight, bias) for _ in range(trials + 3)]
    assert used[:trials] == ["swapped", "plain"] * generation.TIMED_CALLS_PER_FORM
    assert used[trials:] == ["swapped" if expected_choice else "plain"] * 3
    assert generation._swapped_product_is_faster == {key: expected_choice} and generation._product_trials == {}
    expected = F.linear(states, weight, bias)
    for output in outputs:
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)


def test_few_row_products_route_linear_layers_on_the_cpu_only():
    layer = nn.Linear(*reversed(BIG_SHAPE))
    states = torch.randn(2, 3, BIG_SHAPE[1])
    with torch.inference_mode():
        expected = layer(states)
        with generation.few_row_products(torch.device("cpu")):
            output = layer(states)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)
    assert list(generation._product_trials) == [(torch.float32, BIG_SHAPE, 6)]
    assert isinstance(generation.few_row_products(torch.device("cuda")), type(generation.contextlib.nullcontext()))


def test_few_row_products_accept_linear_called_with_keywords():
    states, weight, bias = _inputs(4)
    with torch.inference_mode(), generation.few_row_products(torch.device("cpu")):
        output = F.linear(input=states, weight=weight, bias=bias)
    torch.testing.assert_close(output, F.linear(states, weight, bias), rtol=1e-5, atol=1e-4)
