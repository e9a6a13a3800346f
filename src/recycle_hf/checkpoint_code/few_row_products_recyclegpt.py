# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Few-row products: `F.linear` over a few rows of a large CPU weight, in the form this machine computes fastest.

The fast path's forwards run over a few positions per row (the newest token plus k drafts). For such products the
CPU's BLAS has two forms with very different costs, and which one wins depends on the CPU, not on the model:
- `x @ W^T`, the product `nn.Linear` calls ("linear");
- the operands swapped, `(W @ x^T)^T` ("swapped"; one row is computed as two, the row twice, because a one-row
  product with a tall weight can be slower than a two-row one).
On an AMD EPYC (AVX2) MKL runs the linear form over 2-15 rows at 2-4x its one-row time and the swapped form wins
there; on an Intel Xeon (AVX-512) the linear form is the fast one up to a dozen rows and the swapped one costs 2-4x.
So the form is measured, per machine: for every weight shape and dtype the fast path uses and for representative row
counts (`MEASURED_ROWS`), both forms are timed in interleaved pairs and the minimum of each is compared (interference
from other work only adds time, so the minimum is the statistic least moved by load); the swapped form is taken only
where it is faster by `SWAPPED_MARGIN`, else transformers' own linear form.

Output must never depend on timing: the two forms round differently. So the forms are measured once, before the
first output that uses them, and kept: in memory for the process and in `product_forms_file()` for later processes,
keyed by CPU model, instruction set, torch version, BLAS and thread count. On one machine the same inputs then give
the same tokens in every call and process. `RECYCLE_HF_PRODUCT_FORMS=linear` (or `swapped`) fixes the form without
measuring; delete the file to measure again.

The swapped product comes back as a transposed view; it is made contiguous at once (a copy of a few rows): left
strided, it sends sdpa's fused CPU kernel, which needs a unit stride in the last dimension, to its math kernel.

This file is remote code: a checkpoint folder carries it, so it imports only torch and transformers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging

from .publishing_recyclegpt import locked_file, write_json_file
from .runtime_recyclegpt import SharedPatches, decoding_runtime


logger = logging.get_logger(__name__)

MAX_FEW_ROWS = 64
MIN_SWAPPED_PRODUCT_WEIGHT_ELEMENTS = 1 << 16
# Row counts that are timed; a count in between takes the form of the largest measured count below it.
MEASURED_ROWS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)
TIMED_PAIRS = 9
# The swapped form must beat the linear one by this factor: where the two are close, transformers' form is kept.
SWAPPED_MARGIN = 0.9
# Part of the file's key: a new way of measuring measures again.
PRODUCT_FORMS_METHOD = 1
FORCED_FORMS_VARIABLE = "RECYCLE_HF_PRODUCT_FORMS"

# The redirection is installed on shared layer objects, but only the threads inside `few_row_products` take it:
# another thread's plain forward of the same model keeps `F.linear` (and its rounding).
_redirected_layers = SharedPatches()
_measuring = threading.Lock()
# (shape, dtype) -> row counts computed swapped, for this process and machine (`swapped_row_counts`).
_resolved_forms: dict[tuple[tuple[int, int], str], frozenset[int]] = {}


def worth_measuring(weight: torch.Tensor) -> bool:
    """Whether a weight can take the swapped form at all: a large 2-D floating-point CPU weight."""
    return (
        weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_floating_point()
        and weight.numel() >= MIN_SWAPPED_PRODUCT_WEIGHT_ELEMENTS
    )


def project_rows(
    states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, swapped_rows: frozenset[int]
) -> torch.Tensor:
    """`F.linear(states, weight, bias)`, computed swapped where the row count is in `swapped_rows` (and gradients
    are off); contiguous, like `F.linear`'s own output."""
    rows = states.reshape(-1, weight.shape[1])
    if rows.shape[0] not in swapped_rows or torch.is_grad_enabled():
        return F.linear(states, weight, bias)
    if rows.shape[0] == 1:
        output = torch.mm(weight, torch.cat([rows, rows]).t())[:, 0].unsqueeze(0).contiguous()
    else:
        output = torch.mm(weight, rows.t()).t().contiguous()
    if bias is not None:
        output += bias
    return output.view(*states.shape[:-1], weight.shape[0])


def swapped_row_counts(weight: torch.Tensor) -> frozenset[int]:
    """The row counts (1..`MAX_FEW_ROWS`) for which this machine computes `weight`'s products swapped: resolved
    once per shape and dtype (forced by `RECYCLE_HF_PRODUCT_FORMS`, stored, or measured now and stored)."""
    if not worth_measuring(weight):
        return frozenset()
    forced = forced_product_form()
    if forced is not None:
        return _forced_rows(forced, weight)
    key = _shape_key(weight)
    if key not in _resolved_forms:
        resolve_product_forms([weight])
    return _resolved_forms[key]


def resolve_product_forms(weights: Iterable[torch.Tensor]) -> None:
    """Fix the product forms of these weights' shapes for this process, measuring (and storing) those this machine
    has not measured yet. Called before the first output that uses them."""
    if forced_product_form() is not None:
        return
    pending = {_shape_key(weight): weight for weight in weights if worth_measuring(weight)}
    with _measuring:
        pending = {key: weight for key, weight in pending.items() if key not in _resolved_forms}
        if not pending:
            return
        path, machine = product_forms_file(), machine_key()
        entry = _read_forms(path).get(machine)
        stored = entry.get("shapes") if isinstance(entry, dict) and isinstance(entry.get("shapes"), dict) else {}
        measured: dict[str, list[int]] = {}
        for key, weight in pending.items():
            name = _shape_name(key)
            if isinstance(stored.get(name), list) and all(type(r) is int for r in stored[name]):
                _resolved_forms[key] = frozenset(_expand(stored[name]))
                continue
            swapped = measure_swapped_rows(weight)
            measured[name] = swapped
            _resolved_forms[key] = frozenset(_expand(swapped))
        if measured:
            logger.info("Few-row product forms measured for %s (swapped at row counts %s); kept in %s.",
                        describe_machine(), measured, path)
            _write_forms(path, machine, measured)


def measure_product_forms_again(weights: Iterable[torch.Tensor]) -> None:
    """Forget this machine's stored forms (file and process) and measure these weights' shapes now
    (`recycle-hf calibrate --again`). The new forms hold for decoding that starts after this call."""
    with _measuring:
        _resolved_forms.clear()
        path, machine = product_forms_file(), machine_key()
        with locked_file(path):
            data = _read_forms(path)
            if machine in data:
                del data[machine]
                write_json_file(path, data)
    resolve_product_forms(weights)


def stored_product_forms(path: Path) -> dict[str, dict]:
    """Every machine's entry in the forms file, by machine key (for `recycle-hf calibrate --show`)."""
    return {key: entry for key, entry in _read_forms(path).items() if isinstance(entry, dict)}


def forced_product_form() -> str | None:
    """"linear" or "swapped" when `RECYCLE_HF_PRODUCT_FORMS` fixes the form, else None (measured)."""
    value = os.environ.get(FORCED_FORMS_VARIABLE, "").strip().lower()
    if value in ("", "measure", "measured", "auto"):
        return None
    if value not in ("linear", "swapped"):
        raise ValueError(f"{FORCED_FORMS_VARIABLE}={value!r}: use 'linear', 'swapped' or 'measure' (the default).")
    return value


def _forced_rows(form: str, weight: torch.Tensor) -> frozenset[int]:
    if form == "linear":
        return frozenset()
    # The rule measured on the AMD EPYC kind: 2-64 rows, and one row too for a vocabulary-sized weight.
    return frozenset(range(1 if weight.shape[0] >= 8192 else 2, MAX_FEW_ROWS + 1))


def choose_swapped_rows(timings: dict[int, tuple[list[float], list[float]]]) -> list[int]:
    """The measured row counts at which the swapped form is faster beyond the margin: `timings` maps a row count to
    (linear seconds, swapped seconds) of interleaved pairs; each side's minimum is compared."""
    return sorted(
        rows for rows, (linear, swapped) in timings.items() if min(swapped) < SWAPPED_MARGIN * min(linear)
    )


def _expand(measured_swapped: Iterable[int]) -> set[int]:
    """Every row count 1..MAX_FEW_ROWS whose nearest measured count at or below it is swapped."""
    swapped = set(measured_swapped)
    result, current = set(), False
    for rows in range(1, MAX_FEW_ROWS + 1):
        if rows in MEASURED_ROWS:
            current = rows in swapped
        if current:
            result.add(rows)
    return result


@torch.no_grad()
def measure_swapped_rows(weight: torch.Tensor, pairs: int = TIMED_PAIRS) -> list[int]:
    """Time both forms of `weight`'s product over each of `MEASURED_ROWS` rows, in interleaved pairs (the order
    alternating), and return the counts where the swapped form wins (`choose_swapped_rows`)."""
    every_row = frozenset(range(1, MAX_FEW_ROWS + 1))
    timings: dict[int, tuple[list[float], list[float]]] = {}
    generator = torch.Generator().manual_seed(0)
    for rows in MEASURED_ROWS:
        states = torch.randn(rows, weight.shape[1], generator=generator).to(weight.dtype)
        forms = {"linear": frozenset(), "swapped": every_row}
        for form in forms.values():  # warm-up
            project_rows(states, weight, None, form)
        samples: dict[str, list[float]] = {"linear": [], "swapped": []}
        for pair in range(pairs):
            for name in ("linear", "swapped") if pair % 2 == 0 else ("swapped", "linear"):
                started = time.perf_counter()
                project_rows(states, weight, None, forms[name])
                samples[name].append(time.perf_counter() - started)
        timings[rows] = (samples["linear"], samples["swapped"])
    return choose_swapped_rows(timings)


def _shape_key(weight: torch.Tensor) -> tuple[tuple[int, int], str]:
    return (tuple(weight.shape), str(weight.dtype).removeprefix("torch."))


def _shape_name(key: tuple[tuple[int, int], str]) -> str:
    (rows, columns), dtype = key
    return f"{rows}x{columns}/{dtype}"


def cpu_model_name() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), else the platform's processor string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def instruction_set() -> str:
    """The vector instruction set torch's CPU kernels use here (e.g. AVX512, AVX2, DEFAULT)."""
    with contextlib.suppress(Exception):
        return torch.backends.cpu.get_cpu_capability()
    return "unknown"


def describe_machine() -> str:
    """CPU model, instruction set and torch's thread count, as every recorded number names them."""
    return f"{cpu_model_name()} ({instruction_set()}, {torch.get_num_threads()} threads)"


def machine_key() -> str:
    """What product timings depend on: CPU model and instruction set, CPU count, torch and its BLAS, threads."""
    blas = [line.strip() for line in torch.__config__.show().splitlines() if "Math Kernel" in line or "BLAS" in line]
    parts = [cpu_model_name(), instruction_set(), str(os.cpu_count()), torch.__version__, *blas,
             f"{torch.get_num_threads()}threads", f"method{PRODUCT_FORMS_METHOD}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def product_forms_file() -> Path:
    """Where measured forms are kept: product_forms.json beside `auto`'s draft choices ($RECYCLE_HF_CALIBRATION's
    folder, else $RECYCLE_HF_CACHE or ~/.cache/recycle_hf)."""
    explicit = os.environ.get("RECYCLE_HF_CALIBRATION")
    if explicit:
        return Path(explicit).parent / "product_forms.json"
    folder = os.environ.get("RECYCLE_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "recycle_hf")
    return Path(folder) / "product_forms.json"


def _read_forms(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("Ignoring the product forms in %s (%s): measuring again; the file will be rewritten.",
                       path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _write_forms(path: Path, machine: str, measured: dict[str, list[int]]) -> None:
    """Add this machine's newly measured shapes to the file, under its lock and atomically (written beside it, then
    renamed): processes measuring at once keep each other's shapes."""
    try:
        with locked_file(path):
            _add_forms(path, machine, measured)
    except OSError as error:  # a read-only home still decodes; the next process measures again
        logger.warning("Could not record the product forms in %s: %s", path, error)


def _add_forms(path: Path, machine: str, measured: dict[str, list[int]]) -> None:
    data = _read_forms(path)
    entry = data.get(machine) if isinstance(data.get(machine), dict) else {}
    shapes = entry.get("shapes") if isinstance(entry.get("shapes"), dict) else {}
    shapes.update(measured)
    data[machine] = {"machine": describe_machine(), "torch": torch.__version__,
                     "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shapes": shapes}
    write_json_file(path, data)


@contextlib.contextmanager
def few_row_products(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """While active on the CPU, the large `nn.Linear` layers of `model` (base, module and LM head) compute as
    `project_rows` with this machine's forms, in this thread. Their forms are fixed on entry (measured once per
    machine). Their `forward` is replaced on the instances and restored when the last context using them ends:
    only these layers pay the redirection, and other threads' calls of the same layers keep `F.linear`."""
    if device.type != "cpu":
        yield
        return
    layers = [
        module for module in model.modules() if type(module) is torch.nn.Linear and worth_measuring(module.weight)
    ]
    resolve_product_forms(layer.weight for layer in layers)
    forwards = decoding_runtime(model).layer_forwards

    def redirect(layer: torch.nn.Linear) -> None:
        swapped_rows = swapped_row_counts(layer.weight)
        # One redirected forward per layer and forms: a compiled step guards on the identity of what it traced, so
        # a new object each call would recompile it every call.
        made = forwards.get(layer)
        if made is None or made.args[1] != swapped_rows:
            made = forwards[layer] = functools.partial(_few_row_linear_forward, layer, swapped_rows)
        layer.forward = made

    with _redirected_layers.applied(layers, redirect, _restore_forward):
        yield


def _restore_forward(layer: torch.nn.Linear) -> None:
    del layer.forward  # the instance attribute goes; the class's forward shows again


def _few_row_linear_forward(layer: torch.nn.Linear, swapped_rows: frozenset[int], states: torch.Tensor) -> torch.Tensor:
    """`project_rows` for a layer already known to qualify: outside the context's thread, `F.linear` itself."""
    if not _redirected_layers.active_in_this_thread():
        return F.linear(states, layer.weight, layer.bias)
    return project_rows(states, layer.weight, layer.bias, swapped_rows)


__all__ = [
    "MEASURED_ROWS",
    "choose_swapped_rows",
    "cpu_model_name",
    "describe_machine",
    "few_row_products",
    "forced_product_form",
    "instruction_set",
    "machine_key",
    "measure_product_forms_again",
    "measure_swapped_rows",
    "product_forms_file",
    "project_rows",
    "resolve_product_forms",
    "stored_product_forms",
    "swapped_row_counts",
]
