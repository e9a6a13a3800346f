# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""What recycle decoding keeps between calls, in one place.

`DecodingRuntime` is the per-model state: the lock recycle-mode calls on the model hold, the static cache pool the
fast path reuses, the draft shapes `num_draft_tokens="auto"` chose, and the redirected forwards of the model's
layers. `decoding_runtime(model)` finds or makes it. It is kept beside the model (weakly keyed: it goes with the
model), not on it, so that a model still deep-copies, pickles and saves as transformers expects.

`SharedPatches` is the one way the fast path changes shared objects (layer forwards, attention settings on configs)
while it decodes: counted, so that nested and concurrent calls install a patch once and remove it when the last
user leaves; and thread-scoped, so that only threads inside a patched context take the patched path. Its counts are
kept by patched object, not by model, because models can share layers (two modules grafted onto one base).

This file is remote code: a checkpoint folder carries it, so it imports only torch and the standard library.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class DecodingRuntime:
    """One model's decoding state between calls (see the module docstring)."""

    # Recycle-mode calls on one model run one at a time (re-entrant: a streamer may call generate).
    lock: threading.RLock = field(default_factory=threading.RLock)
    # (batch size, slots, device, dtype) -> (base cache, module cache); one size at a time.
    static_caches: dict[tuple, tuple[Any, Any]] = field(default_factory=dict)
    # The model's `DraftLengthChoices` (draft_length_recyclegpt.py), made on first use.
    draft_choices: Any = None
    # layer -> its redirected forward; kept so that a compiled step sees the same object every call (it guards on it).
    layer_forwards: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def cache_pair(self, key: tuple, make: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """The pooled caches for `key`, made (after freeing any other size: the memory of a large batch is not kept
        behind a small one) when missing."""
        with self.lock:
            if key not in self.static_caches:
                self.static_caches.clear()
                self.static_caches[key] = make()
            return self.static_caches[key]

    def free_caches(self) -> None:
        """Drop the pooled static caches; the next fast-path call allocates them again."""
        with self.lock:
            self.static_caches.clear()


_runtimes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_runtimes_guard = threading.Lock()


def decoding_runtime(model: torch.nn.Module) -> DecodingRuntime:
    """`model`'s `DecodingRuntime`, made on first use."""
    with _runtimes_guard:
        runtime = _runtimes.get(model)
        if runtime is None:
            runtime = _runtimes[model] = DecodingRuntime()
        return runtime


def free_decoding_caches(model: torch.nn.Module) -> None:
    """Free the static caches the fast path keeps for `model` between calls (`model.free_decoding_caches()`)."""
    with _runtimes_guard:
        runtime = _runtimes.get(model)
    if runtime is not None:
        runtime.free_caches()


class SharedPatches:
    """Patches on shared objects, counted across contexts and active only in the threads inside one."""

    def __init__(self) -> None:
        self._users: dict[int, tuple[object, int]] = {}  # id(object) -> (object, contexts using it); holds it alive
        self._guard = threading.Lock()
        self._threads = threading.local()

    def active_in_this_thread(self) -> bool:
        # A compiled step is traced inside the context and runs only there: no thread check in its graph.
        return torch.compiler.is_compiling() or getattr(self._threads, "depth", 0) > 0

    @contextlib.contextmanager
    def applied(
        self, targets: Iterable[object], install: Callable[[Any], None], remove: Callable[[Any], None]
    ) -> Iterator[None]:
        """`install(target)` for each target no other context patches yet; on exit `remove(target)` for each that
        no other context still uses."""
        targets = list({id(target): target for target in targets}.values())
        with self._guard:
            for target in targets:
                _, users = self._users.get(id(target), (target, 0))
                if users == 0:
                    install(target)
                self._users[id(target)] = (target, users + 1)
        self._threads.depth = getattr(self._threads, "depth", 0) + 1
        try:
            yield
        finally:
            self._threads.depth -= 1
            with self._guard:
                for target in targets:
                    _, users = self._users[id(target)]
                    if users == 1:
                        del self._users[id(target)]
                        remove(target)
                    else:
                        self._users[id(target)] = (target, users - 1)


__all__ = ["DecodingRuntime", "SharedPatches", "decoding_runtime", "free_decoding_caches"]
