"""Speed benchmark: every decoding mode against transformers' own `generate`; same code as `recycle-hf bench speed`.

python benchmarks/speed.py --base default --batch-sizes 1 --max-new-tokens 32 --output-dir benchmarks/results/cpu
python benchmarks/speed.py --help
"""

import sys

from recycle_hf.commands.bench import add_speed_arguments, run_speed_command

from common import run_benchmark_script


if __name__ == "__main__":
    sys.exit(
        run_benchmark_script("benchmarks/speed.py", __doc__.splitlines()[0], add_speed_arguments, run_speed_command)
    )
