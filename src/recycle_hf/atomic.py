"""Saving that never leaves a half-written result, for recycle-hf's own savers (adapters, training state, the
embedded default model, distilled data): everything is written beside the target, then renamed into place.

The implementation is `checkpoint_code/publishing_recyclegpt.py`: checkpoints carry it as remote code, so their
model saves the same way without recycle-hf installed. This module is where the rest of the package imports it from.
"""

from .checkpoint_code.publishing_recyclegpt import publish_folder, staged_file, staged_folder, write_json_file


__all__ = ["publish_folder", "staged_file", "staged_folder", "write_json_file"]
