"""Verify mode's promise ("the same tokens as plain decoding") in situations a user can create: threads sharing one
model, decoding past the position table, padding-only rows and other masks, a damaged file of `auto`'s choices,
`auto` choosing plain decoding; and the clear errors where plain decoding is not defined (issue #27)."""

import json
import logging
import subprocess
import sys
import threading
import time

import pytest
import torch

from recycle_hf import RecycleGPTConfig, RecycleGPTForCausalLM
from recycle_hf.checkpoint_code.draft_length_recyclegpt import calibration_key, draft_length_choices
from recycle_hf.checkpoint_code.generation_recyclegpt import RecycleGenerateOutput
from recycle_hf.loading import load_recycle_model

from conftest import PAD, left_padded_batch, tiny_base_config, tiny_recycle_model


def plain(model, input_ids, attention_mask, **kwargs):
    return model.base_lm.generate(input_ids, attention_mask=attention_mask, do_sample=False, pad_token_id=PAD,
                                  **kwargs)


def recycle(model, input_ids, attention_mask, path=None, **kwargs):
    return model.generate(input_ids, attention_mask=attention_mask, do_sample=False, pad_token_id=PAD,
                          cache_implementation=path, **kwargs)


# ------------------------------------------------------------------------------------------------------- threads
THREAD_PROMPTS = ["Explain why the sky is blue.", "Write a haiku about autumn leaves.",
                  "What is the capital of France?", "List three uses of copper.", "Tell me a joke about cats.",
                  "How do airplanes fly?"]
THREAD_SETTINGS = [dict(recycle_mode="verify", num_draft_tokens=3), dict(recycle_mode="alternate"),
                   dict(recycle_mode="verify", num_draft_tokens=1), dict(recycle_mode=None)]


def test_threads_sharing_one_model_get_their_single_threaded_tokens():
    # The real model: its layers are large enough for the fast path's few-row products and grouped-query sdpa,
    # which it installs on the shared model while a call decodes.
    model, tokenizer = load_recycle_model()
    cases = [(first, size, budget, settings) for first, size, budget in [(0, 1, 8), (1, 2, 12), (3, 3, 10)]
             for settings in range(len(THREAD_SETTINGS))]

    def call(case):
        first, size, budget, settings = case
        batch = tokenizer(THREAD_PROMPTS[first:first + size], return_tensors="pt", padding=True, padding_side="left")
        return model.generate(**batch, max_new_tokens=budget, do_sample=False, **THREAD_SETTINGS[settings])

    alone = {case: call(case) for case in cases}
    results, errors = [], []

    def worker(thread):
        try:
            for round_ in range(6):
                case = cases[(thread * 5 + round_ * 7) % len(cases)]
                results.append((case, call(case)))
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 24
    differing = [case for case, output in results if not torch.equal(output, alone[case])]
    assert not differing, differing
    assert all(type(layer).forward is torch.nn.Linear.forward and "forward" not in vars(layer)
               for layer in model.modules() if type(layer) is torch.nn.Linear), "a layer stayed redirected"
    assert model.config.base_config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------------------------------- positions
def model_with_positions(family, max_positions):
    torch.manual_seed(0)
    config = tiny_base_config(family)
    config.max_position_embeddings = max_positions
    return RecycleGPTForCausalLM(RecycleGPTConfig(base_config=config)).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("path", ["static", "dynamic"])
def test_rotary_bases_decode_past_max_position_embeddings_as_plain_does(family, path):
    model = model_with_positions(family, 16)
    input_ids, attention_mask = left_padded_batch([5, 8, 12])
    expected = plain(model, input_ids, attention_mask, max_new_tokens=20)
    for settings in (dict(recycle_mode="verify", num_draft_tokens=2), dict(recycle_mode="verify", num_draft_tokens=4)):
        assert torch.equal(recycle(model, input_ids, attention_mask, path, max_new_tokens=20, **settings), expected)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_learned_positions_decode_to_their_end_and_refuse_past_it(family):
    model = model_with_positions(family, 16)
    input_ids, attention_mask = left_padded_batch([5, 8])
    # 8 prompt tokens + 9 new: the last new token is never fed back, so positions 0..15 suffice, as in plain decoding.
    expected = plain(model, input_ids, attention_mask, max_new_tokens=9)
    for path in ("static", "dynamic"):
        for k in (1, 3):
            output = recycle(model, input_ids, attention_mask, path, max_new_tokens=9, recycle_mode="verify",
                             num_draft_tokens=k)
            assert torch.equal(output, expected)
    with pytest.raises(IndexError):
        plain(model, input_ids, attention_mask, max_new_tokens=10)  # plain decoding fails there
    for mode in ("verify", "alternate"):
        with pytest.raises(ValueError, match="past the base's 16 learned positions.*at most 9 new tokens"):
            recycle(model, input_ids, attention_mask, max_new_tokens=10, recycle_mode=mode)


# ---------------------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", ["verify", "alternate"])
def test_a_row_of_padding_only_or_a_mask_of_zeros_is_refused_clearly(mode):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([5, 8])
    attention_mask[0] = 0
    with pytest.raises(ValueError, match="attention_mask row 0 is all zeros"):
        recycle(model, input_ids, attention_mask, max_new_tokens=4, recycle_mode=mode)
    with pytest.raises(ValueError, match="attention_mask row 0 is all zeros"):
        recycle(model, input_ids, torch.zeros_like(attention_mask), max_new_tokens=4, recycle_mode=mode)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt"])
def test_a_mask_that_is_not_left_padding_takes_the_reference_loop_and_equals_plain(family):
    model = tiny_recycle_model(family)
    input_ids, attention_mask = left_padded_batch([8, 8, 6])
    attention_mask[0, -3:] = 0  # right padding
    attention_mask[1, 3] = 0  # a hole
    expected = plain(model, input_ids, attention_mask, max_new_tokens=10)
    output = recycle(model, input_ids, attention_mask, max_new_tokens=10, recycle_mode="verify", num_draft_tokens=2,
                     return_dict_in_generate=True)
    assert output.recycle_stats["decoding_path"] == "reference_loop"
    assert torch.equal(output.sequences, expected)
    with pytest.raises(ValueError, match="cache_implementation='static' cannot decode this call: the attention mask "
                                         "is not left padding"):
        recycle(model, input_ids, attention_mask, "static", max_new_tokens=4, recycle_mode="verify",
                num_draft_tokens=2)


# --------------------------------------------------------------------------------------------- token ids, shapes
@pytest.mark.parametrize("mode", [None, "verify", "alternate"])
def test_token_ids_outside_the_vocabulary_and_1d_input_get_clear_errors(mode):
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([5, 8])
    for bad in (101, 5000, -1):
        ids = input_ids.clone()
        ids[1, 4] = bad
        with pytest.raises(ValueError, match=rf"input_ids\[1, 4\] = {bad} is not a token id of this model "
                                             r"\(vocabulary size 101\)"):
            recycle(model, ids, attention_mask, max_new_tokens=3, recycle_mode=mode)
    with pytest.raises(ValueError, match=r"input_ids must be 2-D \[batch, tokens\], got shape \(8,\).*unsqueeze"):
        recycle(model, input_ids[1], None, max_new_tokens=3, recycle_mode=mode)


# ------------------------------------------------------------------------------------- auto's file of choices
def write_choices(path, entries):
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("stored", [999, 17, True, -3, "auto", 2.5, None])
def test_invalid_stored_choices_are_measured_again_with_one_warning(stored, tmp_path, monkeypatch, caplog):
    path = tmp_path / "draft_lengths.json"
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(path))
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 4])
    key = calibration_key(model, 2, "verify")
    write_choices(path, {key: stored, "another-model": 2})
    expected = plain(model, input_ids, attention_mask, max_new_tokens=8)
    with caplog.at_level(logging.WARNING):
        output = recycle(model, input_ids, attention_mask, max_new_tokens=8, recycle_mode="verify",
                         return_dict_in_generate=True)
    assert torch.equal(output.sequences, expected)
    warnings = [record for record in caplog.records if str(path) in record.getMessage()]
    assert len(warnings) == 1 and "Measuring again" in warnings[0].getMessage()
    assert len(draft_length_choices(model).measured) == 1
    rewritten = json.loads(path.read_text())
    assert rewritten["another-model"] == 2
    assert rewritten[key]["choice"] == output.recycle_stats["num_draft_tokens"]
    assert type(rewritten[key]["choice"]) is int


@pytest.mark.parametrize("content", ['{"abc": 3', "", "[1, 2]", "\x00\x01garbage"])
def test_an_unreadable_choice_file_is_measured_again_and_rewritten_whole(content, tmp_path, monkeypatch, caplog):
    path = tmp_path / "draft_lengths.json"
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(path))
    path.write_text(content)
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6])
    with caplog.at_level(logging.WARNING):
        recycle(model, input_ids, attention_mask, max_new_tokens=4, recycle_mode="verify")
    warnings = [record.getMessage() for record in caplog.records if str(path) in record.getMessage()]
    assert len(warnings) == 1 and "will be rewritten" in warnings[0]
    assert list(json.loads(path.read_text())) == [calibration_key(model, 1, "verify")]


_WRITER = """
import sys, time
from pathlib import Path
from recycle_hf.checkpoint_code.draft_length_recyclegpt import write_choice
path, writer, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(go.parent / f"ready-{writer}").touch()
while not go.exists():  # every writer starts at once
    time.sleep(0.001)
for index in range(60):
    write_choice(path, f"{writer}-{index}", index % 6)
"""


def test_concurrent_writers_never_lose_each_others_choices(tmp_path):
    path, go = tmp_path / "draft_lengths.json", tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"writer{index}", str(go)])
               for index in range(6)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert all(writer.wait(timeout=120) == 0 for writer in writers)
    choices = json.loads(path.read_text())
    assert choices == {f"writer{w}-{i}": i % 6 for w in range(6) for i in range(60)}
    assert not [name for name in path.parent.iterdir() if name.name.startswith(".draft_lengths.json.") and
                not name.name.endswith(".lock")]


# ------------------------------------------------------------------------------- plain decoding inside verify mode
def test_verify_decoding_plainly_returns_the_same_output_type(tmp_path, monkeypatch):
    path = tmp_path / "draft_lengths.json"
    monkeypatch.setenv("RECYCLE_HF_CALIBRATION", str(path))
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 4, 9])
    write_choices(path, {calibration_key(model, 3, "verify"): 0})  # as if auto had measured plain decoding fastest
    expected = plain(model, input_ids, attention_mask, max_new_tokens=8)
    for num_draft_tokens in ("auto", 0, 2):
        output = recycle(model, input_ids, attention_mask, max_new_tokens=8, recycle_mode="verify",
                         num_draft_tokens=num_draft_tokens, return_dict_in_generate=True)
        assert type(output) is RecycleGenerateOutput
        assert torch.equal(output.sequences, expected)
        stats = output.recycle_stats
        assert stats["mode"] == "verify" and stats["batch_size"] == 3
        assert stats["new_tokens"] == sum(stats["tokens_per_row"]) and stats["tokens_per_base_forward"] >= 1
        if num_draft_tokens != 2:
            assert stats["num_draft_tokens"] == 0 and stats["decoding_path"] == "plain"
            assert stats["tokens_per_row"] == [8, 8, 8] and stats["drafted_tokens"] == 0
        assert not draft_length_choices(model).measured  # the stored 0 was used, not measured again
    tensor = recycle(model, input_ids, attention_mask, max_new_tokens=8, recycle_mode="verify", num_draft_tokens=0)
    assert torch.equal(tensor, expected)
    with pytest.raises(ValueError, match="output_scores"):
        recycle(model, input_ids, attention_mask, max_new_tokens=8, recycle_mode="verify", output_scores=True,
                return_dict_in_generate=True)


# ------------------------------------------------------------------------------------ what each setting means
def test_alternate_mode_refuses_a_draft_count_it_would_not_use():
    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6])
    for k in (0, 2, 3):
        with pytest.raises(ValueError, match=f"num_draft_tokens={k} does not apply to recycle_mode='alternate'"):
            recycle(model, input_ids, attention_mask, max_new_tokens=4, recycle_mode="alternate", num_draft_tokens=k)
    expected = recycle(model, input_ids, attention_mask, max_new_tokens=6, recycle_mode="alternate")
    for k in ("auto", 1):
        output = recycle(model, input_ids, attention_mask, max_new_tokens=6, recycle_mode="alternate",
                         num_draft_tokens=k)
        assert torch.equal(output, expected)


def test_a_custom_drafter_in_alternate_mode_needs_no_draft_count():
    from recycle_hf.checkpoint_code.reference_loop_recyclegpt import ModuleDrafter

    model = tiny_recycle_model("llama")
    input_ids, attention_mask = left_padded_batch([6, 3])
    expected = recycle(model, input_ids, attention_mask, "dynamic", max_new_tokens=6, recycle_mode="alternate")
    output = recycle(model, input_ids, attention_mask, max_new_tokens=6, recycle_mode="alternate",
                     recycle_drafter=ModuleDrafter())
    assert torch.equal(output, expected)
    with pytest.raises(ValueError, match="num_draft_tokens='auto' measures the module"):
        recycle(model, input_ids, attention_mask, max_new_tokens=6, recycle_mode="verify",
                recycle_drafter=ModuleDrafter())
    with pytest.raises(ValueError, match="num_draft_tokens=0 decodes without drafts"):
        recycle(model, input_ids, attention_mask, max_new_tokens=6, recycle_mode="verify", num_draft_tokens=0,
                recycle_drafter=ModuleDrafter())
