"""Few-row products (few_row_products_recyclegpt): F.linear over 2-64 rows of a large CPU weight as (W @ x^T)^T,
by a fixed rule that never depends on timing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recycle_hf import few_row_products_recyclegpt as few_rows


# Above the size worth swapping (8192 x 576, a draft-vocabulary head), and below it.
BIG_SHAPE, SMALL_SHAPE = (8192, 576), (64, 32)


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


@pytest.mark.parametrize(
    "shape, num_rows, grad",
    [(BIG_SHAPE, 1, False), (BIG_SHAPE, 65, False), (BIG_SHAPE, 4, True), (SMALL_SHAPE, 4, False)],
)
def test_project_rows_is_linear_itself_where_the_swap_cannot_pay(shape, num_rows, grad):
    """One row, many rows (a prompt), training, and small weights: nn.Linear's own product."""
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
