"""Saving that never leaves a half-written result: everything is written beside the target, then renamed into place.

- Folders (checkpoints, adapters, caches): `staged_folder(target, replaced=...)` and `publish_folder`. They live in
  `modeling_recyclegpt.py` because checkpoints carry that file as remote code, which must stand alone; the rest of
  recycle-hf shares that one implementation through this module.
- Single files: `staged_file(path)`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .modeling_recyclegpt import publish_folder, staged_folder


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole file to.

    When the `with` block ends without an error the file is renamed to `path` (atomic: readers see the old file or
    the new one); otherwise it is deleted and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


__all__ = ["publish_folder", "staged_file", "staged_folder"]
