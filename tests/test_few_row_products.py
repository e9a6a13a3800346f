"""Few-row products (few_row_products_recyclegpt): F.linear over a few rows of a large CPU weight in the form this
machine computes fastest, measured once per machine (the decision from injected timings), stored, and fixed before
the first output."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recycle_hf.checkpoint_code import few_row_products_recyclegpt as few_rows


# A draft-vocabulary head, a layer's weight, and a weight below the size worth measuring.
BIG_SHAPE, LAYER_SHAPE, SMALL_SHAPE = (8192, 576), (1536, 576), (64, 32)
EVERY_ROW = frozenset(range(1, few_rows.MAX_FEW_ROWS + 1))


def _inputs(num_rows, shape=BIG_SHAPE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(*shape, generator=generator)
    bias = torch.randn(shape[0], generator=generator)
    states = torch.randn(1, num_rows, shape[1], generator=generator)
    return states, weight, bias


@pytest.fixture
def forms_file(tmp_path, monkeypatch):
    """A fresh file of measured forms and nothing resolved in this process; restored afterwards."""
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(tmp_path / "draft_lengths.json"))
    monkeypatch.delenv(few_rows.FORCED_FORMS_VARIABLE, raising=False)
    saved = dict(few_rows._resolved_forms)
    few_rows._resolved_forms.clear()
    yield tmp_path / "product_forms.json"
    few_rows._resolved_forms.clear()
    few_rows._resolved_forms.update(saved)


@pytest.mark.parametrize("num_rows", [2, 4, 15, 16, 64])
def test_the_swapped_form_is_the_swapped_product_and_equals_linear(num_rows):
    states, weight, bias = _inputs(num_rows, seed=num_rows)
    with torch.inference_mode():
        output = few_rows.project_rows(states, weight, bias, EVERY_ROW)
        expected = F.linear(states, weight, bias)
        swapped = ((weight @ states[0].T).T + bias).unsqueeze(0)
    assert output.shape == expected.shape
    # Contiguous, as F.linear's output is: a strided one sends the attention after it to sdpa's slow math kernel.
    assert output.is_contiguous()
    assert torch.equal(output, swapped)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)


def test_one_swapped_row_is_the_swapped_product_of_the_row_twice():
    states, weight, bias = _inputs(1, seed=1)
    with torch.inference_mode():
        output = few_rows.project_rows(states, weight, bias, EVERY_ROW)
        twice = torch.cat([states[0], states[0]])
        swapped = ((weight @ twice.T).T[:1] + bias).unsqueeze(0)
    assert output.shape == (1, 1, BIG_SHAPE[0]) and output.is_contiguous()
    assert torch.equal(output, swapped)


@pytest.mark.parametrize("num_rows, swapped_rows, grad", [(4, frozenset(), False), (4, frozenset({3, 5}), False),
                                                          (65, EVERY_ROW, False), (4, EVERY_ROW, True)])
def test_linear_itself_where_the_row_count_is_not_swapped_or_gradients_are_on(num_rows, swapped_rows, grad):
    states, weight, bias = _inputs(num_rows)
    with torch.set_grad_enabled(grad):
        output = few_rows.project_rows(states, weight, bias, swapped_rows)
    assert torch.equal(output, F.linear(states, weight, bias))


def test_the_decision_compares_minima_of_interleaved_pairs_with_a_margin():
    fast, slow = [1.0, 1.1, 1.0], [2.0, 2.1, 2.0]
    # One interfered sample (a busy core) moves neither minimum.
    spiked = [1.0, 9.0, 1.0]
    timings = {
        2: (slow, fast),  # swapped twice as fast: swapped
        3: (fast, slow),  # linear faster: linear
        4: ([1.0, 1.0], [0.95, 0.95]),  # swapped ahead by less than the margin: transformers' linear form
        5: (slow, spiked),  # the spike does not hide the swapped form's win
        6: (spiked, slow),  # nor the linear one's
    }
    assert few_rows.choose_swapped_rows(timings) == [2, 5]


def test_counts_between_measured_ones_take_the_form_of_the_nearest_below():
    expanded = few_rows._expand([6, 16])
    assert expanded == {6, 7, *range(16, 24)}


def test_forms_are_measured_once_per_machine_and_shape_stored_and_read_back(forms_file, monkeypatch):
    calls = []

    def measured(weight, pairs=few_rows.TIMED_PAIRS):
        calls.append(tuple(weight.shape))
        return [2, 3] if weight.shape[0] == BIG_SHAPE[0] else []

    monkeypatch.setattr(few_rows, "measure_swapped_rows", measured)
    big, layer = torch.zeros(BIG_SHAPE), torch.zeros(LAYER_SHAPE)
    few_rows.resolve_product_forms([big, layer, torch.zeros(BIG_SHAPE), torch.zeros(SMALL_SHAPE)])
    assert sorted(calls) == [LAYER_SHAPE, BIG_SHAPE]  # each shape once, the small weight never
    assert few_rows.swapped_row_counts(big) == frozenset({2, 3})
    assert few_rows.swapped_row_counts(layer) == frozenset()
    stored = json.loads(forms_file.read_text())[few_rows.machine_key()]
    assert stored["shapes"] == {"8192x576/float32": [2, 3], "1536x576/float32": []}
    assert few_rows.cpu_model_name() in stored["machine"]

    few_rows._resolved_forms.clear()  # a new process on the same machine reads the file, measures nothing
    few_rows.resolve_product_forms([big])
    assert len(calls) == 2 and few_rows.swapped_row_counts(big) == frozenset({2, 3})
    few_rows.resolve_product_forms([torch.zeros(BIG_SHAPE, dtype=torch.bfloat16)])  # another dtype: measured
    assert len(calls) == 3

    few_rows._resolved_forms.clear()  # another machine (or thread count): measured again
    monkeypatch.setattr(few_rows, "machine_key", lambda: "another-machine")
    few_rows.resolve_product_forms([big])
    assert len(calls) == 4


def test_a_corrupt_forms_file_is_measured_again_and_rewritten(forms_file, monkeypatch, caplog):
    forms_file.write_text("{not json")
    monkeypatch.setattr(few_rows, "measure_swapped_rows", lambda weight, pairs=0: [2])
    few_rows.resolve_product_forms([torch.zeros(BIG_SHAPE)])
    assert few_rows.swapped_row_counts(torch.zeros(BIG_SHAPE)) == frozenset(few_rows._expand([2]))
    assert json.loads(forms_file.read_text())[few_rows.machine_key()]["shapes"] == {"8192x576/float32": [2]}


def test_the_real_measurement_returns_measured_row_counts(forms_file):
    swapped = few_rows.measure_swapped_rows(torch.randn(LAYER_SHAPE), pairs=2)
    assert set(swapped) <= set(few_rows.MEASURED_ROWS)


@pytest.mark.parametrize("form, expected", [("linear", frozenset()), ("swapped", EVERY_ROW)])
def test_the_environment_fixes_the_form_without_measuring(form, expected, forms_file, monkeypatch):
    monkeypatch.setenv(few_rows.FORCED_FORMS_VARIABLE, form)
    monkeypatch.setattr(few_rows, "measure_swapped_rows", lambda *args: pytest.fail("measured"))
    few_rows.resolve_product_forms([torch.zeros(BIG_SHAPE)])
    assert few_rows.swapped_row_counts(torch.zeros(BIG_SHAPE)) == expected
    assert few_rows.swapped_row_counts(torch.zeros(LAYER_SHAPE)) == (expected - {1})
    assert not forms_file.exists()
    monkeypatch.setenv(few_rows.FORCED_FORMS_VARIABLE, "fastest")
    with pytest.raises(ValueError, match="use 'linear', 'swapped' or 'measure'"):
        few_rows.forced_product_form()


def test_few_row_products_route_large_linear_layers_on_the_cpu_only_and_restore_them(forms_file, monkeypatch):
    monkeypatch.setenv(few_rows.FORCED_FORMS_VARIABLE, "swapped")
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
        assert torch.equal(output, few_rows.project_rows(states, big.weight, big.bias, EVERY_ROW))
    assert "forward" not in vars(big)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("form", ["linear", "swapped"])
@pytest.mark.parametrize("num_rows", [1, 3, 65])
def test_a_redirected_layer_computes_what_project_rows_computes_with_its_forms(num_rows, form, forms_file,
                                                                               monkeypatch):
    monkeypatch.setenv(few_rows.FORCED_FORMS_VARIABLE, form)
    layer = nn.Linear(BIG_SHAPE[1], BIG_SHAPE[0])
    states = torch.randn(1, num_rows, BIG_SHAPE[1])
    forms = few_rows.swapped_row_counts(layer.weight)
    with torch.inference_mode(), few_rows.few_row_products(layer, torch.device("cpu")):
        assert torch.equal(layer(states), few_rows.project_rows(states, layer.weight, layer.bias, forms))
