"""The `recycle-hf` command line: init presets, the top-level dispatcher and its one-line user errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import recycle_hf.loading as loading
from recycle_hf import RecycleGPTForCausalLM, graft_recycle_module
from recycle_hf.cli import COMMANDS, main
from recycle_hf.commands import bounded
from recycle_hf.errors import InputNotFoundError

from conftest import save_tiny_base_with_tokenizer, tiny_base_config


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for name in COMMANDS:
        assert name in printed
    assert main(["no-such-command"]) == 2


def test_init_tiny_preset_loads_with_auto_class_and_remote_code(tmp_path):
    output = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--output", str(output), "--seed", "3"]) == 0
    assert json.loads((output / "generation_config.json").read_text())["eos_token_id"] == 2
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True).eval()
    assert type(model).__name__ == "RecycleGPTForCausalLM"
    input_ids = torch.tensor([[5, 6, 7, 8]])
    generated = model.generate(input_ids, max_new_tokens=5, recycle_mode="verify", eos_token_id=None)
    plain = model.generate(input_ids, max_new_tokens=5, eos_token_id=None)
    assert torch.equal(generated, plain)


def _one_line_error(capsys) -> str:
    """The one error line on stderr (loading progress bars may come before it), and no traceback."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("recycle-hf")]
    assert len(lines) == 1 and captured.err.rstrip().endswith(lines[0]), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["generate", "hi", "--max-new-tokens", "-5"], "argument --max-new-tokens: expected an integer >= 1, got '-5'"),
        (["generate", "hi", "--num-draft-tokens", "17"],
         "argument --num-draft-tokens: num_draft_tokens must be 'auto' or an integer from 0 (plain decoding) to 16 "
         "(or a draft tree such as [[0], [1], [0, 0]]), got 17"),
        (["generate", "hi", "--num-draft-tokens", "three"], "num_draft_tokens must be 'auto' or an integer"),
        (["generate", "hi", "--num-draft-tokens", "[[1, 0]]"], "Draft tree path [1] is missing"),
        (["generate", "hi", "--num-draft-tokens", "[[0],"], "a draft tree must be JSON such as '[[0], [1], [0, 0]]'"),
        (["generate", "hi", "--top-p", "1.5"], "argument --top-p: expected a number in (0, 1], got '1.5'"),
        (["generate", "hi", "--temperature", "nan"], "argument --temperature: expected a number > 0"),
        (["self-prompts", "--count", "0", "--output", "o.jsonl"], "argument --count: expected an integer >= 1"),
        (["distill", "--prompts", "p.txt", "--output", "o.jsonl", "--batch-size", "x"], "expected an integer >= 1"),
        (["train", "--data", "d.jsonl", "--output", "o", "--block-size", "1"], "expected an integer >= 2, got '1'"),
        (["train", "--data", "d.jsonl", "--output", "o", "--distill-weight", "2"], "expected a number in [0, 1]"),
    ],
)
def test_bad_option_values_are_one_line_with_status_2(arguments, expected, capsys):
    with pytest.raises(SystemExit) as raised:
        main(arguments)
    assert raised.value.code == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"recycle-hf {arguments[0]}: error: ") and expected in line
    assert f"see `recycle-hf {arguments[0]} --help`" in line


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """A tiny base with a tokenizer, and an adapter trained on a base of another hidden size."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny_base_with_tokenizer(root / "base")
    other_base = AutoModelForCausalLM.from_config(tiny_base_config("llama", hidden_size=64))
    graft_recycle_module(other_base).save_adapter(root / "other-adapter")
    return root


def test_user_errors_are_one_line_with_status_2(tiny_folders, tmp_path, monkeypatch, capsys):
    base = tiny_folders / "base"
    assert main(["generate", "hi", "--model", "/no/such/folder"]) == 2
    assert _one_line_error(capsys) == "recycle-hf generate: error: The model folder /no/such/folder does not exist."
    assert main(["generate", "hi", "--model", str(tmp_path)]) == 2
    assert f"The model folder {tmp_path} has no config.json" in _one_line_error(capsys)

    assert main(["generate", "hi", "--base", str(base), "--adapter", str(tiny_folders / "other-adapter")]) == 2
    line = _one_line_error(capsys)
    assert "trained on another base" in line and "hidden_size: adapter 64, base 32" in line

    train = ["train", "--base", str(base), "--data", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "out")]
    assert main(train) == 2
    assert "No training file matches" in _one_line_error(capsys)

    def build(*args, **kwargs):
        raise AssertionError("a model was built")  # (a plain folder would otherwise build a 7B LLaMA)

    monkeypatch.setattr(RecycleGPTForCausalLM, "__init__", build)
    assert main(["generate", "hi", "--model", str(base)]) == 2
    line = _one_line_error(capsys)
    assert "is not a RecycleGPT checkpoint" in line and f"--base {base} --adapter" in line


def test_every_command_reports_these_user_errors_in_one_line_with_status_2(tiny_folders, tmp_path, capsys):
    """Issue #27 item 7: errors that printed tracebacks (or exited 1) before."""
    preset = tmp_path / "preset"
    assert main(["init", "--preset", "tiny", "--output", str(preset)]) == 0
    capsys.readouterr()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to train on\n" * 20)
    cases = [
        (["generate", "hi", "--model", str(preset)], f"The model folder {preset} has no tokenizer"),
        (["init", "--preset", "tiny", "--output", str(a_file)], f"--output {a_file} is a file"),
        (["pretrain", "--preset", "tiny", "--output", str(a_file), "--max-steps", "1", "--data", str(corpus)],
         f"--output {a_file} is a file"),
        (["pretrain", "--preset", "tiny", "--output", str(tmp_path / "out"), "--max-steps", "0", "--data",
          str(corpus)], "--max-steps must be >= 1"),
        (["pretrain", "--preset", "tiny", "--output", str(tmp_path / "out"), "--max-steps", "1", "--data",
          str(a_file)], "unsupported data file type"),
        (["eval", "--model", "recyclegpt", "--model_args", f"pretrained={tmp_path / 'missing'}", "--tasks",
          "piqa_local"], f"The model folder {tmp_path / 'missing'} does not exist."),
        (["eval", "--model", "recyclegpt", "--model_args", f"pretrained={preset}", "--tasks", "no_such_task"],
         "Tasks not found: no_such_task; `recycle-hf eval ls tasks` lists them"),
    ]
    for arguments, expected in cases:
        assert main(arguments) == 2, arguments
        line = _one_line_error(capsys)
        assert line.startswith(f"recycle-hf {arguments[0]}: error: ") and expected in line, (arguments, line)
    # One name and one check for the draft count, in the benchmarks too (they said --draft-tokens).
    for subcommand in ("speed", "quality"):
        with pytest.raises(SystemExit) as raised:
            main(["bench", subcommand, "--num-draft-tokens", "1,17"])
        assert raised.value.code == 2
        assert "num_draft_tokens must be 'auto' or an integer from 0 (plain decoding) to 16" in _one_line_error(capsys)
    for trees, expected in (("[[0]]", "expected a JSON list of draft trees"), ("[[[0], [0]]]", "listed twice")):
        with pytest.raises(SystemExit) as raised:
            main(["bench", "speed", "--draft-trees", trees])
        assert raised.value.code == 2
        assert expected in _one_line_error(capsys)


def test_init_paper_preset_writes_a_checkpoint_that_loads(tmp_path):
    """The paper's recyclegpt-1.3b shape, bf16 (about 3 GB on disk, 30 s on 2 cores)."""
    output = tmp_path / "recyclegpt-1.3b"
    assert main(["init", "--preset", "recyclegpt-1.3b", "--output", str(output)]) == 0
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    base = sum(parameter.numel() for parameter in model.base_lm.parameters())
    module = sum(parameter.numel() for parameter in model.recycle_module.parameters())
    assert model.dtype == torch.bfloat16
    assert model.config.base_config.num_hidden_layers == 24 and model.config.base_config.hidden_size == 2048
    assert 0.14 < module / base < 0.17


def test_base_without_adapter_fails_before_loading_the_base(tiny_folders, monkeypatch, capsys):
    def load_base(*args, **kwargs):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(loading, "load_base", load_base)
    assert main(["generate", "hi", "--base", str(tiny_folders / "base")]) == 2
    assert "--base needs --adapter" in _one_line_error(capsys)


def test_debug_log_level_shows_the_traceback_and_bugs_keep_theirs(monkeypatch, capsys):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        main(["--log-level", "debug", "generate", "hi", "--model", "/no/such/folder"])

    def buggy_load(args):
        raise ValueError("an internal bug, not the user's doing")

    monkeypatch.setattr("recycle_hf.commands.generate.load_recycle_model_from_args", buggy_load)
    with pytest.raises(ValueError, match="internal bug"):
        main(["generate", "hi"])
    assert main(["--log-level", "loud", "generate", "hi"]) == 2
    assert "unknown --log-level 'loud'" in _one_line_error(capsys)


def test_bounded_option_types():
    assert bounded(int, 1)("3") == 3 and bounded(float, 0, 1)("0") == 0.0
    positive = bounded(float, 0, exclusive_minimum=True)
    cases = ((bounded(int, 1), "0"), (bounded(int, 1), "2.5"), (positive, "0"), (bounded(float, 0, 1), "inf"))
    for parse, text in cases:
        with pytest.raises(Exception, match="expected"):
            parse(text)


def test_calibrate_measures_again_and_shows_what_is_kept(tmp_path, monkeypatch, capsys):
    """`recycle-hf calibrate --again` measures the product forms and auto's choice per batch size; `--show` lists
    both files, with what each choice was measured under."""
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(tmp_path / "kept" / "draft_lengths.json"))
    # Wide enough (256 x 512 weights) that its products are worth measuring.
    save_tiny_base_with_tokenizer(tmp_path / "base", hidden_size=256, intermediate_size=512)
    graft_recycle_module(AutoModelForCausalLM.from_pretrained(tmp_path / "base")).save_adapter(tmp_path / "adapter")
    model_arguments = ["--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter")]
    assert main(["calibrate", "--again", *model_arguments, "--batch-sizes", "1,2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "batch 1: num_draft_tokens='auto' -> " in printed and "batch 2: num_draft_tokens='auto' -> " in printed
    assert main(["calibrate", "--show"]) == 0
    shown = capsys.readouterr().out
    assert f"choices in {tmp_path / 'kept' / 'draft_lengths.json'}: 2" in shown
    assert shown.count("  batch ") == 2 and "measured 20" in shown and "load " in shown
    assert "few-row product forms in" in shown and "512x256/float32: swapped at" in shown
    with pytest.raises(SystemExit):
        main(["calibrate"])  # --show or --again
