# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Wall-clock timing that covers queued device work, and timers around chosen methods of the model."""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock times cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Wall time spent inside chosen methods of objects (e.g. `model.base_step`), summed per method name.

    The methods are wrapped on the instance for the duration of `wrapping(...)`; on CUDA the device is synchronised
    before and after each call, so the time is the method's own work and not the queue before it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def _timed(self, label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            result = method(*args, **kwargs)
            synchronize(self.device)
            self.seconds[label] += time.perf_counter() - start
            self.calls[label] += 1
            return result

        return timed

    @contextlib.contextmanager
    def wrapping(self, targets: Sequence[tuple[Any, str, str]]) -> Iterator[ForwardTimer]:
        """`targets`: (object, method name, label) triples; the original methods come back on exit."""
        saved: list[tuple[Any, str, Any]] = []
        try:
            for owner, name, label in targets:
                saved.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, self._timed(label, getattr(owner, name)))
            yield self
        finally:
            for owner, name, instance_value in reversed(saved):
                if instance_value is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, instance_value)
