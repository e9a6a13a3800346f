"""recycle-hf: RecycleGPT decoding for Hugging Face causal language models."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ._version import __version__
from .adapter import load_recycle_adapter
from .checkpoint_code.configuration_recyclegpt import TESTED_BASE_MODEL_TYPES, RecycleGPTConfig
from .checkpoint_code.generation_recyclegpt import DEFAULT_NUM_DRAFT_TOKENS, RECYCLE_MODES, RecycleGenerateOutput
from .checkpoint_code.modeling_recyclegpt import RecycleCache, RecycleGPTForCausalLM, RecycleGPTOutput
from .graft import graft_recycle_module


# `save_pretrained` copies the remote-code files and writes `auto_map`, so checkpoints load without this package.
RecycleGPTConfig.register_for_auto_class()
RecycleGPTForCausalLM.register_for_auto_class("AutoModel")
RecycleGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
# In-process loading of checkpoints without `trust_remote_code`.
AutoConfig.register("recyclegpt", RecycleGPTConfig, exist_ok=True)
AutoModel.register(RecycleGPTConfig, RecycleGPTForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(RecycleGPTConfig, RecycleGPTForCausalLM, exist_ok=True)

__all__ = [
    "DEFAULT_NUM_DRAFT_TOKENS",
    "RECYCLE_MODES",
    "TESTED_BASE_MODEL_TYPES",
    "RecycleCache",
    "RecycleGPTConfig",
    "RecycleGPTForCausalLM",
    "RecycleGPTOutput",
    "RecycleGenerateOutput",
    "__version__",
    "graft_recycle_module",
    "load_recycle_adapter",
]
