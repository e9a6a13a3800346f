"""Few-row products (few_row_products_recyclegpt): F.linear over 2-64 rows of a large CPU weight as (W @ x^T)^T,
by a fixed rule that never depends on timing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recycle_hf import few_row_products_recyclegpt as few_rows


# Above the size worth swapping (8192 x 576, a draft-vocabulary head: tall enough that one row swaps too), a layer's
# weight (large, but one row keeps nn.Linear's product), and below the size worth swapping.
BIG_SHAPE, LAYER_SHAPE, SMALL_SHAPE = (8192, 576), (1536, 576), (64, 32)


def _inputs(num_rows, shape=BIG_SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(*shape, generator=generator)
    bias = torch.randn(shape[0], generator=generator)
    states = torch.randn(1, num_rows, shape[1], generator=generator)
    return states, weight, bias


@pytest.mark.parametrize("num_rows", [2, 4, 15, 16, 64])
def test_project_rows_is_the_swapped_product_and_equals_linear(num_rows):
    states, weight, bias = _inputs(num_rows, seed=num_rows)
    with torch.inference_mode():
        output = few_rows.project_rows(states, weight, bias)
        expected = F.linear(states, weight, bias)
        swapped = ((weight @ states[0].T).T + bias).unsqueeze(0)
    assert output.shape == expected.shape
    # Contiguous, as F.linear's output is: a strided one sends the attention after it to sdpa's slow math kernel.
    assert output.is_contiguous()
    assert torch.equal(output, swapped)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)


def test_one_row_of_a_tall_weight_is_the_swapped_product_of_the_row_twice():
    states, weight, bias = _inputs(1, seed=1)
    with torch.inference_mode():
        output = few_rows.project_rows(states, weight, bias)
        twice = torch.cat([states[0], states[0]])
        swapped = ((weight @ twice.T).T[:1] + bias).unsqueeze(0)
    assert output.shape == (1, 1, BIG_SHAPE[0]) and output.is_contiguous()
    assert torch.equal(output, swapped)
    torch.testing.assert_close(output, F.linear(states, weight, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "shape, num_rows, grad",
    [(LAYER_SHAPE, 1, False), (BIG_SHAPE, 65, False), (BIG_SHAPE, 4, True), (BIG_SHAPE, 1, True),
     (SMALL_SHAPE, 4, False)],
)
def test_project_rows_is_linear_itself_where_the_swap_cannot_pay(shape, num_rows, grad):
    """One row of a layer's weight, many rows (a prompt), training, and small weights: nn.Linear's own product."""
    states, weight, bias = _inputs(num_rows, shape)
    with torch.set_grad_enabled(grad):
        output = few_rows.project_rows(states, weight, bias)
    assert torch.equal(output, F.linear(states, weight, bias))


def test_the_same_inputs_give_the_same_bits_in_every_call():
    states, weight, bias = _inputs(3)
    with torch.inference_mode():
        outputs = [few_rows.project_rows(states, weight, bias) for _ in range(12)]
    assert all(torch.equal(output, outputs[0]) for output in outputs)


def test_few_row_products_route_large_linear_layers_on_the_cpu_only_and_restore_them():
    model = nn.Sequential(nn.Linear(*reversed(BIG_SHAPE)), nn.Linear(SMALL_SHAPE[0], 3))
    big, small = model
    states = torch.randn(2, 3, BIG_SHAPE[1])
    with torch.inference_mode():
        expected = big(states)
        with few_rows.few_row_products(model, torch.device("cpu")):
            assert "forward" in vars(big) and "forward" not in vars(small)
            output = big(states)
        with few_rows.few_row_products(model, torch.device("cuda")):
            assert "forward" not in vars(big)
        assert torch.equal(output, few_rows.project_rows(states, big.weight, big.bias))
    assert "forward" not in vars(big)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_rows", [1, 3, 65])
@pytest.mark.parametrize("shape", [BIG_SHAPE, LAYER_SHAPE])
def test_a_redirected_layer_computes_exactly_what_project_rows_computes(shape, num_rows):
    """The layers' own forward checks less than project_rows (it runs ~200 times per forward): same rule, same bits."""
    layer = nn.Linear(shape[1], shape[0])
    states = torch.randn(1, num_rows, shape[1])
    with torch.inference_mode(), few_rows.few_row_products(layer, torch.device("cpu")):
        assert torch.equal(layer(states), few_rows.project_rows(states, layer.weight, layer.bias))
