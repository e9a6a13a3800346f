"""Training data files: documents read from text and JSON Lines files, one EOS-separated token stream, blocks."""

from __future__ import annotations

import json

import pytest

from recycle_hf.data import TokenBlockDataset, load_token_blocks, read_documents, resolve_data_files, tokenize_documents

from conftest import EOS, PAD


class _WordTokenizer:
    """Stand-in for a tokenizer: one id per whitespace-separated word `t<id>`."""

    eos_token_id = EOS
    pad_token_id = PAD

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [[int(word[1:]) for word in text.split()] for text in texts]}


def test_documents_become_one_eos_separated_stream_cut_into_blocks(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"prompt": "p", "completion": "c", "text": "t5 t6 t7"})
        + "\n\n"
        + json.dumps({"text": f"t8 t{EOS}"})  # already closed by EOS: not closed twice
        + "\n"
    )
    (tmp_path / "b.txt").write_text("t9 t10\nt11")
    files = resolve_data_files([str(tmp_path / "*.jsonl"), str(tmp_path / "b.txt")])
    assert [path.name for path in files] == ["a.jsonl", "b.txt"]
    assert list(read_documents(files)) == ["t5 t6 t7", f"t8 t{EOS}", "t9 t10\nt11"]

    stream = tokenize_documents(read_documents(files), _WordTokenizer())
    assert stream == [5, 6, 7, EOS, 8, EOS, 9, 10, 11, EOS]

    dataset = load_token_blocks([str(tmp_path / "*")], _WordTokenizer(), block_size=4)
    assert len(dataset) == 3
    assert dataset[0]["input_ids"].tolist() == [5, 6, 7, EOS]
    assert dataset[2]["input_ids"].tolist() == [11, EOS, PAD, PAD]
    assert dataset[2]["attention_mask"].tolist() == [1, 1, 0, 0]
    assert dataset[2]["labels"].tolist() == [11, EOS, -100, -100]
    assert dataset.num_tokens == 10
    assert dataset.token_ids().tolist() == stream
    assert load_token_blocks([str(tmp_path / "*")], _WordTokenizer(), block_size=4, max_tokens=6).num_tokens == 6


def test_a_last_block_too_short_to_teach_is_dropped():
    dataset = TokenBlockDataset(list(range(3, 12)), block_size=4, pad_token_id=PAD)
    assert len(dataset) == 2  # 9 tokens: two full blocks, a last block of one token has no target


def test_bad_data_files_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="No training file matches"):
        resolve_data_files([str(tmp_path / "missing*.jsonl")])
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported training file type '.csv'"):
        resolve_data_files([str(tmp_path / "data.csv")])
    with pytest.raises(ValueError, match="is a folder"):
        resolve_data_files([str(tmp_path)])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "t5"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text' field"):
        list(read_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(ValueError, match="too few for one block"):
        TokenBlockDataset([5], block_size=4, pad_token_id=PAD)
