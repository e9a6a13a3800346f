"""Quality benchmark: module top-1 agreement, alternating-schedule perplexity and verify-mode tokens per base forward;
same code as `recycle-hf bench quality`.

    python benchmarks/quality.py --base default --prompts-file examples/data/heldout_prompts.txt
    python benchmarks/quality.py --help
"""

import sys

from recycle_hf.commands.bench import add_quality_arguments, run_quality_command

from common import run_benchmark_script


if __name__ == "__main__":
    sys.exit(
        run_benchmark_script(
            "benchmarks/quality.py", __doc__.splitlines()[0], add_quality_arguments, run_quality_command
        )
    )
