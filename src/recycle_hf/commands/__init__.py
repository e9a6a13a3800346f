"""Subcommands of the `recycle-hf` command line (see `recycle_hf.cli`), and the option types they share."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from ..checkpoint_code.draft_length_recyclegpt import fixed_draft_shapes
from ..checkpoint_code.draft_shape_recyclegpt import DraftShape, draft_request_from_text


def bounded(
    kind: type[int] | type[float], minimum: float, maximum: float | None = None, exclusive_minimum: bool = False
) -> Callable[[str], int | float]:
    """An argparse `type=` that reads an int or float and refuses values outside the range, with a clear message.

    Without it a value such as `--max-new-tokens -5` is accepted and fails later, deep inside a run.
    """
    noun = "an integer" if kind is int else "a number"
    low = f"> {minimum}" if exclusive_minimum else f">= {minimum}"
    opening = "(" if exclusive_minimum else "["
    expected = f"{noun} {low}" if maximum is None else f"{noun} in {opening}{minimum}, {maximum}]"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        below = value <= minimum if exclusive_minimum else value < minimum
        if math.isnan(value) or below or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


positive_int = bounded(int, 1)
positive_float = bounded(float, 0, exclusive_minimum=True)
non_negative_float = bounded(float, 0)
fraction = bounded(float, 0, 1)


def num_draft_tokens_option(text: str) -> DraftShape | str:
    """`--num-draft-tokens`: "auto", an integer, or a draft tree in JSON ('[[0], [1], [0, 0]]'), built as `generate`
    builds `num_draft_tokens` (`draft_request`)."""
    try:
        return draft_request_from_text(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).rstrip(".")) from None


def num_draft_tokens_list(text: str) -> tuple[DraftShape, ...]:
    """`--num-draft-tokens 1,2,3` of the benchmarks: chains, each built as `generate` builds one, no "auto"."""
    values = tuple(num_draft_tokens_option(part.strip()) for part in text.split(",") if part.strip())
    try:
        return fixed_draft_shapes(values)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).rstrip(".")) from None


def _is_list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, list) for item in value)


def draft_trees_option(text: str) -> tuple[DraftShape, ...]:
    """`--draft-trees` of the benchmarks: a JSON list of trees, e.g. '[[[0], [1], [0, 0]], [[0], [1]]]'."""
    try:
        trees = json.loads(text)
    except ValueError:
        trees = None
    if not isinstance(trees, list) or not trees or not all(_is_list_of_lists(tree) for tree in trees):
        raise argparse.ArgumentTypeError(f"expected a JSON list of draft trees such as '[[[0], [1], [0, 0]]]', got "
                                         f"{text!r}")
    try:
        return tuple(DraftShape.of(tree) for tree in trees)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).rstrip(".")) from None


def option_values(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """`{name: args.name}` for the options that keep their names in the settings they fill."""
    return {name: getattr(args, name) for name in names}
