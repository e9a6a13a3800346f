# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Whether a name means a local folder or a Hub repository, and one clear error for a local folder that is not there."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .checkpoint_code.publishing_recyclegpt import interrupted_save_version
from .errors import InputNotFoundError, InvalidInputError


def is_hub_repo_id(name: str) -> bool:
    """Whether `name` can be a Hugging Face Hub repository id (`name` or `owner/name`) rather than only a path."""
    if name.startswith((".", "~", "/", "\\")) or os.path.isabs(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_local_folder(name: str, what: str, required_file: str) -> None:
    """Raise a clear error when `name` means a local folder that does not exist or lacks `required_file`.

    Names that can only be paths (absolute, `./...`, more than one `/`) must exist; a name that can be a Hub
    repository id and is no local folder is left to the Hub download. Without this, transformers answers a missing
    folder with "Repo id must be in the form ..." and a folder without config.json with "Should have a model_type".
    """
    path = Path(name)
    if path.is_dir():
        if not (path / required_file).is_file():
            raise InputNotFoundError(f"The {what} folder {path} has no {required_file}.")
        return
    if path.exists():
        raise InvalidInputError(f"The {what} {path} is a file; give the folder that holds {required_file}.")
    version = interrupted_save_version(path)
    if version is not None:
        raise InputNotFoundError(f"The {what} folder {path} does not exist: a save of it was interrupted. Its newest "
                                 f"complete version is {version}; rename that folder to {path.name}.")
    if not is_hub_repo_id(name):
        raise InputNotFoundError(f"The {what} folder {path} does not exist.")


__all__ = ["check_local_folder", "is_hub_repo_id"]
