"""Prompts written by the base model itself, for self-distillation data of any variety and size.

An instruction-tuned model given its chat template up to the start of a user turn, and nothing after it, writes
a user's message: the kind of request it was tuned on, over whatever topics it knows (Magpie, Xu et al. 2024,
arXiv 2406.08464). Sampled many times, this gives prompts on far more topics than templates can, and needs no
data: the module trained on the base's answers to them sees the topics a user may ask about, not a fixed list.

A sampled message is kept only when it ended its turn (an end-of-turn token within `max_new_tokens`), is not a
repeat, and contains none of `exclude_terms` (so that held-out topics stay held out) and is none of
`exclude_prompts`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .atomic import staged_file
from .distill import continuation_lengths, end_of_turn_token_ids
from .errors import InvalidInputError


logger = logging.getLogger(__name__)

# A placeholder user message, split off the rendered template to find where a user's message begins.
_PLACEHOLDER = "\x00user-message\x00"
# Messages shorter than this many words are greetings or fragments, not requests.
MIN_WORDS = 3


def user_turn_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The chat template rendered up to where a user's message begins (system turn included, as the template
    writes it when no system message is given)."""
    if not tokenizer.chat_template:
        raise InvalidInputError(
            "Self-written prompts need an instruction model with a chat template; this tokenizer has none."
        )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _PLACEHOLDER}], tokenize=False)
    if _PLACEHOLDER not in rendered:
        raise InvalidInputError("The tokenizer's chat template does not show the user's message verbatim.")
    return rendered.split(_PLACEHOLDER)[0]


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


class PromptFilter:
    """Which sampled messages become prompts: long enough, new, and free of the excluded terms and prompts."""

    def __init__(self, exclude_terms: Iterable[str] = (), exclude_prompts: Iterable[str] = ()) -> None:
        self.exclude_terms = [term.casefold() for term in exclude_terms if term.strip()]
        self.seen = {_normalised(prompt) for prompt in exclude_prompts}

    def accept(self, message: str) -> bool:
        """True (and remembered, so a repeat is refused) when `message` may be a prompt."""
        key = _normalised(message)
        if len(key.split()) < MIN_WORDS or key in self.seen:
            return False
        if any(term in key for term in self.exclude_terms):
            return False
        self.seen.add(key)
        return True


@torch.no_grad()
def sample_user_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    exclude_terms: Iterable[str] = (),
    exclude_prompts: Iterable[str] = (),
    max_samples: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Up to `count` distinct user messages sampled from `model` after its template's user-turn prefix.

    Draws batches of `batch_size` until `count` are kept or `max_samples` (default 4 x count) were drawn; fewer
    than `count` is logged as a warning. Seeded: the same model, settings and seed give the same prompts.
    """
    if count < 1:
        raise InvalidInputError(f"count must be at least 1, got {count}.")
    max_samples = 4 * count if max_samples is None else max_samples
    eos_token_ids = end_of_turn_token_ids(model, tokenizer)
    if not eos_token_ids:
        raise InvalidInputError("The tokenizer has no end-of-turn (eos) token, so a sampled message never ends.")
    prefix = tokenizer(user_turn_prefix(tokenizer), return_tensors="pt", add_special_tokens=False)["input_ids"]
    prefix = prefix.to(model.device)
    keep = PromptFilter(exclude_terms, exclude_prompts)
    prompts: list[str] = []
    set_seed(seed)
    drawn = 0
    with tqdm(total=count, desc="self-prompts", unit="prompt") as progress:
        while len(prompts) < count and drawn < max_samples:
            rows = min(batch_size, max_samples - drawn)
            input_ids = prefix.expand(rows, -1)
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_ids,
                pad_token_id=eos_token_ids[0],
            )
            drawn += rows
            new_tokens = sequences[:, prefix.shape[1] :]
            lengths = continuation_lengths(new_tokens, eos_token_ids).tolist()
            for tokens, length in zip(new_tokens, lengths):
                ended_its_turn = int(tokens[length - 1]) in eos_token_ids
                if not ended_its_turn or len(prompts) == count:
                    continue
                message = tokenizer.decode(tokens[: length - 1], skip_special_tokens=True).strip()
                if keep.accept(message):
                    prompts.append(message)
                    progress.update(1)
    if len(prompts) < count:
        logger.warning("Kept %d of the %d prompts asked for after %d samples.", len(prompts), count, drawn)
    return prompts


def write_prompts(prompts: list[str], output_path: str | os.PathLike) -> None:
    """Prompts as JSON lines ({"prompt": ...}; a message may span lines), written whole or not at all."""
    with staged_file(Path(output_path)) as temporary_path, temporary_path.open("w") as output:
        for prompt in prompts:
            output.write(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n")
