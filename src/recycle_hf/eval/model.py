"""`recyclegpt`: an lm-evaluation-harness model that scores and decodes a RecycleGPT model in a chosen mode.

Modes (model argument `mode=`):

- `std`: the base network alone. Log-likelihoods are the base's logits, exactly what lm-eval's `hf` model gives
  for the base checkpoint; generation is plain greedy/sampled decoding (`recycle_mode=None`).
- `rec`: the paper's alternating schedule. A continuation is scored the way alternating decoding would produce it,
  anchored at the context/continuation boundary: its first token by the base's `logits`, the second by the
  module's `recycle_logits`, the third by the base again, and so on, all from one teacher-forced forward pass.
  Generation uses `recycle_mode="alternate"`.
- `verify`: lossless draft-and-verify decoding (`recycle_mode="verify"`); its outputs are the base's, so
  log-likelihoods are scored as in `std`.

Rolling log-likelihoods (perplexity tasks) go through the same scoring; lm-eval cuts a text into windows whose
predicted part is the continuation, so the `rec` schedule restarts at each window's first predicted token.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import resolve_max_length

from ..bench.quality import alternating_schedule_mask
from ..checkpoint_code.configuration_recyclegpt import RecycleGPTConfig
from ..checkpoint_code.draft_shape_recyclegpt import DraftShape, draft_request, draft_request_from_text
from ..checkpoint_code.modeling_recyclegpt import RecycleGPTForCausalLM
from ..defaults import default_base_folder
from ..errors import InputNotFoundError, InvalidInputError
from ..loading import DEFAULT_BASE, default_adapter
from ..local_folders import check_local_folder


EVAL_MODES = ("std", "rec", "verify")
# The `generate(recycle_mode=...)` each evaluation mode decodes with.
GENERATION_MODES = {"std": None, "rec": "alternate", "verify": "verify"}


def alternating_schedule(continuation_logits: torch.Tensor) -> torch.Tensor:
    """Pick, for continuation position i, the base's scores (source 0) when i is even, the module's (1) when odd.

    `continuation_logits` is [continuation_length, 2, vocab]: both sources at every continuation position. The
    schedule is the quality benchmark's (`alternating_schedule_mask`), here on a continuation alone.
    """
    length = continuation_logits.shape[0]
    from_module = alternating_schedule_mask(1, length, continuation_logits.device)
    return continuation_logits[torch.arange(length, device=continuation_logits.device), from_module.long()]


class StopSequencesCriteria(transformers.StoppingCriteria):
    """Stops each row, independently, once its new tokens contain one of `stop_sequences`.

    lm-eval's own criteria keep per-row state by batch position and stop only when every row is done. Recycle
    decoding checks rows in changing groups (rows advance at different rates in verify mode), so this criterion
    keeps no state: each call decodes the last few new tokens of the rows it is given.
    """

    def __init__(self, stop_sequences: list[str], tokenizer: Any, prompt_length: int):
        self.stop_sequences = [stop for stop in stop_sequences if stop]
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        # Two extra tokens: a stop string may be split differently than it encodes on its own (lm-eval does the same).
        lengths = [len(tokenizer.encode(stop, add_special_tokens=False)) for stop in self.stop_sequences]
        self.lookback = max(lengths, default=0) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if not self.stop_sequences:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        recent = input_ids[:, self.prompt_length :][:, -self.lookback :]
        texts = self.tokenizer.batch_decode(recent)
        stopped = [any(stop in text for stop in self.stop_sequences) for text in texts]
        return torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)


@register_model("recyclegpt")
class RecycleGPTLM(HFLM):
    """lm-eval's `HFLM` for a [`RecycleGPTForCausalLM`], evaluated in `mode` "std", "rec" or "verify".

    Model arguments (`--model_args k=v,...`):
        pretrained: a RecycleGPT checkpoint (folder or hub id), or a loaded `RecycleGPTForCausalLM`.
        base, adapter: instead of `pretrained`, a base causal LM (folder or hub id; `gguf_file=` for GGUF bases)
            and a recycle adapter (folder or hub id) saved with `save_adapter`. `base=default` is the embedded
            SmolLM2-135M-Instruct, whose adapter defaults to the shipped one.
        mode: "std" (default), "rec" or "verify".
        num_draft_tokens: drafts per base forward in verify mode, "auto", 0 to 16 or a draft tree (as `generate`
            takes it, or as text: lm-eval passes model arguments as strings; default: the model's).
        Everything else is HFLM's (`dtype`, `batch_size`, `max_length`, `device`, `trust_remote_code`, ...).
    """

    def __init__(
        self,
        pretrained: str | RecycleGPTForCausalLM | None = None,
        base: str | None = None,
        adapter: str | None = None,
        mode: str = "std",
        num_draft_tokens: int | str | list[list[int]] | DraftShape | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in EVAL_MODES:
            raise InvalidInputError(f"mode={mode!r} is not an evaluation mode; use one of {', '.join(EVAL_MODES)}.")
        if kwargs.get("backend", "causal") not in ("causal", "default"):
            raise InvalidInputError("RecycleGPT models are decoder-only: leave out backend= or pass backend=causal.")
        kwargs["backend"] = "causal"
        if isinstance(num_draft_tokens, str):
            num_draft_tokens = draft_request_from_text(num_draft_tokens)
        self.mode = mode
        self.num_draft_tokens = None if num_draft_tokens is None else draft_request(num_draft_tokens)
        self.adapter = _check_model_source(pretrained, base, adapter)
        if base == DEFAULT_BASE:
            base = str(default_base_folder())
        for name, what, required in ((pretrained, "model", "config.json"), (base, "base", "config.json"),
                                     (self.adapter, "adapter", "adapter_config.json")):
            if isinstance(name, str):  # a path that is no folder fails here in one line, not as a Hub repo id
                check_local_folder(name, what, required)
        try:
            super().__init__(pretrained=pretrained if pretrained is not None else base, **kwargs)
        except OSError as error:  # no such Hub repository, no network: a problem with the name given
            if isinstance(error, InputNotFoundError):
                raise
            name = pretrained if pretrained is not None else base
            raise InputNotFoundError(f"Could not load {name!r}: {str(error).splitlines()[0]}") from error
        # By model type, not class: a checkpoint loaded with trust_remote_code brings its own copy of the class.
        if getattr(self.model.config, "model_type", None) != RecycleGPTConfig.model_type:
            raise InvalidInputError(
                f"pretrained={pretrained!r} is a {type(self.model).__name__}, not a RecycleGPT model. Pass a "
                "RecycleGPT checkpoint, or base=<base model>,adapter=<recycle adapter folder>; for the plain base use "
                "lm-eval's `hf` model."
            )
        # HFLM's `logits_cache` argument; rec mode narrows it per request list (`_loglikelihood_tokens`).
        self.logits_cache_requested = self.logits_cache

    # ------------------------------------------------------------------------------------------------- loading
    def _create_model(self, pretrained: str, *args: Any, **kwargs: Any) -> None:
        super()._create_model(pretrained, *args, **kwargs)
        if self.adapter is not None:
            from ..adapter import load_recycle_adapter

            self._model = load_recycle_adapter(self._model, self.adapter)

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        # The context length is the base network's; the RecycleGPT config nests it.
        return resolve_max_length(self.model.config.get_text_config(), self.tokenizer, default=self._DEFAULT_MAX_LENGTH)

    # ------------------------------------------------------------------------------------------------- scoring
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if self.mode == "rec":
            # lm-eval's logits cache lets requests with equal context + continuation[:-1] share one forward and one
            # selection of scores (multiple choice with one-token answers: one forward per question, not per
            # choice). In rec mode the selection depends on where the continuation starts, so the cache is only
            # kept for request lists in which requests that would share also share that boundary.
            self.logits_cache = self.logits_cache_requested and shared_requests_share_boundaries(requests)
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits for right-padded `inps`: [batch, seq, vocab] (std, verify) or [batch, seq, 2, vocab] (rec).

        In rec mode both sources are returned for every position (index 0: base `logits`, 1: `recycle_logits`);
        `_select_cont_toks` applies the schedule once it knows where each continuation starts. The extra axis sits
        before the vocabulary, so lm-eval's log-softmax over the last axis normalises each source on its own.
        """
        with torch.no_grad(), self._autocast():
            if self.mode == "rec":
                outputs = self.model(input_ids=inps, return_recycle_logits=True)
                return torch.stack([outputs.logits, outputs.recycle_logits], dim=2)
            return self.model.base_lm(input_ids=inps).logits

    def _select_cont_toks(
        self, logits: torch.Tensor, contlen: int | None = None, inplen: int | None = None
    ) -> torch.Tensor:
        continuation_logits = super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)
        if self.mode != "rec":
            return continuation_logits
        return alternating_schedule(continuation_logits)

    # ---------------------------------------------------------------------------------------------- generation
    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        # Greedy unless the task asks for sampling, as in HFLM: temperature 0 means do_sample=False.
        generation_kwargs["temperature"] = generation_kwargs.get("temperature", 0.0)
        if generation_kwargs["temperature"] == 0.0 and generation_kwargs.get("do_sample") is None:
            generation_kwargs["do_sample"] = False
        if generation_kwargs.get("do_sample") is False and generation_kwargs["temperature"] == 0.0:
            generation_kwargs.pop("temperature")
        if self.num_draft_tokens is not None:
            generation_kwargs["num_draft_tokens"] = self.num_draft_tokens
        stopping_criteria = transformers.StoppingCriteriaList(
            [StopSequencesCriteria(stop, self.tokenizer, prompt_length=context.shape[1])]
        )
        with self._autocast():
            return self.model.generate(
                input_ids=context,
                max_length=max_length,
                stopping_criteria=stopping_criteria,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                recycle_mode=GENERATION_MODES[self.mode],
                **generation_kwargs,
            )

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info.update({"recycle_eval_mode": self.mode, "recycle_adapter": self.adapter})
        return info


def shared_requests_share_boundaries(requests: list[tuple[tuple[str, str], list[int], list[int]]]) -> bool:
    """Whether every group of requests with equal context + continuation[:-1] (lm-eval's logits-cache key) has one
    context length, so that the alternating schedule, anchored at the context/continuation boundary, is the same
    for every request of the group."""
    context_lengths: dict[tuple[int, ...], int] = {}
    for _, context_ids, continuation_ids in requests:
        key = tuple(context_ids + continuation_ids[:-1])
        if context_lengths.setdefault(key, len(context_ids)) != len(context_ids):
            return False
    return True


def _check_model_source(pretrained: Any, base: str | None, adapter: str | None) -> str | None:
    """Validate the pretrained / base + adapter combination; returns the adapter (folder or hub id) to load, if any."""
    if pretrained is not None and (base is not None or adapter is not None):
        raise InvalidInputError(
            "Pass either pretrained=<RecycleGPT checkpoint> or base=<base model>,adapter=<folder>, not both."
        )
    if pretrained is None and base is None:
        raise InvalidInputError(
            "Name the model: pretrained=<RecycleGPT checkpoint>, or base=<base model>,adapter=<recycle adapter folder> "
            f"(base={DEFAULT_BASE} is the embedded SmolLM2-135M-Instruct with its shipped adapter)."
        )
    if base is None:
        return None
    if adapter is not None:
        return adapter
    adapter = default_adapter(base)
    if adapter is None:
        raise InvalidInputError(
            f"base={base!r} needs adapter=<recycle adapter folder or hub id> (saved with save_adapter)."
        )
    return adapter
