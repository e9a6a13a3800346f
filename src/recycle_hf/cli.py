"""`recycle-hf` command line: one subcommand per main job, each in `recycle_hf/commands/<name>.py`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys


# Each command module defines HELP, add_arguments(parser) and run(args) -> int. A module that takes its arguments
# unparsed (to hand them to another tool's command line) defines main(argv) -> int instead.
COMMANDS = {
    "init": "recycle_hf.commands.init",
    "generate": "recycle_hf.commands.generate",
    "distill": "recycle_hf.commands.distill",
    "train": "recycle_hf.commands.train",
    "eval": "recycle_hf.commands.eval",
    "bench": "recycle_hf.commands.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recycle-hf", description="RecycleGPT decoding for Hugging Face models.")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        if hasattr(module, "add_arguments"):
            module.add_arguments(subparser)
        else:
            subparser.add_argument("args", nargs=argparse.REMAINDER, help="handed on unchanged")
        subparser.set_defaults(command_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Pass-through commands get every later argument untouched (their own --help included).
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]])
        if hasattr(module, "main"):
            logging.basicConfig(level=logging.WARNING)
            return module.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    return args.command_module.run(args)


if __name__ == "__main__":
    sys.exit(main())
