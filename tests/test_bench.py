"""The benchmark harness (`recycle_hf.bench`): outputs written, mismatches detected, ratios from one run.

Everything runs on tiny random models with one repeat; timings themselves are not asserted (the machine is shared),
only what the harness derives from them.
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.bench import (
    BenchmarkModel,
    DecodingMode,
    ForwardTimer,
    ModeMeasurement,
    QualitySettings,
    QualityTotals,
    SpeedSettings,
    alternating_schedule_mask,
    build_shape_model,
    compare_outputs,
    decoding_modes,
    generate_once,
    load_benchmark_model,
    project_verify_speed,
    quality_markdown,
    run_quality_benchmark,
    run_speed_benchmark,
    score_continuations,
    speed_markdown,
    speedup_ratios,
    synthetic_prompts,
    write_quality_results,
    write_speed_results,
)
from recycle_hf.checkpoint_code.draft_shape_recyclegpt import DraftShape
from recycle_hf.cli import main as cli_main

from conftest import tiny_base_config, tiny_recycle_model


REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 6


def tiny_bench_model(**recycle_settings) -> BenchmarkModel:
    model = tiny_recycle_model("llama", **recycle_settings)
    return BenchmarkModel(model, None, {"name": "tiny-llama", "module": "random init", "dtype": "float32"})


# One of each kind of mode: comparators, plain, the fast path (fixed k and auto), the reference loop.
QUICK_MODES = ("hf_generate", "hf_prompt_lookup", "recycle_none", "alternate", "verify_k1", "verify_k2",
               "verify_auto", "alternate_loop", "verify_k2_loop")


def quick_settings(**overrides) -> SpeedSettings:
    settings = dict(
        mode_names=QUICK_MODES,
        batch_sizes=(1, 3),
        num_draft_tokens=(1, 2),
        max_new_tokens=MAX_NEW_TOKENS,
        repeats=1,
        warmup=0,
        static_compile=False,
        prompt_length=5,
    )
    settings.update(overrides)
    return SpeedSettings(**settings)


def make_first_token_the_eos(bench_model: BenchmarkModel) -> None:
    """Declare the first greedily generated token of every prompt to be EOS, so stopping at EOS would cut short."""
    model = bench_model.model
    first_tokens = set()
    for batch_size in (1, 3):
        prompts = synthetic_prompts(model.config.base_config.vocab_size, batch_size, 5, "cpu", seed=0)
        output = model.base_lm.generate(
            prompts.input_ids, attention_mask=prompts.attention_mask, max_new_tokens=1, do_sample=False, pad_token_id=0
        )
        first_tokens.update(output[:, -1].tolist())
    for config in (model.generation_config, model.base_lm.generation_config):
        config.eos_token_id = sorted(first_tokens)


@pytest.fixture(scope="module")
def speed_run():
    bench_model = tiny_bench_model()
    make_first_token_the_eos(bench_model)
    return bench_model, run_speed_benchmark(bench_model, quick_settings())


def records_by_mode(results, batch_size):
    return {record["mode"]: record for record in results["results"] if record["batch_size"] == batch_size}


def test_speed_run_writes_json_markdown_and_png(speed_run, tmp_path):
    _, results = speed_run
    paths = write_speed_results(results, tmp_path / "out")
    assert [path.name for path in paths] == ["speed.json", "speed.md", "speed.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(results))
    markdown = paths[1].read_text()
    for mode in ("hf_generate", "recycle_none", "alternate", "verify_k1", "verify_k2"):
        assert f"| {mode} |" in markdown
    assert markdown.count("Verify output equals plain output on every prompt: **yes**") == 2
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*"))  # atomic writes leave no temporary files behind


def test_every_mode_produces_the_full_token_budget_even_past_eos(speed_run):
    bench_model, results = speed_run
    assert [r["mode"] for r in results["results"]] == list(QUICK_MODES) * 2
    assert {m.name for m in decoding_modes((1, 2), False)} >= set(QUICK_MODES)
    for record in results["results"]:
        if record["mode"] == "hf_prompt_lookup" and record["batch_size"] > 1:
            assert record["status"] == "not_applicable"  # transformers' prompt lookup is batch size 1 only
            continue
        assert record["status"] == "ok", record
        assert record["tokens_per_row"] == MAX_NEW_TOKENS
        assert record["new_tokens"] == MAX_NEW_TOKENS * record["batch_size"]
    # The EOS ids are restored after the run.
    assert bench_model.model.generation_config.eos_token_id is not None


def test_speed_derived_numbers(speed_run):
    _, results = speed_run
    for batch_size in (1, 3):
        records = records_by_mode(results, batch_size)
        # Alternate: prefill, two steps of two tokens, and a last module-only token: 3 base forwards for 6 tokens.
        assert records["alternate"]["base_forwards"] == 3
        assert records["alternate"]["tokens_per_base_forward"] == 2.0
        assert records["alternate"]["accepted_drafts_per_step"] == 1.0
        assert records["hf_generate"]["base_forwards_per_token"] == 1.0
        for record in records.values():
            if record["status"] == "not_applicable":
                continue
            assert record["tokens_per_s"] == pytest.approx(record["new_tokens"] / record["seconds_median"])
            assert record["ms_per_token"] == pytest.approx(1000 * record["seconds_median"] / MAX_NEW_TOKENS)
            if record["mode"] != "hf_prompt_lookup":  # its assistant forwards cannot be timed apart
                assert record["loop_overhead_ms_per_step"] >= 0
        for mode in ("alternate", "verify_k1", "verify_k2"):
            assert records[mode]["base_step_ms_per_step"] > 0
            assert records[mode]["recycle_step_ms_per_step"] > 0
            assert 0 <= records[mode]["loop_overhead_fraction"] < 1


def test_ratios_come_from_the_medians_of_the_same_run(speed_run):
    _, results = speed_run
    for batch_size in (1, 3):
        records = records_by_mode(results, batch_size)
        reference = records["hf_generate"]
        assert {r["run_id"] for r in records.values()} == {results["run_id"]}
        assert len({r["prompts_digest"] for r in records.values()}) == 1
        for record in records.values():
            if record["status"] == "not_applicable":
                continue
            assert record["speedup_vs_hf_generate"] == record["tokens_per_s"] / reference["tokens_per_s"]
            assert record["speedup_vs_hf_static_compiled"] is None  # not measured in this run


def measurement(run_id: str, mode: DecodingMode, seconds: list[float], digest: str = "p") -> ModeMeasurement:
    return ModeMeasurement(run_id, digest, 2, 4, mode, seconds=seconds, tokens_per_row=[4, 4])


def test_speedup_ratios_use_medians_and_refuse_mixed_runs():
    hf, static = DecodingMode("hf_generate", comparator=True), DecodingMode("hf_static_compiled", comparator=True)
    alternate = DecodingMode("alternate", recycle_mode="alternate", num_draft_tokens=1)
    ratios = speedup_ratios(
        [
            measurement("a", hf, [4.0, 2.0, 3.0]),
            measurement("a", static, [1.0]),
            measurement("a", alternate, [1.5, 9.0, 1.0]),
        ]
    )
    # Medians 3.0 s (hf), 1.0 s (static), 1.5 s (alternate) for the same 8 tokens.
    assert ratios["alternate"] == {"vs_hf_generate": 2.0, "vs_hf_static_compiled": 1.0 / 1.5,
                                   "vs_hf_prompt_lookup": None}
    assert ratios["hf_generate"]["vs_hf_generate"] == 1.0
    with pytest.raises(ValueError, match="within one run"):
        speedup_ratios([measurement("a", hf, [1.0]), measurement("b", alternate, [1.0])])
    with pytest.raises(ValueError, match="same prompts"):
        speedup_ratios([measurement("a", hf, [1.0]), measurement("a", alternate, [1.0], digest="other")])


def test_compare_outputs_detects_a_changed_token():
    model = tiny_recycle_model("llama")
    prompts = synthetic_prompts(model.config.base_config.vocab_size, 3, 5, "cpu")
    plain = generate_once(model, DecodingMode("recycle_none"), prompts, MAX_NEW_TOKENS, False, 0).sequences
    verify = generate_once(model, DecodingMode("verify_k2", "verify", 2), prompts, MAX_NEW_TOKENS, False, 0).sequences
    assert compare_outputs(plain, verify, prompts.width, 0) == {
        "rows": 3,
        "identical_rows": 3,
        "all_identical": True,
        "mismatches": [],
    }
    changed = verify.clone()
    changed[1, prompts.width + 4] = (changed[1, prompts.width + 4] + 1) % 101
    report = compare_outputs(plain, changed, prompts.width, 0)
    assert report["all_identical"] is False
    assert report["mismatches"] == [{"row": 1, "first_difference": 4}]
    # A row that stopped two tokens early is padded with the pad id (0) before the comparison.
    expected = []
    for row in range(3):
        tail = plain[row, -2:].tolist()
        if any(tail):
            expected.append({"row": row, "first_difference": MAX_NEW_TOKENS - 2 + (0 if tail[0] else 1)})
    assert expected  # the comparison below must have something to find
    assert compare_outputs(plain, plain[:, :-2], prompts.width, 0)["mismatches"] == expected
    # The prompt part is not compared: only generated tokens count.
    with_other_prompt = verify.clone()
    with_other_prompt[:, 0] += 1
    assert compare_outputs(plain, with_other_prompt, prompts.width, 0)["all_identical"]


def test_harness_reports_a_verify_output_that_differs_from_plain(monkeypatch):
    bench_model = tiny_bench_model()
    model = bench_model.model
    original_generate = model.generate

    def generate_with_wrong_verify(*args, **kwargs):
        output = original_generate(*args, **kwargs)
        if kwargs.get("recycle_mode") == "verify" and kwargs.get("num_draft_tokens") == DraftShape.chain(2):
            output.sequences[-1, -1] = (output.sequences[-1, -1] + 1) % 101  # a deliberately different last token
        return output

    monkeypatch.setattr(model, "generate", generate_with_wrong_verify)
    results = run_speed_benchmark(bench_model, quick_settings(batch_sizes=(2,)))
    checks = results["checks"]["2"]
    assert checks["verify_equals_plain"] is False
    assert checks["verify_k1"]["all_identical"] is True
    assert checks["verify_k2"]["mismatches"] == [{"row": 1, "first_difference": MAX_NEW_TOKENS - 1, "prompt_set": 0}]
    assert "Verify output equals plain output on every prompt: **NO**" in speed_markdown(results)


def test_sampling_runs_and_skips_the_token_check():
    results = run_speed_benchmark(tiny_bench_model(), quick_settings(batch_sizes=(2,), do_sample=True))
    assert "skipped" in results["checks"]["2"]
    assert all(record["status"] == "ok" for record in results["results"] if record["mode"] != "hf_prompt_lookup")


def test_mode_subset_keeps_the_reference_times_warmup_apart_and_rejects_unknown_modes():
    settings = quick_settings(batch_sizes=(1,), mode_names=("alternate",), warmup=1, repeats=2)
    results = run_speed_benchmark(tiny_bench_model(), settings)
    assert [r["mode"] for r in results["results"]] == ["hf_generate", "alternate"]
    assert all(len(r["warmup_seconds"]) == 1 and len(r["seconds"]) == 2 for r in results["results"])
    assert results["checks"]["1"] == {"reference": "hf_generate", "verify_equals_plain": None}
    # Without recycle_none, verify is checked against transformers' generate.
    settings = quick_settings(batch_sizes=(2,), mode_names=("verify_k2",))
    checks = run_speed_benchmark(tiny_bench_model(), settings)["checks"]["2"]
    assert checks["reference"] == "hf_generate" and checks["verify_k2"]["all_identical"]
    assert checks["verify_equals_plain"] is True
    with pytest.raises(ValueError, match="hf_static_compiled needs"):
        run_speed_benchmark(tiny_bench_model(), quick_settings(mode_names=("hf_static_compiled",)))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        run_speed_benchmark(tiny_bench_model(), quick_settings(repeats=0))


def test_forward_timer_counts_calls_and_restores_the_methods():
    model = tiny_recycle_model("llama")
    prompts = synthetic_prompts(101, 2, 5, "cpu")
    timer = ForwardTimer(torch.device("cpu"))
    targets = [(model, "base_step", "base_step"), (model, "recycle_step", "recycle_step")]
    with timer.wrapping(targets):
        run = generate_once(model, DecodingMode("alternate", "alternate", 1), prompts, MAX_NEW_TOKENS, False, 0)
    assert timer.calls["base_step"] == run.recycle_stats["base_forwards"] == 3
    assert timer.calls["recycle_step"] == run.recycle_stats["recycle_forwards"]
    assert 0 < timer.total_seconds < run.seconds
    assert "base_step" not in model.__dict__ and "recycle_step" not in model.__dict__


def test_project_verify_speed_uses_the_real_models_tokens_per_forward():
    results = {
        "results": [
            {"batch_size": 1, "mode": "hf_generate", "status": "ok", "tokens_per_s": 50.0},
            {
                "batch_size": 1,
                "mode": "verify_k3",
                "recycle_mode": "verify",
                "num_draft_tokens": 3,
                "status": "ok",
                "seconds_median": 2.0,
                "base_forwards": 40,
                "tokens_per_base_forward": 1.0,
            },
        ]
    }
    real = {
        "model": {"name": "real"},
        "results": [
            {
                "batch_size": 1,
                "mode": "verify_k3",
                "recycle_mode": "verify",
                "num_draft_tokens": 3,
                "status": "ok",
                "tokens_per_base_forward": 2.5,
            },
        ],
    }
    [projection] = project_verify_speed(results, real)
    # 0.05 s per base forward, 2.5 tokens per base forward: 50 tokens/s, i.e. 1.0x the 50 tokens/s of HF generate.
    assert projection["projected_tokens_per_s"] == pytest.approx(50.0)
    assert projection["projected_speedup_vs_hf_generate"] == pytest.approx(1.0)
    assert projection["projected_speedup_vs_hf_static_compiled"] is None


def test_shape_models_are_built_in_the_requested_dtype():
    default_dtype = torch.get_default_dtype()
    model = build_shape_model("tiny", torch.bfloat16, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == default_dtype
    with pytest.raises(ValueError, match="Available shapes"):
        build_shape_model("llama-70b", torch.bfloat16, "cpu")


def test_load_benchmark_model_rejects_ambiguous_sources():
    with pytest.raises(ValueError, match="exactly one"):
        load_benchmark_model(model="some/dir", shape="tiny")
    with pytest.raises(ValueError, match="--adapter goes with --base"):
        load_benchmark_model(shape="tiny", adapter="some/dir")


# ------------------------------------------------------------------------------------------------------------ quality
def test_alternating_schedule_starts_with_the_base_at_the_continuation():
    # Prompt of 3 tokens: position 2 predicts the first new token (base), 3 the second (module), 4 (base), ...
    mask = alternating_schedule_mask(prompt_width=3, total_width=8)
    assert mask.tolist() == [False, False, False, True, False, True, False, True]


def test_scoring_matches_a_direct_computation_and_an_identical_module():
    model = tiny_recycle_model("llama")
    prompts = synthetic_prompts(101, 2, 4, "cpu", seed=3)
    text = model.generate(
        prompts.input_ids,
        attention_mask=prompts.attention_mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    attention_mask = torch.ones_like(text)
    attention_mask[1, -2:] = 0  # row 1 ended two tokens early
    totals = QualityTotals()
    score_continuations(model, text, attention_mask, 4, totals)

    with torch.no_grad():
        output = model(input_ids=text, attention_mask=attention_mask)
    log_probs = output.logits.float().log_softmax(-1)
    module_log_probs = output.recycle_logits.float().log_softmax(-1)
    base_nll = alternating_nll = 0.0
    agreements = positions = 0
    for row, length in ((0, 6), (1, 4)):
        for offset in range(length):
            j, target = 3 + offset, text[row, 4 + offset]
            base_nll -= float(log_probs[row, j, target])
            alternating_nll -= float((module_log_probs if offset % 2 else log_probs)[row, j, target])
            agreements += int(output.recycle_logits[row, j].argmax() == output.logits[row, j].argmax())
            positions += 1
    assert totals.positions == positions == 10
    assert totals.module_positions == 3 + 2
    assert totals.module_agrees_with_base == agreements
    assert totals.base_nll == pytest.approx(base_nll, rel=1e-5)
    assert totals.alternating_nll == pytest.approx(alternating_nll, rel=1e-5)

    # A module that predicts exactly what the base predicts: full agreement, equal perplexities.
    class SameAsBase(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            result = self.inner(**kwargs)
            result.recycle_logits = result.logits
            return result

    mirrored = QualityTotals()
    score_continuations(SameAsBase(model), text, attention_mask, 4, mirrored)
    assert mirrored.module_agrees_with_base == mirrored.positions
    assert mirrored.alternating_nll == pytest.approx(mirrored.base_nll)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from recycle_hf.defaults import dequantized_base_dir, load_default_base

    if not (dequantized_base_dir() / "tokenizer_config.json").is_file():
        load_default_base()
    return AutoTokenizer.from_pretrained(dequantized_base_dir())


def test_quality_run_on_a_tiny_model_with_the_smollm2_tokenizer(smollm2_tokenizer, tmp_path):
    # A 2-layer model over SmolLM2's vocabulary, so that real chat-templated prompts can be used.
    torch.manual_seed(0)
    base_config = tiny_base_config(
        "llama",
        vocab_size=len(smollm2_tokenizer),
        pad_token_id=smollm2_tokenizer.pad_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    model = RecycleGPTForCausalLM(RecycleGPTConfig(base_config=base_config)).eval()
    bench_model = BenchmarkModel(
        model, smollm2_tokenizer, {"name": "tiny", "module": "random init", "dtype": "float32"}
    )
    prompts = ["Why do cats purr?", "Write one sentence about rain.", "Count to five."]
    settings = QualitySettings(max_new_tokens=5, batch_size=2, num_draft_tokens=(1, 2))
    results = run_quality_benchmark(bench_model, prompts, settings, "inline test prompts")
    assert results["verify_equals_plain"] is True
    assert results["scored_positions"] == 3 * 5  # no EOS reached by this random model in 5 tokens
    assert 0.0 <= results["module_top1_agreement_with_base"] <= 1.0
    assert math.isfinite(results["perplexity_standard"]) and math.isfinite(results["perplexity_alternating"])
    assert set(results["verify"]) == {"1", "2"}
    for k, verify in results["verify"].items():
        assert verify["equals_plain"] is True and verify["mismatched_prompts"] == []
        assert 1.0 <= verify["tokens_per_base_forward"] <= 1 + int(k)
    paths = write_quality_results(results, tmp_path)
    assert json.loads(paths[0].read_text())["settings"]["num_prompts"] == 3
    markdown = paths[1].read_text()
    assert "| verify mode, k=1: tokens per base forward / draft acceptance / output equals plain" in markdown
    assert " / yes |" in markdown and "k=2" in markdown

    # A verify output that differs from plain decoding is reported for its k, with the prompt.
    original_generate = model.generate

    def generate_with_wrong_verify(*args, **kwargs):
        output = original_generate(*args, **kwargs)
        if kwargs.get("recycle_mode") == "verify" and kwargs.get("num_draft_tokens") == DraftShape.chain(2):
            output.sequences[0, -1] = (output.sequences[0, -1] + 1) % len(smollm2_tokenizer)
        return output

    model.generate = generate_with_wrong_verify
    results = run_quality_benchmark(bench_model, prompts, settings, "inline test prompts")
    assert results["verify_equals_plain"] is False
    assert results["verify"]["1"]["equals_plain"] is True
    differences = [m["first_difference"] for m in results["verify"]["2"]["mismatched_prompts"]]
    assert differences == [settings.max_new_tokens - 1] * 2  # row 0 of both batches, last token
    assert "NO (2 prompts differ)" in quality_markdown(results)


# ------------------------------------------------------------------------------------------------ command lines
SPEED_ARGS = (
    "--shape tiny --dtype float32 --device cpu --batch-sizes 2 --num-draft-tokens 1 --max-new-tokens 3 --repeats 1 "
    "--warmup 0 --no-plot"
).split()


def test_cli_and_script_run_the_same_speed_benchmark(tmp_path, monkeypatch, capsys):
    assert cli_main(["bench", "speed", *SPEED_ARGS, "--output-dir", str(tmp_path / "cli")]) == 0
    monkeypatch.setattr(sys, "argv", ["speed.py", *SPEED_ARGS, "--output-dir", str(tmp_path / "script")])
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # as `python benchmarks/speed.py` would
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "benchmarks" / "speed.py"), run_name="__main__")
    assert exit_info.value.code == 0
    from_cli = json.loads((tmp_path / "cli" / "speed.json").read_text())
    from_script = json.loads((tmp_path / "script" / "speed.json").read_text())
    assert [r["mode"] for r in from_cli["results"]] == [r["mode"] for r in from_script["results"]]
    assert from_cli["settings"] == from_script["settings"]
    assert "| alternate |" in capsys.readouterr().out


def test_cli_rejects_bad_input():
    with pytest.raises(SystemExit):
        cli_main(["bench", "speed", "--shape", "tiny", "--batch-sizes", "0,4"])
    with pytest.raises(ValueError, match="needs a trained model"):
        cli_main(["bench", "quality", "--shape", "tiny"])


def test_quality_defaults_are_fixed_draft_lengths():
    import argparse

    from recycle_hf.commands.bench import add_quality_arguments

    # generate's default k is "auto", a per-machine speed choice; quality scores verify mode at fixed k.
    QualitySettings().validate()
    parser = argparse.ArgumentParser()
    add_quality_arguments(parser)
    assert parser.parse_args(["--base", "default"]).num_draft_tokens == (3,)


def test_draft_trees_are_modes_of_their_own_and_project_by_their_shape():
    tree = [[0], [1], [0, 0]]
    settings = quick_settings(mode_names=("hf_generate", "verify_k1", "verify_tree3"), batch_sizes=(3,),
                              draft_trees=(tree,))
    results = run_speed_benchmark(tiny_bench_model(), settings)
    record = records_by_mode(results, 3)["verify_tree3"]
    assert record["status"] == "ok" and record["num_draft_tokens"] == tree
    assert record["tokens_per_row"] == MAX_NEW_TOKENS
    assert results["checks"]["3"]["verify_equals_plain"] is True
    assert results["checks"]["3"]["verify_tree3"]["all_identical"] is True
    names = [mode.name for mode in decoding_modes((1,), False, draft_trees=(tree, [[0], [1], [2]]))]
    assert "verify_tree3_1" in names and "verify_tree3_2" in names and "verify_tree3_1_loop" in names
    # A real run's tree records project onto a tiny run's tree records of the same shape (JSON lists as keys).
    real = {"model": {"name": "real"}, "results": [dict(record, tokens_per_base_forward=2.0)]}
    [projection] = [p for p in project_verify_speed(results, real) if p["mode"] == "verify_tree3"]
    assert projection["tokens_per_base_forward"] == 2.0
    with pytest.raises(ValueError, match="listed twice"):
        quick_settings(draft_trees=([[0], [0]],)).validate()
