"""Integrations with serving engines: `vllm` (a drafter plugin for vLLM's speculative decoding) and the export of a
recycle module to the folder layout such an engine loads (`vllm_export`)."""
