# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""The machine and library versions recorded with every result."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def environment_info(device: torch.device) -> dict[str, Any]:
    """Machine and library versions, recorded with every result."""
    import transformers

    from .._version import __version__

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "recycle_hf": __version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
