"""The code passes the project's linter (ruff, configured in pyproject.toml: pycodestyle, pyflakes, import order)."""

import subprocess
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    checked = ["src", "tests", "benchmarks", "examples"]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *checked], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
