# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Run vLLM's offline engine once on token-id prompts, in a process of its own: `python -m
recycle_hf.integrations.vllm_engine SPEC.json RESULT.json`.

Used by the vLLM tests, `benchmarks/vllm_speed.py` and `recycle-hf distill --engine vllm`: vLLM's `LLM` starts an
engine process (spawn) and pins its own transformers, so the callers start it through this entry rather than in
their own process. The spec names the target folder, the draft (an exported recycle folder, "ngram", or none), k,
the prompts as token ids, and the sampling and engine settings; the result holds the generated token ids, the
seconds `generate` took (after an untimed warm-up when asked), and vLLM's spec-decode counters.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def speculative_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    draft, k = spec.get("draft"), spec.get("num_speculative_tokens", 3)
    if not draft:
        return None
    if draft == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": spec.get("prompt_lookup_max", 4),
                "prompt_lookup_min": spec.get("prompt_lookup_min", 2)}
    return {"method": "eagle", "model": str(draft), "num_speculative_tokens": k}


def spec_decode_counters(llm: Any) -> dict[str, Any]:
    counters = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            counters[metric.name.removeprefix("vllm:")] = getattr(metric, "value", None) or getattr(metric, "values",
                                                                                                     None)
    return counters


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine, the spec's prompts (all at once, or one request at a time with `sequential`)."""
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model=str(spec["model"]),
        dtype=spec.get("dtype", "float32"),
        max_model_len=spec.get("max_model_len", 1024),
        enforce_eager=spec.get("enforce_eager", True),
        speculative_config=speculative_config(spec),
        max_num_seqs=spec.get("max_num_seqs", 256),
        skip_tokenizer_init=spec.get("skip_tokenizer_init", False),
        disable_log_stats=False,
        seed=spec.get("seed", 0),
    )
    start_seconds = time.perf_counter() - started
    sampling = SamplingParams(
        temperature=spec.get("temperature", 0.0), max_tokens=spec["max_tokens"], seed=spec.get("seed", 0),
        stop_token_ids=spec.get("stop_token_ids"), ignore_eos=spec.get("ignore_eos", False),
        skip_special_tokens=False, detokenize=not spec.get("skip_tokenizer_init", False),
    )
    if "batches" in spec:  # a benchmark: several timed batches on one engine
        return {"start_seconds": start_seconds, "threads": os.environ.get("OMP_NUM_THREADS"),
                "batches": {batch["name"]: _timed_batch(llm, batch, sampling) for batch in spec["batches"]}}
    result = _timed_batch(llm, {**spec, "repeats": 1}, sampling)
    return {**result, "seconds": result["seconds"][0], "start_seconds": start_seconds,
            "threads": os.environ.get("OMP_NUM_THREADS")}


def _timed_batch(llm: Any, batch: dict[str, Any], sampling: Any) -> dict[str, Any]:
    """`batch["prompt_token_ids"]` decoded (all at once, or one request at a time with `sequential`) after
    `warmup` untimed rounds, `repeats` timed rounds; the spec-decode counters of the timed rounds."""
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in batch["prompt_token_ids"]]

    def decode() -> list[Any]:
        if batch.get("sequential"):
            return [llm.generate([prompt], sampling, use_tqdm=False)[0] for prompt in prompts]
        return llm.generate(prompts, sampling, use_tqdm=False)

    for _ in range(batch.get("warmup", 0)):
        decode()
    counters_before = spec_decode_counters(llm)
    if batch.get("marker"):
        Path(batch["marker"]).touch()  # what the drafter traces after this belongs to the requests below
    seconds, outputs = [], []
    for _ in range(batch.get("repeats", 1)):
        started = time.perf_counter()
        round_outputs = decode()
        seconds.append(time.perf_counter() - started)
        outputs.append([list(output.outputs[0].token_ids) for output in round_outputs])
    counters = spec_decode_counters(llm)
    for name, value in counters_before.items():  # the warm-up's drafts are not the timed rounds'
        if isinstance(value, (int, float)) and isinstance(counters.get(name), (int, float)):
            counters[name] -= value
    return {
        "token_ids": outputs[0],
        "text": [output.outputs[0].text for output in round_outputs],
        "seconds": seconds,
        "new_tokens": sum(len(ids) for ids in outputs[0]),
        "same_tokens_every_round": all(round_ids == outputs[0] for round_ids in outputs),
        "spec_decode": counters,
    }


def engine_environment(python: str = sys.executable, **extra: str) -> dict[str, str]:
    """The environment for an engine process: Intel OpenMP preloaded where the vLLM environment has it (vLLM on the
    CPU is much slower at speculative decoding without it), a KV cache of `VLLM_CPU_KVCACHE_SPACE` GiB (default 2)."""
    environment = dict(os.environ)
    iomp = Path(python).resolve().parent.parent / "lib" / "libiomp5.so"
    if iomp.is_file() and str(iomp) not in environment.get("LD_PRELOAD", ""):
        environment["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), environment.get("LD_PRELOAD")]))
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    environment.update(extra)
    return environment


def run_in_subprocess(spec: dict[str, Any], python: str = sys.executable, timeout: float = 900,
                      **environment: str) -> dict[str, Any]:
    """`run(spec)` in a fresh process of `python` (an interpreter with vLLM); raises with its log on failure."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recycle-hf-vllm-") as folder:
        spec_path, result_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(json.dumps(spec))
        completed = subprocess.run([python, "-m", __name__, str(spec_path), str(result_path)],
                                   env=engine_environment(python, **environment), capture_output=True, text=True,
                                   timeout=timeout)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"The vLLM engine failed (status {completed.returncode}):\n{completed.stderr[-6000:]}")
        return json.loads(result_path.read_text())


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    result = run(json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":  # spawn re-imports this file in the engine process: the guard matters
    sys.exit(main(sys.argv[1:]))
