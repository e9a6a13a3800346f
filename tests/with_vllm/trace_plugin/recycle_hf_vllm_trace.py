"""The vLLM tests' tracing drafter: recycle-hf's `EagleRecycleForCausalLM`, unchanged, that also writes each call's
inputs and outputs to a file of its own in $RECYCLE_HF_VLLM_TRACE (the tests then compare them with RecycleModule
on the same inputs, in the main environment: tests/with_vllm/main_env_worker.py).

The drafter runs inside vLLM's engine process, so the tests reach it as vLLM reaches any model: a `vllm.general_plugins`
entry point (this folder's dist-info, found when the folder is on PYTHONPATH) registers the class under its own
architecture name, and the tests rewrite a copy of the exported draft folder's `architectures` to that name.
Nothing of this is in the package: it is test code.
"""

from __future__ import annotations

import os

import torch

from recycle_hf.integrations.vllm import EagleRecycleForCausalLM


ARCHITECTURE = "EagleTracedRecycleForCausalLM"
# Read once: vLLM's engine process imports this module with its environment already set.
TRACE_FOLDER = os.environ.get("RECYCLE_HF_VLLM_TRACE")
_count = 0


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:TracedRecycleForCausalLM")


def _save(kind: str, **tensors: torch.Tensor) -> None:
    """One file per call, written at once: vLLM's engine process may be ended by a signal."""
    if not TRACE_FOLDER:
        raise RuntimeError("The tracing drafter needs RECYCLE_HF_VLLM_TRACE=FOLDER in the engine's environment.")
    global _count
    _count += 1
    record = {name: value.detach().cpu().clone() for name, value in tensors.items()}
    torch.save(record, os.path.join(TRACE_FOLDER, f"{os.getpid()}-{_count:06d}-{kind}.pt"))


class TracedRecycleForCausalLM(EagleRecycleForCausalLM):
    def forward(self, input_ids, positions, hidden_states, inputs_embeds=None):
        states, next_states = super().forward(input_ids, positions, hidden_states, inputs_embeds)
        _save("forward", input_ids=input_ids, positions=positions, hidden_states=hidden_states, states=states)
        return states, next_states

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states)
        if logits is not None:
            _save("logits", hidden_states=hidden_states, logits=logits)
        return logits
