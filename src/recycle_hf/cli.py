"""`recycle-hf` command line: one subcommand per main job, each in `recycle_hf/commands/<name>.py`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from .errors import USER_ERRORS


# Each command module defines HELP, add_arguments(parser) and run(args) -> int. A module that takes its arguments
# unparsed (to hand them to another tool's command line) defines main(argv) -> int instead. Modules are imported
# only when their command runs, so that e.g. `generate` never imports lm-eval.
COMMANDS = {
    "init": ("recycle_hf.commands.init", "write a randomly initialised checkpoint of a preset shape"),
    "generate": ("recycle_hf.commands.generate", "generate text with recycle decoding (default: SmolLM2 + module)"),
    "self-prompts": ("recycle_hf.commands.self_prompts", "sample user prompts from an instruction model itself"),
    "distill": ("recycle_hf.commands.distill", "generate self-distillation training data with the base model"),
    "train": ("recycle_hf.commands.train", "fine-tune a recyclable module on a frozen base, save an adapter"),
    "pretrain": (
        "recycle_hf.commands.pretrain", "train base and module jointly (the paper's recipe), full checkpoints"
    ),
    "eval": ("recycle_hf.commands.eval", "run lm-evaluation-harness with the recyclegpt model registered"),
    "bench": ("recycle_hf.commands.bench", "measure decoding speed against plain transformers generate"),
    "calibrate": ("recycle_hf.commands.calibrate", "show or measure again what auto and the CPU product forms keep"),
    "export": ("recycle_hf.commands.export", "export a trained module for a serving engine (vLLM)"),
}


def _top_level_help() -> str:
    lines = ["usage: recycle-hf [--log-level LEVEL] COMMAND [ARGS]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `recycle-hf COMMAND --help` for the options of one command."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """Reports a bad option in one line that says where the options are, instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    """Run one `recycle-hf` command; returns its exit status.

    A user error (a bad path or option value, an adapter that does not fit, ...: `recycle_hf.errors`) is printed as
    one line on stderr with status 2; `--log-level debug` shows its traceback. Other exceptions are bugs and keep
    theirs.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    log_level = "WARNING"
    if len(argv) >= 2 and argv[0] == "--log-level":
        log_level, argv = argv[1], argv[2:]
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        print(f"recycle-hf: error: unknown --log-level {log_level!r}; use debug, info, warning or error.",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=level)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    name, command_argv = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"recycle-hf: unknown command {name!r}.\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if hasattr(module, "main"):
            return module.main(command_argv)
        parser = _Parser(prog=f"recycle-hf {name}", description=module.HELP)
        module.add_arguments(parser)
        return module.run(parser.parse_args(command_argv))
    except USER_ERRORS as error:
        if level <= logging.DEBUG:
            raise
        print(f"recycle-hf {name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
