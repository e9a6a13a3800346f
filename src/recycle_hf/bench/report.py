# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""Result files of the benchmarks: JSON, markdown tables and the speed plot, each written by staging and renaming."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import staged_file


SPEED_STEM = "speed"
QUALITY_STEM = "quality"


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results of an earlier speed run: its `speed.json`, or the folder that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{SPEED_STEM}.json"
    if not path.is_file():
        raise ValueError(f"No speed results at {path}; pass the speed.json written by an earlier run.")
    return json.loads(path.read_text(encoding="utf-8"))


def _machine(environment: dict[str, Any]) -> str:
    return environment.get("gpu") or f"{environment['processor']} CPU, {environment['torch_threads']} torch threads"


def _format(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def speed_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of a speed run: one per batch size, then the output checks and any projections."""
    model = results["model"]
    environment = results["environment"]
    settings = results["settings"]
    lines = [
        f"# Speed: {model['name']} ({model['module']})",
        "",
        f"Run `{results['run_id']}`, {results['started']}; {_machine(environment)}, "
        f"{model['dtype']}, torch {environment['torch']}, transformers {environment['transformers']}. "
        f"{settings['max_new_tokens']} new tokens per row ({'sampling' if settings['do_sample'] else 'greedy'}, EOS "
        f"ignored), {settings['repeats']} timed repeats after {settings['warmup']} warm-up; medians, spread = "
        "(max - min) / median.",
        "",
    ]
    header = (
        "| mode | tokens/s | ms/token | spread | base fwd/token | accepted drafts/step | tokens/base fwd "
        "| x HF generate | x HF static compiled | x HF prompt lookup | k | compile s | loop overhead ms/step |"
    )
    for batch_size in settings["batch_sizes"]:
        lines += [f"## Batch size {batch_size}", "", header, "|" + "---|" * 13]
        for record in results["results"]:
            if record["batch_size"] != batch_size:
                continue
            if record["status"] != "ok":
                label = "failed" if record["status"] == "failed" else "n/a"
                lines.append(f"| {record['mode']} | {label}: {record.get('error')} |" + " |" * 11)
                continue
            lines.append(
                f"| {record['mode']} | {_format(record['tokens_per_s'], 1)} | {_format(record['ms_per_token'], 1)} "
                f"| {_format(record['spread_percent'], 0, '%')} | {_format(record['base_forwards_per_token'])} "
                f"| {_format(record['accepted_drafts_per_step'])} | {_format(record['tokens_per_base_forward'])} "
                f"| {_format(record['speedup_vs_hf_generate'])} | {_format(record['speedup_vs_hf_static_compiled'])} "
                f"| {_format(record['speedup_vs_hf_prompt_lookup'])} "
                f"| {_format(record.get('chosen_num_draft_tokens'))} "
                f"| {_format(record.get('compile_seconds'), 1)} | {_format(record['loop_overhead_ms_per_step'], 1)} |"
            )
        lines += ["", _checks_line(results["checks"].get(str(batch_size), {})), ""]
    if results.get("projections"):
        lines += [
            "## Verify mode with the real model's acceptance (projection)",
            "",
            "| batch | mode | tokens/base fwd (real model) | projected tokens/s | x HF generate "
            "| x HF static compiled |",
            "|---|---|---|---|---|---|",
        ]
        for projection in results["projections"]:
            lines.append(
                f"| {projection['batch_size']} | {projection['mode']} "
                f"| {_format(projection['tokens_per_base_forward'])} "
                f"| {_format(projection['projected_tokens_per_s'], 1)} "
                f"| {_format(projection['projected_speedup_vs_hf_generate'])} "
                f"| {_format(projection['projected_speedup_vs_hf_static_compiled'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def _checks_line(checks: dict[str, Any]) -> str:
    if "skipped" in checks:
        return f"Output check skipped: {checks['skipped']}."
    parts = [
        f"{name} {check['identical_rows']}/{check['rows']}"
        for name, check in checks.items()
        if isinstance(check, dict)
    ]
    verdict = {True: "yes", False: "NO", None: "not measured"}[checks.get("verify_equals_plain")]
    return (
        f"Verify output equals plain output on every prompt: **{verdict}** "
        f"(rows identical to {checks.get('reference')}: {', '.join(parts)})."
    )


def plot_speed(results: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG bar chart of tokens/s per mode, one group of bars per batch size, whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in results["results"]))
    batch_sizes = results["settings"]["batch_sizes"]
    by_key = {(r["batch_size"], r["mode"]): r for r in results["results"] if r["status"] == "ok"}
    figure, axes = plt.subplots(figsize=(max(6.0, 2.0 + 1.0 * len(modes)), 4.5))
    width = 0.8 / len(batch_sizes)
    for index, batch_size in enumerate(batch_sizes):
        heights, low, high = [], [], []
        for mode in modes:
            record = by_key.get((batch_size, mode))
            if record is None:
                heights.append(0.0)
                low.append(0.0)
                high.append(0.0)
                continue
            tokens = record["new_tokens"]
            heights.append(record["tokens_per_s"])
            low.append(record["tokens_per_s"] - tokens / max(record["seconds"]))
            high.append(tokens / min(record["seconds"]) - record["tokens_per_s"])
        positions = [m + (index - (len(batch_sizes) - 1) / 2) * width for m in range(len(modes))]
        axes.bar(positions, heights, width, yerr=[low, high], capsize=2, label=f"batch {batch_size}")
    axes.set_xticks(range(len(modes)))
    axes.set_xticklabels(modes, rotation=30, ha="right")
    axes.set_ylabel("new tokens / s (all rows)")
    model = results["model"]
    device = results["environment"].get("gpu", "CPU")
    axes.set_title(f"{model['name']}, module: {model['module']} ({model['dtype']}, {device})", fontsize=9)
    axes.legend()
    figure.tight_layout()
    with staged_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a staged file: an interruption never leaves half a file."""
    with staged_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _write_results(results: dict[str, Any], output_dir: str | os.PathLike, stem: str, markdown: str) -> list[Path]:
    paths = [Path(output_dir) / f"{stem}.json", Path(output_dir) / f"{stem}.md"]
    write_text_atomic(paths[0], json.dumps(results, indent=2) + "\n")
    write_text_atomic(paths[1], markdown)
    return paths


def write_speed_results(results: dict[str, Any], output_dir: str | os.PathLike, plot: bool = True) -> list[Path]:
    """Write `speed.json`, `speed.md` and (with `plot`) `speed.png` into `output_dir`; returns their paths."""
    paths = _write_results(results, output_dir, SPEED_STEM, speed_markdown(results))
    if plot:
        paths.append(Path(output_dir) / f"{SPEED_STEM}.png")
        plot_speed(results, paths[-1])
    return paths


def quality_markdown(results: dict[str, Any]) -> str:
    """The markdown table of a quality run."""
    model, settings = results["model"], results["settings"]
    continuation = "sampled" if settings["sample_continuations"] else "greedy"
    verify_rows = []
    for k, verify in results["verify"].items():
        verdict = "yes" if verify["equals_plain"] else f"NO ({len(verify['mismatched_prompts'])} prompts differ)"
        verify_rows.append(
            f"| verify mode, k={k}: tokens per base forward / draft acceptance / output equals plain on every "
            f"prompt | {verify['tokens_per_base_forward']:.3f} / {verify['acceptance_rate']:.3f} / {verdict} |"
        )
    return "\n".join(
        [
            f"# Quality: {model['name']} ({model['module']})",
            "",
            f"{settings['num_prompts']} prompts from {settings['prompts']}, chat template, {continuation} "
            f"continuations of up to {settings['max_new_tokens']} tokens by the base; "
            f"{results['scored_positions']} scored positions.",
            "",
            "| metric | value |",
            "|---|---|",
            "| module top-1 agreement with the base's greedy token "
            f"| {results['module_top1_agreement_with_base']:.3f} |",
            f"| module top-1 equal to the text's next token | {results['module_top1_matches_text']:.3f} |",
            f"| perplexity, base alone (standard) | {results['perplexity_standard']:.3f} |",
            f"| perplexity, alternating schedule (teacher-forced) | {results['perplexity_alternating']:.3f} |",
            *verify_rows,
            "",
        ]
    )


def write_quality_results(results: dict[str, Any], output_dir: str | os.PathLike) -> list[Path]:
    """Write `quality.json` and `quality.md` into `output_dir`; returns their paths."""
    return _write_results(results, output_dir, QUALITY_STEM, quality_markdown(results))
