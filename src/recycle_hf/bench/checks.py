# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Output checks: are two `generate` outputs for the same prompts token for token the same?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def compare_outputs(
    reference: torch.Tensor, candidate: torch.Tensor, prompt_width: int, pad_token_id: int
) -> dict[str, Any]:
    """Row by row, are the generated tokens of `candidate` identical to `reference`'s?

    Both are `generate` outputs for the same prompt batch (prompt width `prompt_width`); a shorter output is padded
    with `pad_token_id`, as `generate` pads rows that stopped early. Returns the number of identical rows and, for
    each other row, the index of its first differing new token.
    """
    if reference.shape[0] != candidate.shape[0]:
        raise ValueError(f"Outputs have {reference.shape[0]} and {candidate.shape[0]} rows; compare the same batch.")
    reference_new = reference[:, prompt_width:].cpu()
    candidate_new = candidate[:, prompt_width:].cpu()
    width = max(reference_new.shape[1], candidate_new.shape[1])
    reference_new = F.pad(reference_new, (0, width - reference_new.shape[1]), value=pad_token_id)
    candidate_new = F.pad(candidate_new, (0, width - candidate_new.shape[1]), value=pad_token_id)
    mismatches = []
    for row in range(reference_new.shape[0]):
        differs = (reference_new[row] != candidate_new[row]).nonzero()
        if len(differs) > 0:
            mismatches.append({"row": row, "first_difference": int(differs[0, 0])})
    return {
        "rows": reference_new.shape[0],
        "identical_rows": reference_new.shape[0] - len(mismatches),
        "all_identical": not mismatches,
        "mismatches": mismatches,
    }


def merged_checks(per_set: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One `compare_outputs` result for prompt sets decoded in turn; each mismatch names its prompt set."""
    rows = sum(check["rows"] for check in per_set)
    mismatches = []
    for index, check in enumerate(per_set):
        mismatches += [{**mismatch, "prompt_set": index} for mismatch in check["mismatches"]]
    return {"rows": rows, "identical_rows": rows - len(mismatches), "all_identical": not mismatches,
            "mismatches": mismatches}
