"""Collect natural text for the module's distillation loss from what `.ci/setup` installs: no download, no generation.

The KL loss to the base's own next-token distribution needs only a teacher-forced forward of the base over some
text, so any prose will do, and the more varied it is the less the module can get by on memorised spellings. This
script gathers the documentation that ships inside installed Python distributions: the docstrings of their modules,
classes and functions (one document per source file, the docstrings in file order, so that a file's names recur
within its document as the names of a chat answer recur within it), and the Python language reference
(`pydoc_data.topics`). Every source is a permissively licensed distribution; the licence and version of each are
read from its installed metadata and written to `provenance.json` beside the text.

Never collected: benchmark or evaluation data (lm-eval, evaluate and the metric packages are not sources; test
folders are skipped), and this project's own files.

    python examples/collect_natural_text.py --output work/natural/text.jsonl --max-characters 2000000

Sources are taken in turns, one file at a time in a seeded order, so every source contributes until it runs out or
the character budget is spent; identical docstrings (copies across files) are kept once.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import inspect
import json
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recycle_hf.atomic import staged_file


# Distributions that `.ci/setup` installs (directly or as dependencies) and whose documentation is prose:
# numpydoc-style docstrings (numpy, scipy, pandas, scikit-learn, networkx, sympy, matplotlib, nltk) and the
# Hugging Face and torch docstrings. "python" is the standard library of the running interpreter.
DEFAULT_SOURCES = (
    "python",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "networkx",
    "sympy",
    "matplotlib",
    "nltk",
    "torch",
    "transformers",
    "datasets",
    "huggingface_hub",
    "accelerate",
    "peft",
)
# Never sources: they carry (or score) evaluation data.
EXCLUDED_SOURCES = ("lm_eval", "lm-eval", "evaluate", "rouge_score", "sacrebleu", "recycle-hf", "recycle_hf")
# Folders whose files are not documentation.
SKIPPED_FOLDERS = (
    "tests", "test", "testing", "_vendor", "vendored", "__pycache__", "idlelib", "lib2to3", "site-packages"
)
MIN_DOCSTRING_CHARACTERS = 200
# Long files are cut, so that no one file fills a source's share.
MAX_DOCUMENT_CHARACTERS = 12_000
# Paragraphs at least this long are kept once over the whole collection.
MIN_REPEATED_CHARACTERS = 80
# A docstring mostly of code, tables or symbols reads little like prose.
MIN_LETTER_SHARE = 0.6


@dataclass
class SourceProvenance:
    """Where one source's text came from, as recorded in `provenance.json`."""

    source: str
    version: str
    license: str
    location: str
    files: int = 0
    documents: int = 0
    characters: int = 0
    examples: list[str] = field(default_factory=list)


def source_license(distribution: importlib.metadata.Distribution) -> str:
    """The licence a distribution declares: `License-Expression`, else its licence classifiers, else `License`."""
    metadata = distribution.metadata
    if metadata.get("License-Expression"):
        return metadata["License-Expression"]
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if c.startswith("License")]
    if classifiers:
        return " / ".join(classifiers)
    declared = (metadata.get("License") or "").strip()
    return declared.splitlines()[0][:100] if declared else "unknown"


def source_files(source: str) -> tuple[SourceProvenance, list[Path]]:
    """The provenance record and the Python files (sorted) of one source."""
    if source in EXCLUDED_SOURCES:
        raise ValueError(f"{source} is never a source: it carries or scores evaluation data.")
    if source == "python":
        root = Path(sysconfig.get_paths()["stdlib"])
        provenance = SourceProvenance("python", sysconfig.get_python_version(), "PSF-2.0", "standard library")
        files = sorted(root.rglob("*.py"))
    else:
        try:
            distribution = importlib.metadata.distribution(source)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{source} is not installed; install it, or leave it out of --sources.") from None
        provenance = SourceProvenance(
            distribution.metadata["Name"], distribution.version, source_license(distribution), "site-packages"
        )
        root = Path(distribution.locate_file(""))
        files = sorted(root / entry for entry in distribution.files or () if entry.suffix == ".py")
    kept = [path for path in files if not set(path.relative_to(root).parts[:-1]) & set(SKIPPED_FOLDERS)]
    return provenance, kept


def is_prose(text: str) -> bool:
    letters = sum(character.isalpha() or character.isspace() for character in text)
    return len(text) >= MIN_DOCSTRING_CHARACTERS and letters >= MIN_LETTER_SHARE * len(text)


def file_docstrings(path: Path) -> list[str]:
    """The prose docstrings of a Python file (module, classes, functions), in the order they appear."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree, *(node for node in ast.walk(tree) if isinstance(node, _DOCUMENTED_NODES))]
    nodes.sort(key=lambda node: getattr(node, "lineno", 0))
    texts = (ast.get_docstring(node, clean=False) for node in nodes)
    return [docstring for docstring in (inspect.cleandoc(text) for text in texts if text) if is_prose(docstring)]


_DOCUMENTED_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def language_reference() -> Iterator[str]:
    """The sections of the Python language reference that `pydoc` shows (`pydoc_data.topics`), sorted by name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        if is_prose(topics[name]):
            yield topics[name].strip()


def source_documents(source: str, seed: int) -> tuple[SourceProvenance, Iterator[tuple[str, str]]]:
    """One source's provenance and its `(file, document)` pairs, files in a seeded order."""
    provenance, files = source_files(source)
    random.Random(f"{seed}:{source}").shuffle(files)

    def documents() -> Iterator[tuple[str, str]]:
        if source == "python":
            for section in language_reference():
                yield "pydoc_data/topics.py", section
        for path in files:
            docstrings = file_docstrings(path)
            if docstrings:
                yield str(path), "\n\n".join(docstrings)

    return provenance, documents()


def collect(sources: list[str], max_characters: int, seed: int = 0) -> tuple[list[dict], list[SourceProvenance]]:
    """Documents (`{"text", "source"}`) taken from `sources` in turns, and the provenance of each source."""
    streams = {source: source_documents(source, seed) for source in sources}
    provenance = {source: record for source, (record, _) in streams.items()}
    active = {source: stream for source, (_, stream) in streams.items()}
    seen: set[str] = set()
    records: list[dict] = []
    total = 0
    while active and total < max_characters:
        for source in list(active):
            document = next(active[source], None)
            if document is None:
                del active[source]
                continue
            path, text = document
            budget = min(MAX_DOCUMENT_CHARACTERS, max_characters - total)
            text = "\n\n".join(_first_copies(text.split("\n\n"), seen))[:budget]
            if not text:
                continue
            record = provenance[source]
            record.files += 1
            record.documents += 1
            record.characters += len(text)
            if len(record.examples) < 3:
                record.examples.append(_relative(path))
            records.append({"text": text, "source": f"{record.source}:{_relative(path)}"})
            total += len(text)
            if total >= max_characters:
                break
    return records, [provenance[source] for source in sources]


def heldout_documents(
    sources: list[str], max_characters: int, heldout_characters: int, seed: int = 0, training: list[dict] | None = None
) -> list[dict]:
    """The documents that `heldout_characters` more would add to `collect(sources, max_characters, seed)` (pass
    that collection's records as `training` when they are at hand, else they are collected again).

    The larger collection starts with the same documents (its copy of the last one longer, where the budget cut
    it): what it adds after them are documents the smaller one never read (further source files, further topics
    of the language reference), and a paragraph copied between documents is kept once, in the smaller one.
    """
    if training is None:
        training, _ = collect(sources, max_characters, seed)
    larger, _ = collect(sources, max_characters + heldout_characters, seed)
    return larger[len(training) :]


def _relative(path: str) -> str:
    """A path from its distribution's or the standard library's root on, the same on every machine."""
    parts = Path(path).parts
    for root in ("site-packages", f"python{sysconfig.get_python_version()}"):
        if root in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(root) :])
    return path


def _first_copies(paragraphs: list[str], seen: set[str]) -> Iterator[str]:
    """The paragraphs not seen before: a docstring copied into many files (transformers' "Copied from") counts
    once. Short ones (list items, headings) repeat naturally and are always kept."""
    for paragraph in paragraphs:
        if len(paragraph.strip()) < MIN_REPEATED_CHARACTERS:
            yield paragraph
            continue
        digest = hashlib.sha1(paragraph.strip().encode("utf-8")).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield paragraph


def write_collection(records: list[dict], provenance: list[SourceProvenance], output: Path) -> None:
    """Write the documents as JSON Lines and `provenance.json` beside them, each through a temporary file."""
    write_documents(records, output)
    with staged_file(output.parent / "provenance.json") as temporary:
        temporary.write_text(json.dumps([asdict(record) for record in provenance], indent=2) + "\n", encoding="utf-8")


def write_documents(records: list[dict], output: Path) -> None:
    """Write the documents as JSON Lines (each names its source file), through a temporary file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(output) as temporary:
        temporary.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                             encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help=".jsonl file to write (provenance.json beside it)")
    parser.add_argument("--max-characters", type=int, default=2_000_000, help="stop after this many (default 2M)")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated distributions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-output", type=Path, help="also write the documents the next --heldout-characters "
                        "would add, for evaluation only (the --output collection is unchanged by this)")
    parser.add_argument("--heldout-characters", type=int, default=80_000)
    args = parser.parse_args()
    sources = args.sources.split(",")
    records, provenance = collect(sources, args.max_characters, args.seed)
    write_collection(records, provenance, args.output)
    if args.heldout_output is not None:
        heldout = heldout_documents(sources, args.max_characters, args.heldout_characters, args.seed, records)
        write_documents(heldout, args.heldout_output)
        print(f"Wrote {len(heldout)} held-out documents to {args.heldout_output}.")
    for record in provenance:
        print(f"{record.source} {record.version} ({record.license}): {record.documents} documents, "
              f"{record.characters} characters")
    print(f"Wrote {len(records)} documents to {args.output}.")


if __name__ == "__main__":
    main()
