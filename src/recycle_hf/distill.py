"""Self-distillation data: continuations the base model generates itself, so the module learns its distribution.

Also the prompt rules every generating command shares: how prompt files are read, how a prompt is wrapped in the
chat template, and where a generated continuation ends.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .atomic import staged_file
from .data import read_json_lines
from .errors import InputNotFoundError, InvalidInputError
from .loading import ensure_pad_token


logger = logging.getLogger(__name__)


def read_prompts(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Prompts from `.txt` files (one per non-empty line) and `.jsonl` files (a "prompt" or "text" field)."""
    paths = [Path(path) for path in paths]
    prompts: list[str] = []
    for path in paths:
        if not path.is_file():
            raise InputNotFoundError(f"Prompt file {path} does not exist (or is not a file).")
        if path.suffix == ".jsonl":
            for line_number, record in read_json_lines(path):
                prompt = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
                if not isinstance(prompt, str):
                    raise InvalidInputError(
                        f"{path}:{line_number}: each JSON line needs a string 'prompt' or 'text' field."
                    )
                prompts.append(prompt)
        else:
            prompts.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not prompts:
        raise InvalidInputError(f"No prompts found in {', '.join(map(str, paths))}.")
    return prompts


def continuation_lengths(new_tokens: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """Per row of generated tokens, how many are real: up to and including the first EOS, else all (what follows
    an EOS is padding)."""
    is_eos = torch.zeros_like(new_tokens, dtype=torch.bool)
    for eos_token_id in eos_token_ids:
        is_eos |= new_tokens == eos_token_id
    width = new_tokens.shape[1]
    positions = torch.arange(width, device=new_tokens.device).expand_as(new_tokens)
    first_eos = torch.where(is_eos, positions, torch.full_like(positions, width)).min(dim=1).values
    return torch.clamp(first_eos + 1, max=width)


def end_of_turn_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end a turn: the generation config's eos tokens (a chat model's end-of-turn token is often one of
    several, e.g. Llama 3's <|eot_id|>) and the tokenizer's eos token."""
    return end_of_turn_ids(model.generation_config, tokenizer)


def end_of_turn_ids(generation_config: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """`end_of_turn_token_ids` from a generation config (for engines that have no transformers model)."""
    configured = getattr(generation_config, "eos_token_id", None)
    configured = [] if configured is None else configured if isinstance(configured, list) else [configured]
    tokenizer_eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return list(dict.fromkeys(int(token) for token in configured + tokenizer_eos))


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool) -> str:
    """The prompt as the model sees it: wrapped in the chat template when the tokenizer has one."""
    if use_chat_template and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


@torch.no_grad()
def distill_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    output_path: str | os.PathLike,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    use_chat_template: bool = True,
    **generate_kwargs,
) -> int:
    """Generate a continuation for every prompt with `model` itself and write JSON lines.

    Each line holds "prompt" (as given), "completion" and "text" (formatted prompt + completion, the string to
    train on). Written to a temporary file renamed into place at the end, so an interrupted run leaves no partial
    file under `output_path`. Returns the number of generated tokens.
    """
    output_path = Path(output_path)
    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer)
    eos_token_ids = end_of_turn_token_ids(model, tokenizer)
    # Shorter prompts first so that batches pad little.
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    generated_tokens = 0
    with staged_file(output_path) as temporary_path, temporary_path.open("w") as output:
        for start in tqdm(range(0, len(order), batch_size), desc="distill", unit="batch"):
            batch_prompts = [prompts[index] for index in order[start : start + batch_size]]
            formatted = [format_prompt(tokenizer, prompt, use_chat_template) for prompt in batch_prompts]
            inputs = tokenizer(formatted, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sequences = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **generate_kwargs
            )
            new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
            lengths = continuation_lengths(new_tokens, eos_token_ids).tolist()
            for prompt, prefix, tokens, length in zip(batch_prompts, formatted, new_tokens, lengths):
                tokens = tokens[:length]
                generated_tokens += len(tokens)
                completion = tokenizer.decode(tokens, skip_special_tokens=False)
                record = {"prompt": prompt, "completion": completion, "text": prefix + completion}
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("Wrote %d continuations (%d tokens) to %s", len(prompts), generated_tokens, output_path)
    return generated_tokens
