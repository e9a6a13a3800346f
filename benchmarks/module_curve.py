"""Module curve: score several recycle adapters for the embedded SmolLM2 on the same held-out data, side by side.

For each adapter (a folder saved by `recycle-hf train`, or `shipped`): the module's top-1 agreement with the base's
greedy token and the alternating schedule's perplexity on the base's own greedy answers to the held-out prompts
(exactly the quality benchmark's measure), the same agreement on held-out natural text, the module's size and the
milliseconds one draft costs (batch 1, after 256 tokens, median of 50). The base's answers are generated once, by
the base the adapters were trained on, and kept in the output folder; an adapter with LoRA layers changes the base,
so its rows also give the adapted base's perplexity on those answers and on the natural text (the original base's
is the `shipped` row's).

    python benchmarks/module_curve.py --adapters shipped work/module-curve/l1-20 ... \\
        --natural-heldout work/module-curve/natural-heldout.jsonl --output-dir benchmarks/results/...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from recycle_hf.atomic import staged_file
from recycle_hf.bench.prompts import encode_chat_prompts
from recycle_hf.bench.quality import QualityTotals, continuation_attention_mask, eos_token_ids_of, score_continuations
from recycle_hf.data import load_token_blocks
from recycle_hf.loading import load_recycle_model, pad_token_id


logger = logging.getLogger("module_curve")


def heldout_answers(model, tokenizer, output_dir: Path, prompts: list[str], max_new_tokens: int,
                    batch_size: int) -> list[dict]:
    """The base's greedy answers to `prompts` (cut after the first EOS), as the quality benchmark builds them;
    generated once and kept in `output_dir/heldout_answers.json`."""
    path = output_dir / "heldout_answers.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["prompts"] == prompts and saved["max_new_tokens"] == max_new_tokens:
            return [{name: torch.tensor(value) if name != "width" else value for name, value in batch.items()}
                    for batch in saved["batches"]]
    batches = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_chat_prompts(tokenizer, prompts[start : start + batch_size], model.device)
        with torch.inference_mode():
            text = model.generate(batch.input_ids, attention_mask=batch.attention_mask, recycle_mode=None,
                                  do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id(tokenizer))
        mask = continuation_attention_mask(text, batch.attention_mask, eos_token_ids_of(model))
        batches.append({"sequences": text, "attention_mask": mask, "width": batch.width})
    with staged_file(path) as temporary:
        temporary.write_text(json.dumps({
            "prompts": prompts, "max_new_tokens": max_new_tokens,
            "batches": [{name: value.tolist() if name != "width" else value for name, value in batch.items()}
                        for batch in batches],
        }))
    return batches


def draft_milliseconds(model, context_length: int = 256, repeats: int = 50) -> float:
    """Median time of one draft at batch 1: the module over one token after `context_length` and its draft logits."""
    ids = torch.randint(3, model.config.base_config.vocab_size, (1, context_length + 1))
    states = torch.zeros(1, context_length + 1, model.get_output_embeddings().weight.shape[1])
    positions = torch.arange(context_length + 1).unsqueeze(0)
    cache = model.new_cache().module
    times = []
    with torch.inference_mode():
        model.recycle_step(ids[:, :-1], states[:, :-1], None, positions[:, :-1], cache)
        for repeat in range(repeats + 10):
            start = time.perf_counter()
            draft = model.recycle_step(ids[:, -1:], states[:, -1:], None, positions[:, -1:], cache)
            model.draft_logits(draft)[0].argmax(-1)
            times.append(time.perf_counter() - start)
            cache.crop(-1)  # drop the draft: every repeat drafts after the same context
    return 1000 * statistics.median(times[10:])


def score_adapter(adapter: str, answers: list[dict], natural_blocks, batch_size: int) -> dict:
    model, _ = load_recycle_model(adapter=None if adapter == "shipped" else adapter)
    chat = QualityTotals()
    for batch in answers:
        score_continuations(model, batch["sequences"], batch["attention_mask"], batch["width"], chat)
    natural = QualityTotals()
    for start in range(0, len(natural_blocks), batch_size):
        # Every position of natural text is scored; the schedule starts at its first token.
        ids = natural_blocks.input_ids[start : start + batch_size]
        mask = natural_blocks.attention_mask[start : start + batch_size]
        score_continuations(model, ids, mask, 1, natural)
    return {
        "adapter": adapter,
        "module_layers": model.config.recycle_num_layers,
        "module_parameters": sum(p.numel() for p in model.recycle_module.parameters()),
        "base_has_lora": any("lora_" in name for name, _ in model.base_lm.named_parameters()),
        "chat_positions": chat.positions,
        "chat_agreement": chat.module_agrees_with_base / chat.positions,
        "chat_perplexity_base": math.exp(chat.base_nll / chat.positions),
        "chat_perplexity_alternating": math.exp(chat.alternating_nll / chat.positions),
        "natural_positions": natural.positions,
        "natural_agreement": natural.module_agrees_with_base / natural.positions,
        "natural_perplexity_base": math.exp(natural.base_nll / natural.positions),
        "natural_perplexity_alternating": math.exp(natural.alternating_nll / natural.positions),
        "draft_ms": draft_milliseconds(model),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="+", required=True, help="adapter folders, or 'shipped'")
    parser.add_argument("--natural-heldout", required=True, help=".jsonl of natural text no adapter trained on")
    parser.add_argument("--prompts-file", default="examples/data/heldout_prompts.txt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    prompts = [line for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    base_model, tokenizer = load_recycle_model()  # the embedded base with the shipped module
    answers = heldout_answers(base_model, tokenizer, args.output_dir, prompts, args.max_new_tokens, args.batch_size)
    del base_model
    natural_blocks = load_token_blocks([args.natural_heldout], tokenizer, block_size=256)
    results_path = args.output_dir / "curve.jsonl"
    for adapter in args.adapters:
        result = score_adapter(adapter, answers, natural_blocks, args.batch_size)
        logger.info("%s", json.dumps(result))
        with results_path.open("a") as results:  # one line per adapter, appended as each finishes
            results.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
