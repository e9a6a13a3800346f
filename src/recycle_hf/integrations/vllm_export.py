# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""`recycle-hf export vllm`: a recycle module as a draft folder vLLM serves with `method="eagle"`.

The folder holds `config.json` (the module's blocks as a config of the base's own family, `architectures`
naming the plugin's drafter, `integrations/vllm.py`), `model.safetensors` (the module's weights under the names the
drafter loads, its draft vocabulary as `draft_token_ids`; no embedding or LM head: vLLM shares the target's) and a
README with the serve command. The target vLLM serves is the base the module was trained on; where that base is not
a plain folder of its family already (a merged RecycleGPT checkpoint, LoRA trained on the base), it is written as
one beside the draft folder. Everything is checked before anything is written, and both folders are written by
staging and renaming (`recycle_hf.atomic`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._version import __version__
from ..atomic import staged_folder
from ..errors import InvalidInputError
from .vllm import ARCHITECTURE, SUPPORTED_FAMILIES, unsupported_family_message


logger = logging.getLogger(__name__)

DRAFT_WEIGHTS_NAME = "model.safetensors"


@dataclass
class VllmExport:
    """What an export wrote: the draft folder, the target folder vLLM serves it against, and the serve command."""

    draft_folder: Path
    target_folder: Path
    serve_command: str


def check_exportable(model: Any) -> None:
    """Refuse, before anything is written, a module the vLLM drafter cannot compute exactly."""
    base_config = model.config.base_config
    family = base_config.model_type
    if family not in SUPPORTED_FAMILIES:
        raise InvalidInputError(unsupported_family_message(family))
    if getattr(base_config, "rms_norm_eps", None) is None:
        raise InvalidInputError(f"The {family} base has no rms_norm_eps: the vLLM drafter needs RMSNorm-style norms.")


def draft_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The module's weights under the drafter's names: `mtp_block.N.` becomes `layers.N.`, the rest keep theirs."""
    tensors = {}
    for name, tensor in model.recycle_module.state_dict().items():
        if name.startswith("mtp_block."):
            name = "layers." + name[len("mtp_block."):]
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


def draft_config(model: Any, source: str) -> dict[str, Any]:
    """config.json of the draft folder: the module's blocks as a config of the base's family."""
    module_config = model.config.get_recycle_module_config()
    config = module_config.to_dict()
    for name in ("auto_map", "_name_or_path", "_attn_implementation_autoset", "transformers_version"):
        config.pop(name, None)
    config["architectures"] = [ARCHITECTURE]
    # The drafter rotates vLLM's position i as i + 1 (see integrations/vllm.py): one more position than the base.
    if config.get("max_position_embeddings"):
        config["max_position_embeddings"] += 1
    config["dtype"] = str(model.get_output_embeddings().weight.dtype).removeprefix("torch.")
    config["recycle_hf"] = {"version": __version__, "source": source, "num_layers": module_config.num_hidden_layers,
                            "draft_vocab_size": int(model.draft_token_ids.numel())
                            if model.draft_token_ids is not None else None}
    return config


def serve_command(target_folder: Path, draft_folder: Path, num_speculative_tokens: int) -> str:
    speculative = json.dumps({"method": "eagle", "model": str(draft_folder),
                              "num_speculative_tokens": num_speculative_tokens})
    return f"vllm serve {target_folder} --speculative-config '{speculative}'"


_README = """# recycle-hf module for vLLM

A recyclable module (recycle-hf {version}) exported from {source} as a vLLM EAGLE-style drafter. vLLM finds the
drafter class `{architecture}` through recycle-hf's plugin: install recycle-hf beside vLLM (`pip install
"recycle-hf[vllm]"`) wherever vLLM runs.

Serve it against its base ({target}):

    {serve}

or offline:

    from vllm import LLM
    llm = LLM(model="{target}", speculative_config={{"method": "eagle", "model": "{draft}",
              "num_speculative_tokens": {k}}})

Outputs are the base's own (vLLM verifies every draft); the module only makes decoding faster.
"""


def export_for_vllm(
    model: Any, tokenizer: Any, output: str | Path, source: str, target_folder: str | Path | None,
    base_output: str | Path | None = None, num_speculative_tokens: int = 3,
) -> VllmExport:
    """Write the draft folder for `model`'s module to `output`; `target_folder` is the plain base folder vLLM serves
    (None: write the base to `base_output`, for merged checkpoints and bases that carry LoRA)."""
    check_exportable(model)
    output = Path(output)
    if output.is_file():
        raise InvalidInputError(f"--output {output} is a file; give a folder path for the draft.")
    if target_folder is None:
        if base_output is None:
            base_output = output.with_name(output.name + "-base")
        base_output = Path(base_output)
        if base_output.is_file():
            raise InvalidInputError(f"--base-output {base_output} is a file; give a folder path for the base.")
        with staged_folder(base_output) as staging:
            model.base_lm.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        target_folder = base_output
    target_folder = Path(target_folder).resolve()
    draft_folder = output.resolve()
    command = serve_command(target_folder, draft_folder, num_speculative_tokens)
    with staged_folder(output) as staging:
        save_file(draft_state_dict(model), staging / DRAFT_WEIGHTS_NAME, metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(draft_config(model, source), indent=2, sort_keys=True) + "\n")
        (staging / "README.md").write_text(_README.format(
            version=__version__, source=source, architecture=ARCHITECTURE, target=target_folder, serve=command,
            draft=draft_folder, k=num_speculative_tokens))
    logger.info("Exported the module to %s (target %s).", draft_folder, target_folder)
    return VllmExport(draft_folder=draft_folder, target_folder=target_folder, serve_command=command)


__all__ = ["DRAFT_WEIGHTS_NAME", "VllmExport", "check_exportable", "draft_config", "draft_state_dict",
           "export_for_vllm", "serve_command"]
