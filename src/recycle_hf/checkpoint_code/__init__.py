"""The remote code a RecycleGPT checkpoint carries.

Every file here is copied beside the weights by `save_pretrained` (transformers follows the model file's relative
imports), so each imports only the standard library, torch, transformers and its siblings here: a machine that
downloads a checkpoint runs them without recycle-hf (`trust_remote_code=True`). Nothing outside this folder ships
inside a checkpoint; tests/test_remote_code.py holds the folder to that rule.
"""
