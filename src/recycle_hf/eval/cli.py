"""Hand a command line to lm-eval's own CLI, with the `recyclegpt` model registered and our tasks findable."""

from __future__ import annotations

import os
import sys
from argparse import Namespace

from ..errors import InvalidInputError
from . import LOCAL_TASKS, TASKS_DIR


def _with_package_tasks(args: Namespace) -> Namespace:
    """Put this package's task folder first on the subcommand's `--include_path` (the user's folders still win)."""
    if not hasattr(args, "include_path"):
        return args
    user_paths = args.include_path
    config_file = getattr(args, "config", None)
    if user_paths is None and config_file:
        # A YAML `--config` may name include paths; a value set here would hide them.
        from lm_eval.config.evaluate_config import EvaluatorConfig

        user_paths = EvaluatorConfig.load_yaml_config(config_file).get("include_path")
    if isinstance(user_paths, str):
        # lm-eval's help documents "dir1:dir2"; its TaskManager takes a list.
        user_paths = [path for path in user_paths.split(os.pathsep) if path]
    args.include_path = [str(TASKS_DIR), *(user_paths or [])]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run `lm-eval` with `argv` (its subcommands `run`, `ls`, `validate`, or the legacy flags-only form)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    parser = HarnessCLI()
    # HarnessCLI reads sys.argv (to insert the implicit `run` subcommand); give it ours for the duration.
    saved_argv = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        args = parser.parse_args()
        parser.execute(_with_package_tasks(args))
    except ValueError as error:
        if str(error).startswith("Tasks not found"):  # lm-eval's word for unknown task names
            raise InvalidInputError(f"{error}; `recycle-hf eval ls tasks` lists them (this package's: "
                                    f"{', '.join(LOCAL_TASKS)}, recyclegpt_suite, recyclegpt_suite_local).") from error
        raise
    except SystemExit as exit_request:  # --help, argparse errors
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0
