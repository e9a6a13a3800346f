# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Few-row products: `F.linear` over a few rows of a large weight, computed where the CPU's BLAS is fastest.

The loops' forwards run over a few positions per row (the newest token plus k drafts), and on the CPU MKL runs
`x @ W^T`, the product `nn.Linear` calls, over 2-15 rows at up to 2-4x its one-row time, while the same product with
the operands swapped, `(W @ x^T)^T`, reads W once (SmolLM2's LM head over 4 rows: 29.7 ms against 8.5 ms; a
1536 x 576 MLP weight: 0.47 against 0.19 ms; from 16 to 64 rows both forms give the same bits and the swapped one
is still faster: 2-core AMD EPYC, torch 2.13, MKL, 2 threads, medians of 7). The rule is fixed, not timed: the two
forms round differently for 2-15 rows, and a choice made by timing would make the output depend on the machine's
load (it did: the same bf16 prompt gave different tokens in two calls). Small weights are not worth it.

The swapped product comes back as a transposed view; it is made contiguous at once (a copy of a few rows). Left
strided, it made every later op strided too, and sdpa's fused CPU kernel, which needs the last dimension's stride to
be 1, fell back to its math kernel: SmolLM2's base forward over 4 tokens took 98 ms instead of 84 (1 token: 74-81).

One row of a tall weight (a vocabulary head: drafts, alternating mode's tokens) is computed as two, the row twice:
MKL's one-row product reads such a weight at about 60% of the speed of its two-row one (8192 x 576 draft head: 1.66
against 1.32 ms; SmolLM2's LM head: 9.9 against 6.9 ms). For the layers' own weights (576-1536 rows) it does not pay.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F


FEW_ROWS = range(2, 65)
MIN_SWAPPED_PRODUCT_WEIGHT_ELEMENTS = 1 << 16
# Weights with at least this many output rows also take the swapped product for a single row (as two rows).
MIN_TALL_WEIGHT_ROWS = 8192
# The redirection is installed on shared layer objects, but only the threads inside `few_row_products` take it:
# another thread's plain forward of the same model keeps `F.linear` (and its rounding).
_thread_state = threading.local()
_installing = threading.Lock()


def _active_in_this_thread() -> bool:
    # A compiled step was traced inside the context and runs only there: no thread check in the graph.
    return torch.compiler.is_compiling() or getattr(_thread_state, "depth", 0) > 0


def _swaps(num_rows: int, weight: torch.Tensor) -> bool:
    return (num_rows in FEW_ROWS or (num_rows == 1 and weight.shape[0] >= MIN_TALL_WEIGHT_ROWS)) and (
        not torch.is_grad_enabled()
    )


def _may_swap_product(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.numel() >= MIN_SWAPPED_PRODUCT_WEIGHT_ELEMENTS
        and _swaps(rows.shape[0], weight)
    )


def project_rows(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(states, weight, bias)`, computed as `(weight @ rows^T)^T` for a few rows of a large CPU weight;
    contiguous, like `F.linear`'s own output."""
    rows = states.reshape(-1, states.shape[-1])
    if not _may_swap_product(rows, weight):
        return F.linear(states, weight, bias)
    return _swapped_product(states, rows, weight, bias)


def _swapped_product(
    states: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if rows.shape[0] == 1:
        output = torch.mm(weight, torch.cat([rows, rows]).t())[:, 0].unsqueeze(0).contiguous()
    else:
        output = torch.mm(weight, rows.t()).t().contiguous()
    if bias is not None:
        output += bias
    return output.view(*states.shape[:-1], weight.shape[0])


@contextlib.contextmanager
def few_row_products(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """While active on the CPU, the large `nn.Linear` layers of `model` (base, module and LM head) compute as
    `project_rows` in this thread. Their `forward` is replaced on the instances and restored when the last context
    using them ends: only these layers pay the redirection (a `TorchFunctionMode` cost 6 us on every torch call,
    about 5 ms per SmolLM2 forward), and other threads' calls of the same layers keep `F.linear`."""
    if device.type != "cpu":
        yield
        return
    layers = [
        module for module in model.modules()
        if type(module) is torch.nn.Linear and module.weight.numel() >= MIN_SWAPPED_PRODUCT_WEIGHT_ELEMENTS
    ]
    with _installing:  # counted, so that one context's exit never removes what another still uses
        for layer in layers:
            # One redirected forward per layer, made once: a compiled step guards on the identity of what it
            # traced, so a new object each call would recompile it every call.
            if "_few_row_forward" not in vars(layer):
                layer._few_row_forward = functools.partial(_few_row_linear_forward, layer)
            users = vars(layer).get("_few_row_users", 0)
            if users == 0:
                layer.forward = layer._few_row_forward
            layer._few_row_users = users + 1
    _thread_state.depth = getattr(_thread_state, "depth", 0) + 1
    try:
        yield
    finally:
        _thread_state.depth -= 1
        with _installing:
            for layer in layers:
                layer._few_row_users -= 1
                if layer._few_row_users == 0:
                    del layer.forward


def _few_row_linear_forward(layer: torch.nn.Linear, states: torch.Tensor) -> torch.Tensor:
    """`project_rows` for a layer already known to qualify (a large weight on the CPU): it runs about 200 times per
    forward, so it checks only what changes from call to call (about 20 us less per call than `project_rows`)."""
    weight = layer.weight
    rows = states.reshape(-1, weight.shape[1])
    if not (_active_in_this_thread() and _swaps(rows.shape[0], weight)):
        return F.linear(states, weight, layer.bias)
    return _swapped_product(states, rows, weight, layer.bias)


__all__ = ["FEW_ROWS", "few_row_products", "project_rows"]
