"""Subcommands of the `recycle-hf` command line (see `recycle_hf.cli`), and the option types they share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


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


def option_values(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """`{name: args.name}` for the options that keep their names in the settings they fill."""
    return {name: getattr(args, name) for name in names}
