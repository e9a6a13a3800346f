# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Saving that never leaves a half-written result: everything is written beside its target, then renamed into place.

- Folders (checkpoints, adapters, caches): `staged_folder(target, replaced=...)` writes a complete new version
  beside `target` and `publish_folder` puts it in `target`'s place; `interrupted_save_version` and
  `remove_stale_siblings` find and clear what a killed save left.
- Single files (the calibration records): `staged_file(path)`, `write_json_file(path, data)`, and `locked_file(path)`
  around a read-change-write of a file that several processes update.
- `check_safetensors_file`: whether a weight file is whole.

This file is remote code: a checkpoint folder carries it (its model saves and loads through it), so it imports only
the standard library, transformers' logging and its sibling files. recycle-hf's own savers use it through
`recycle_hf.atomic`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from transformers.utils import logging

from .configuration_recyclegpt import RecycleGPTCheckpointError


logger = logging.get_logger(__name__)


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise a `RecycleGPTCheckpointError` naming `path` if it is not a whole safetensors file (e.g. truncated).

    Reads only the header (8-byte length, then JSON) and compares the size it describes with the file's size;
    tensor values are not checked.
    """
    size = os.path.getsize(path)
    problem = None
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little") if size >= 8 else None
        if header_length is None or 8 + header_length > size:
            problem = f"it holds {size} bytes, fewer than its header needs"
        else:
            try:
                header = json.loads(handle.read(header_length))
                data_end = max(
                    (int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
                    default=0,
                )
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
                problem = f"its header is unreadable ({type(error).__name__}: {error})"
            else:
                if 8 + header_length + data_end > size:
                    problem = f"it holds {size} bytes, its header describes {8 + header_length + data_end}"
    if problem is not None:
        raise RecycleGPTCheckpointError(
            f"{path} is not a complete safetensors file ({problem}): it is truncated or damaged. Save or download "
            "it again."
        )


_CHECKPOINT_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def is_checkpoint_file(name: str) -> bool:
    """Whether a file of a checkpoint folder belongs to the checkpoint itself (config, weights), rather than to what
    a user keeps beside it (a README, tokenizer files, ...)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in _CHECKPOINT_FILE_PATTERNS)


# Hidden siblings of a target folder while it is saved, each named `.NAME.TAG-PID-TIME-RANDOM`: `saving` (being
# written), `new` (complete, about to take the target's place), `old` (the previous version, complete, until it is
# renamed `deleting` and removed). The process id tells a later save which leftovers belong to a save that died;
# the time (ns, hex) orders versions.
_SIBLING_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<tag>saving|new|old|deleting)-(?P<pid>\d+)-(?P<time>[0-9a-f]+)-[0-9a-f]+$"
)


_LEGACY_OLD = re.compile(r"^old-[0-9a-f]{12}$")


def _sibling(target: Path, tag: str) -> Path:
    """An unused hidden name beside `target` (same filesystem, so renames between the two are atomic)."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{time.time_ns():x}-{uuid.uuid4().hex[:8]}")


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_siblings(target: str | os.PathLike) -> list[Path]:
    """Remove the hidden folders that saves of `target` left when they died (a killed process cannot clean up);
    never those of a save that still runs (its process is alive) or of this process. Returns what was removed."""
    target = Path(os.path.realpath(target))
    if os.name != "posix" or not target.parent.is_dir():
        return []  # liveness by process id is checked with kill(pid, 0), which means something else on Windows
    removed = []
    for entry in target.parent.iterdir():
        match = _SIBLING_NAME.match(entry.name)
        if match is None or match["name"] != target.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_is_alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        logger.info("Removed %d folders that interrupted saves of %s left behind.", len(removed), target)
    return removed


def _holds_complete_weights(folder: Path) -> bool:
    """A folder with a config and whole safetensors weights (every shard its index names, none truncated)."""
    if not any((folder / name).is_file() for name in ("config.json", "adapter_config.json")):
        return False
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return False
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = set(json.loads(index.read_text())["weight_map"].values())
            if not all((folder / shard).is_file() for shard in shards):
                return False
        for path in weights:
            check_safetensors_file(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecycleGPTCheckpointError):
        return False
    return True


def interrupted_save_version(target: str | os.PathLike) -> Path | None:
    """Where `target` is missing because a save was interrupted between its renames: the newest complete version
    beside it (the new one, if it was written whole, else the previous one), or None."""
    target = Path(os.path.realpath(target))
    if not target.parent.is_dir():
        return None
    candidates = []
    for entry in target.parent.iterdir():
        match = _SIBLING_NAME.match(entry.name)
        if match is not None and match["name"] == target.name and match["tag"] in ("new", "old"):
            candidates.append((int(match["time"], 16), entry))
        elif entry.name.startswith(f".{target.name}.old-") and _LEGACY_OLD.match(entry.name[len(target.name) + 2:]):
            candidates.append((entry.stat().st_mtime_ns, entry))  # named by recycle-hf before December 2026
    for _, entry in sorted(candidates, reverse=True):
        if entry.is_dir() and _holds_complete_weights(entry):
            return entry
    return None


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, replaced: Callable[[str], bool] = lambda name: True) -> Iterator[Path]:
    """A fresh empty folder beside `target`: write the complete new version into it inside the `with` block.

    When the block ends without an error the folder is published over `target` (`publish_folder`, which see for
    `replaced`); the staging folder is removed in every case, so a failed write leaves `target` as it was. After a
    successful publish, what earlier saves of `target` left when they were killed is removed.
    """
    # The real path: a symlinked target is replaced behind its link, and staging lies beside the real folder.
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "saving")
    os.mkdir(staging)
    try:
        yield staging
        publish_folder(staging, target, replaced)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already gone after a successful publish
    remove_stale_siblings(target)


def publish_folder(staging: Path, target: Path, replaced: Callable[[str], bool] = lambda name: True) -> None:
    """Put the complete folder `staging` (a sibling of `target`) in the place of `target`, keeping the old one
    until the new one is in place.

    Entries of the old `target` that `staging` lacks are carried into the new version (files hard-linked, or copied
    where links fail; folders rebuilt the same way), except those whose name `replaced(name)` accepts: those belong
    to the old version (e.g. weight shards that the new one no longer has) and go with it. By default every entry
    does: the new folder replaces the old one whole.

    Steps, and what a failure at each leaves (a raised error; a killed process leaves the same, plus hidden folders
    beside `target` that the next save of it removes):
    1. carry the entries, copy the folder's permissions onto staging, rename it `.NAME.new-*` (complete): `target`
       untouched;
    2. rename `target` to `.NAME.old-*`: nothing has moved;
    3. rename `.NAME.new-*` to `target`: on an error the old folder is renamed back, so `target` is the old version;
       only if that fails too (or the process dies between steps 2 and 3) is `target` missing, and both versions
       lie complete beside it; loading `target` then names the newest (`interrupted_save_version`);
    4. rename the old folder `.NAME.deleting-*` and delete it: `target` is the new version already; a leftover is
       logged, not raised. (A `.old-*` folder is never partly deleted, so it can always be restored.)
    Nothing else may write into `target` meanwhile: what it wrote could land in the old folder.
    """
    target = Path(os.path.realpath(target))
    if not target.exists():
        os.replace(staging, target)
        return
    for entry in sorted(target.iterdir()):
        if not replaced(entry.name) and not os.path.lexists(staging / entry.name):
            _carry(entry, staging / entry.name)
    shutil.copymode(target, staging)
    complete = _sibling(target, "new")
    os.replace(staging, complete)
    # A process working inside `target` would be left in the deleted old folder: it follows the new one.
    working_directory = None
    with contextlib.suppress(OSError):  # the process may have no working directory at all
        if Path(os.getcwd()).is_relative_to(target):
            working_directory = os.getcwd()
    old = _sibling(target, "old")
    try:
        os.replace(target, old)
    except BaseException:
        shutil.rmtree(complete, ignore_errors=True)
        raise
    try:
        os.replace(complete, target)
    except BaseException as error:
        try:
            os.replace(old, target)
        except BaseException:
            raise OSError(
                f"Publishing {target} failed ({error!r}) and the previous version could not be put back: it is "
                f"complete at {old}; rename it to {target.name}."
            ) from error
        shutil.rmtree(complete, ignore_errors=True)
        raise
    if working_directory is not None:
        with contextlib.suppress(OSError):
            os.chdir(working_directory)
    try:
        deleting = _sibling(target, "deleting")
        os.replace(old, deleting)
        shutil.rmtree(deleting)
    except OSError as error:
        logger.warning("Published %s; could not delete the previous version beside it (%s).", target, error)


def _carry(source: Path, destination: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, destination)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    # A hard link costs no space or time, and the old folder's copy is deleted right after the swap anyway.
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


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


def write_json_file(path: str | os.PathLike, data: object) -> None:
    """Write `data` as the whole JSON file `path`, through `staged_file`."""
    with staged_file(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))


@contextlib.contextmanager
def locked_file(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock beside `path` while one process reads, changes and rewrites it: processes that add entries
    at once never lose each other's (POSIX `flock`; elsewhere no lock, and writes stay atomic)."""
    try:
        import fcntl
    except ImportError:  # Windows: a concurrent entry may be measured again
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "check_safetensors_file",
    "interrupted_save_version",
    "is_checkpoint_file",
    "locked_file",
    "publish_folder",
    "remove_stale_siblings",
    "staged_file",
    "staged_folder",
    "write_json_file",
]
