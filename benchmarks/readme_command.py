"""README's first command as a new user runs it: `recycle-hf generate PROMPT --compare`, each call in a fresh process
with a fresh choice file (so `num_draft_tokens="auto"` calibrates), on held-out prompts, quiet and while another
process keeps one core busy. Prints and records each call's speed ratio against plain decoding, the shape auto
chose and where it came from.

python benchmarks/readme_command.py --prompts 3 --busy 0,1 \
    --output benchmarks/results/intel-readme-command/readme_command.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recycle_hf.checkpoint_code.few_row_products_recyclegpt import describe_machine, product_forms_file
from recycle_hf.distill import read_prompts


def busy_loop(stop_at: float) -> None:
    """Keep one core busy until `stop_at` (a bounded loop: it ends by itself)."""
    while time.time() < stop_at:
        pass


def run_once(prompt: str, busy: int, recycle_hf: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        environment = dict(os.environ, RECYCLE_HF_CALIBRATION=str(Path(folder) / "draft_lengths.json"))
        # The product forms are this machine's (measured once, as a user's first call measures them): keep them.
        forms = product_forms_file()
        if forms.is_file():
            (Path(folder) / "product_forms.json").write_bytes(forms.read_bytes())
        workers = [multiprocessing.Process(target=busy_loop, args=(time.time() + 600,)) for _ in range(busy)]
        for worker in workers:
            worker.start()
        try:
            started = time.perf_counter()
            completed = subprocess.run([recycle_hf, "generate", prompt, "--compare"], env=environment,
                                       capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.terminate()
                worker.join()
    output = completed.stdout
    ratio = float(re.search(r"speed ratio verify/none: ([0-9.]+)x", output).group(1))
    shape = re.search(r"tokens per base forward, k=(.*?) \(", output)
    source = re.search(r"^draft shape: (.*)$", output, re.MULTILINE)
    same = "output identical to plain decoding" in output
    return dict(prompt=prompt, busy_processes=busy, ratio=ratio, shape=shape.group(1) if shape else None,
                source=source.group(1) if source else None, identical=same, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--prompts", type=int, default=3, help="the first N held-out prompts")
    parser.add_argument("--busy", default="0,1", help="busy processes beside each call, e.g. 0,1")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    recycle_hf = str(Path(sys.executable).with_name("recycle-hf"))
    prompts = read_prompts([args.prompts_file])[: args.prompts]
    rows = []
    for busy in (int(part) for part in args.busy.split(",")):
        for prompt in prompts:
            row = run_once(prompt, busy, recycle_hf)
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = describe_machine()
    print(machine)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(machine=machine, runs=rows), indent=1))


if __name__ == "__main__":
    main()
