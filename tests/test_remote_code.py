"""The remote-code rule as a test: the files a checkpoint carries import only the standard library, torch,
transformers and each other, each imports in a fresh interpreter where recycle_hf cannot be imported (as on a machine
that downloaded a checkpoint), and README's list of them is the list save_pretrained writes."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import WITHOUT_RECYCLE_HF, tiny_recycle_model


REPOSITORY = Path(__file__).resolve().parents[1]
ALLOWED_TOP_LEVEL = set(sys.stdlib_module_names) | {"torch", "transformers", "__future__"}


@pytest.fixture(scope="module")
def remote_code_files(tmp_path_factory) -> dict[str, Path]:
    checkpoint = tmp_path_factory.mktemp("remote") / "checkpoint"
    tiny_recycle_model("llama").save_pretrained(checkpoint)
    return {path.name: path for path in sorted(checkpoint.glob("*.py"))}


def test_the_repository_root_readme_and_save_pretrained_name_the_same_files(remote_code_files):
    linked = {path.name for path in REPOSITORY.glob("*_recyclegpt.py")}
    assert set(remote_code_files) == linked
    readme = (REPOSITORY / "README.md").read_text()
    paragraph = readme[readme.index("- The remote-code files a checkpoint carries"):]
    paragraph = paragraph[:paragraph.index("\n- ")]
    assert {name for name in remote_code_files if f"`{name}`" in paragraph} == set(remote_code_files)


def _guarded_by_import_error(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a `try` that handles ImportError (an optional import with its own message)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            handler.type is not None and "ImportError" in ast.unparse(handler.type) for handler in node.handlers
        ):
            guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return guarded


def test_remote_code_imports_only_the_standard_library_torch_transformers_and_itself(remote_code_files):
    siblings = {Path(name).stem for name in remote_code_files}
    for name, path in remote_code_files.items():
        tree = ast.parse(path.read_text())
        optional = _guarded_by_import_error(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
                assert tops <= ALLOWED_TOP_LEVEL, (name, tops - ALLOWED_TOP_LEVEL)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1 and node.module in siblings, (name, node.module)
                elif id(node) in optional:  # e.g. save_adapter's `from recycle_hf.adapter import ...`
                    assert node.module.split(".")[0] in ALLOWED_TOP_LEVEL | {"recycle_hf"}, (name, node.module)
                else:
                    assert node.module.split(".")[0] in ALLOWED_TOP_LEVEL, (name, node.module)


_IMPORT_EACH = WITHOUT_RECYCLE_HF + textwrap.dedent(
    """
    import importlib, sys
    sys.path.insert(0, sys.argv[1])
    for stem in sys.argv[2:]:
        importlib.import_module(f"remote_checkpoint.{stem}")
    assert not [name for name in sys.modules if name.split(".")[0] == "recycle_hf"]
    print("imported", len(sys.argv) - 2)
    """
)


def test_each_remote_code_file_imports_without_recycle_hf(remote_code_files, tmp_path):
    package = tmp_path / "remote_checkpoint"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, path in remote_code_files.items():
        (package / name).write_text(path.read_text())
    stems = sorted(Path(name).stem for name in remote_code_files)
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, str(tmp_path), *stems], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(stems)}"
