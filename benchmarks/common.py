"""What the benchmark scripts share: each is `recycle-hf bench <name>` under another program name."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable


def run_benchmark_script(
    program: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_command: Callable[[argparse.Namespace], int],
) -> int:
    """Parse the command line with the same options as `recycle-hf bench`, then run the same code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog=program, description=description)
    add_arguments(parser)
    return run_command(parser.parse_args())
