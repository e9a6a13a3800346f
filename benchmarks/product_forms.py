"""Few-row products on this CPU: microseconds of one product of each weight shape of SmolLM2 (and its draft head) over
1-16 rows, in each candidate form: `F.linear` (transformers'), swapped `(W @ x^T)^T`, MKL's packed GEMM packed for
exactly that row count (inductor's CPU freezing uses it; its packed copy takes about 4x the weight's memory), and
oneDNN's linear on a reordered weight. Minima of interleaved repeats (load only adds time).

python benchmarks/product_forms.py --threads 2 --output benchmarks/results/intel-product-forms/product_forms.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recycle_hf.checkpoint_code.few_row_products_recyclegpt import describe_machine, project_rows


SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (8192, 576), (49152, 576))
ROWS = (1, 2, 3, 4, 5, 6, 8, 12, 16)
EVERY_ROW = frozenset(range(1, 65))


def minimum_us(functions: dict, repeats: int) -> dict[str, float]:
    """Minimum microseconds of each function, the functions interleaved in every repeat."""
    for function in functions.values():
        function()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], (time.perf_counter() - started) * 1e6)
    return best


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    results = {}
    for shape in SHAPES:
        weight = torch.randn(*shape, generator=generator)
        reordered = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        rows_result = {}
        for rows in ROWS:
            states = torch.randn(rows, shape[1], generator=generator)
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
            functions = {
                "linear": lambda: F.linear(states, weight),
                "swapped": lambda: project_rows(states, weight, None, EVERY_ROW),
                "mkl_packed_exact_rows": lambda: torch.ops.mkl._mkl_linear(states, packed, weight, None, rows),
                "onednn_reordered": lambda: torch.ops.mkldnn._linear_pointwise(states, reordered, None, "none", [],
                                                                              ""),
            }
            rows_result[rows] = minimum_us(functions, args.repeats)
        name = f"{shape[0]}x{shape[1]}"
        results[name] = rows_result
        print(name, "  ".join(f"{rows}: " + "/".join(f"{us:.0f}" for us in forms.values())
                              for rows, forms in rows_result.items()), flush=True)
    machine = describe_machine()
    print(machine, "(linear / swapped / MKL packed for exactly these rows / oneDNN reordered, us)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(machine=machine, microseconds=results), indent=1))


if __name__ == "__main__":
    main()
