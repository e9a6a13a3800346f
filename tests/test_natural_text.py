"""The natural-text collector of the training recipe (examples/collect_natural_text.py): what it reads, what it
never reads, and that it writes the same text and provenance every time."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest


EXAMPLES_DIR = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def collector():
    spec = importlib.util.spec_from_file_location("collect_natural_text", EXAMPLES_DIR / "collect_natural_text.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PROSE = "This function explains, in plain words, what the module does and why it does it that way. " * 3


def test_docstrings_are_read_in_file_order_and_only_when_they_are_prose(tmp_path, collector):
    source = tmp_path / "example.py"
    source.write_text(
        f'"""Module. {PROSE}"""\n\n'
        f'class Thing:\n    """Class. {PROSE}"""\n\n'
        f'    def method(self):\n        """Method. {PROSE}"""\n\n'
        'def short():\n    """Too short."""\n\n'
        f'def symbols():\n    """{"[0, 1] -> {{2: 3}}; " * 20}"""\n'
    )
    docstrings = collector.file_docstrings(source)
    assert [text.split(".")[0] for text in docstrings] == ["Module", "Class", "Method"]
    (tmp_path / "broken.py").write_text("def (:\n")
    assert collector.file_docstrings(tmp_path / "broken.py") == []


def test_evaluation_packages_and_test_folders_are_never_sources(collector):
    for source in ("lm_eval", "evaluate", "recycle-hf"):
        with pytest.raises(ValueError, match="never a source"):
            collector.source_files(source)
    _, files = collector.source_files("peft")
    assert files and not any({"tests", "test"} & set(path.parts[-3:-1]) for path in files)


def test_collection_is_reproducible_within_budget_and_records_provenance(tmp_path, collector):
    records, provenance = collector.collect(["python", "peft"], max_characters=60_000, seed=3)
    again, _ = collector.collect(["python", "peft"], max_characters=60_000, seed=3)
    assert records == again
    assert sum(len(record["text"]) for record in records) == 60_000
    assert {record["source"].split(":")[0] for record in records} == {"python", "peft"}
    # Sources are named from their package root on, the same on every machine.
    assert all(not record["source"].split(":", 1)[1].startswith("/") for record in records)
    assert all(len(record["text"]) <= collector.MAX_DOCUMENT_CHARACTERS for record in records)
    paragraphs = [p.strip() for record in records for p in record["text"].split("\n\n")]
    long_paragraphs = [p for p in paragraphs if len(p) >= collector.MIN_REPEATED_CHARACTERS]
    assert len(long_paragraphs) == len(set(long_paragraphs))  # copies kept once
    heldout = (EXAMPLES_DIR / "data" / "heldout_prompts.txt").read_text().splitlines()
    assert not any(prompt in record["text"] for prompt in heldout for record in records)

    by_source = {record.source: record for record in provenance}
    assert by_source["python"].license == "PSF-2.0"
    assert by_source["peft"].license and by_source["peft"].version
    assert sum(record.characters for record in provenance) == 60_000

    output = tmp_path / "natural" / "text.jsonl"
    collector.write_collection(records, provenance, output)
    assert [json.loads(line) for line in output.read_text().splitlines()] == records
    manifest = json.loads((output.parent / "provenance.json").read_text())
    assert [entry["source"] for entry in manifest] == ["python", "peft"]
    assert sorted(path.name for path in output.parent.iterdir()) == ["provenance.json", "text.jsonl"]


def test_heldout_documents_are_ones_the_training_collection_never_read(collector):
    sources = ["python", "peft"]
    training, _ = collector.collect(sources, max_characters=40_000, seed=3)
    heldout = collector.heldout_documents(sources, max_characters=40_000, heldout_characters=30_000, seed=3)
    assert heldout and sum(len(record["text"]) for record in heldout) <= 30_000
    # Further files of a package (the language reference gives one document per topic, all from one file).
    package_files = [{record["source"] for record in records if not record["source"].startswith("python:")}
                     for records in (heldout, training)]
    assert package_files[0] and not package_files[0] & package_files[1]

    def long_paragraphs(records: list[dict]) -> set[str]:
        paragraphs = (p.strip() for record in records for p in record["text"].split("\n\n"))
        return {p for p in paragraphs if len(p) >= collector.MIN_REPEATED_CHARACTERS}

    assert not long_paragraphs(heldout) & long_paragraphs(training)
