"""The package's shape as tests: small files, no import circle (lazy imports counted), no function written twice,
per-model decoding state in one file, and README's layout naming every module there is."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path


REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "src" / "recycle_hf"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in the file (inside functions and TYPE_CHECKING too)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = resolve(target) if target.startswith("recycle_hf") else None
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_source_file_is_over_600_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_no_import_cycle_lazy_imports_included():
    graph = import_graph()
    assert graph["recycle_hf.checkpoint_code.modeling_recyclegpt"]  # the graph is read at all
    assert not import_cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def _function_bodies() -> dict[str, list[str]]:
    """The AST of every function of 4 or more statements (names and docstrings left out) -> where it is defined."""
    bodies = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if sum(1 for statement in body for _ in ast.walk(statement) if isinstance(_, ast.stmt)) >= 4:
                    dump = ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False)
                    bodies[dump].append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    return bodies


def test_no_function_body_is_written_twice():
    assert not [places for places in _function_bodies().values() if len(places) > 1]


def test_per_model_decoding_state_lives_in_the_runtime_file():
    # Attributes set on a model, layer or config by the decoding code, or module-level registries keyed by model.
    pattern = re.compile(r"__dict__\[|\.__dict__\.setdefault|WeakKeyDictionary|id\(config\)|model\._recycle_")
    places = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if pattern.search(path.read_text())]
    assert places == ["checkpoint_code/runtime_recyclegpt.py"]


def test_readme_layout_names_every_module():
    readme = (REPOSITORY / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    missing = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(PACKAGE)
        if f"`{path.stem}`" not in layout and f"`{path.name}`" not in layout and f"`{relative}`" not in layout:
            missing.append(str(relative))
    assert not missing
