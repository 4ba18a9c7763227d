"""The project's module import graph: no cycles, and each layer imports only what it may.

The graph is read from the source with ``ast`` (nothing is imported), so the
check is fast and also sees what only runs later: an import inside a function
(or under ``if TYPE_CHECKING:``) still ties the two modules together, so it
counts towards a cycle like any other.  Modules are named as they are imported: ``include.mlops...``,
``mlops_airflow...`` (``plugins/`` is on the path), ``dags...`` and
``tools...``; a package's ``__init__`` is the package itself.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the name its modules are imported under ("" : the folder is on sys.path).
SOURCE_ROOTS = {"include": "include", "plugins": "", "dags": "dags", "tools": "tools"}
# Third-party packages a DAG file must not import while it is parsed.
HEAVY_FOR_DAGS = ("tensorflow", "keras", "pandas", "great_expectations")


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written (absolute, dotted)."""

    target: str
    line: int
    # Runs when the module is imported: not inside a function, nor under ``if TYPE_CHECKING:``.
    at_import_time: bool


@dataclass(frozen=True)
class ImportGraph:
    files: Mapping[str, Path]  # module name -> source file
    imports: Mapping[str, tuple[Import, ...]]  # module name -> what it imports (project modules and others)

    def resolve(self, target: str) -> str | None:
        """The project module ``target`` names, or its longest project prefix; None for other packages."""
        parts = target.split(".")
        for end in range(len(parts), 0, -1):
            name = ".".join(parts[:end])
            if name in self.files:
                return name
        return None

    def edges(self) -> dict[str, set[str]]:
        """Project module -> the project modules it imports."""
        graph: dict[str, set[str]] = {name: set() for name in self.files}
        for name, imports in self.imports.items():
            for item in imports:
                target = self.resolve(item.target)
                if target is not None:
                    graph[name].add(target)
        return graph


def module_name(path: Path, folder: Path, prefix: str) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([p for p in [prefix, *parts] if p])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, at_import_time: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, at_import_time
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk_imports(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk_imports(ast.Module(body=[statement], type_ignores=[]), False)
            for statement in child.orelse:
                yield from _walk_imports(ast.Module(body=[statement], type_ignores=[]), at_import_time)
        else:
            yield from _walk_imports(child, at_import_time)


def module_imports(source: str, name: str, is_package: bool, modules: Iterable[str]) -> tuple[Import, ...]:
    """What module ``name`` imports; ``from pkg import x`` is ``pkg.x`` where that is a module, else ``pkg``."""
    known = set(modules)
    found = []
    for node, at_import_time in _walk_imports(ast.parse(source), True):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno, at_import_time) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.append(Import(submodule if submodule in known else base, node.lineno, at_import_time))
    return tuple(found)


def build_import_graph(root: Path = PROJECT_ROOT) -> ImportGraph:
    files: dict[str, Path] = {}
    for folder, prefix in SOURCE_ROOTS.items():
        for path in sorted((root / folder).rglob("*.py")):
            files[module_name(path, root / folder, prefix)] = path
            # A folder without __init__.py is still importable (a namespace package).
            for parent in path.parents:
                if parent == root / folder:
                    break
                files.setdefault(module_name(parent / "__init__.py", root / folder, prefix), parent)
    imports = {
        name: module_imports(path.read_text(), name, path.name == "__init__.py", files) if path.is_file() else ()
        for name, path in files.items()
    }
    return ImportGraph(files=files, imports=imports)


def strongly_connected_components(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); components in no particular order."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.get(successor, ())))))
                    break
                if successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def shortest_cycle(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph.get(node, ())):
            if successor not in members:
                continue
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    raise ValueError(f"{component} holds no cycle")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One concrete cycle per strongly connected component, as ``a -> b -> a``."""
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) > 1 or component[0] in graph.get(component[0], ()):
            cycles.append(" -> ".join(shortest_cycle(graph, component)))
    return sorted(cycles)


@pytest.fixture(scope="module")
def import_graph() -> ImportGraph:
    return build_import_graph()


def _where(graph: ImportGraph, name: str, item: Import) -> str:
    return f"{graph.files[name].relative_to(PROJECT_ROOT)}:{item.line} imports {item.target}"


def _top_package(target: str) -> str:
    return target.split(".")[0]


# --------------------------------------------------------------------------- the finder itself


def test_cycle_finder_reports_one_cycle_per_component() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": {"d"},
        "f": {"f"},
        "g": {"a"},
        "h": set(),
    }
    assert find_cycles(graph) == ["a -> b -> c -> a", "d -> e -> d", "f -> f"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "g": {"a", "c"}}) == []


def test_graph_resolves_from_imports_lazy_imports_and_packages(tmp_path: Path) -> None:
    (tmp_path / "include" / "pkg").mkdir(parents=True)
    (tmp_path / "include" / "__init__.py").write_text("")
    (tmp_path / "include" / "pkg" / "__init__.py").write_text("from include.pkg.low import VALUE\n")
    (tmp_path / "include" / "pkg" / "low.py").write_text(
        "from __future__ import annotations\nVALUE = 1\n\ndef late():\n    from include.pkg import high\n"
    )
    (tmp_path / "include" / "pkg" / "high.py").write_text("from . import low\nfrom include.pkg import VALUE\n")
    for folder in ("plugins", "dags", "tools"):
        (tmp_path / folder).mkdir()
    graph = build_import_graph(tmp_path)
    assert graph.edges() == {
        "include": set(),
        "include.pkg": {"include.pkg.low"},
        "include.pkg.low": {"include.pkg.high"},
        "include.pkg.high": {"include.pkg.low", "include.pkg"},
    }
    assert [item.at_import_time for item in graph.imports["include.pkg.low"] if item.target.startswith("include")] == [
        False
    ]
    assert find_cycles(graph.edges()) == ["include.pkg -> include.pkg.low -> include.pkg.high -> include.pkg"]


# --------------------------------------------------------------------------- the project


def test_the_graph_covers_every_layer(import_graph: ImportGraph) -> None:
    names = set(import_graph.files)
    for module in ("include.mlops.cli", "mlops_airflow.lifecycle", "dags.lifecycle", "tools.pod_security"):
        assert module in names
    assert import_graph.edges()["dags.lifecycle"], "the DAG file's imports were not read"


def test_no_import_cycles(import_graph: ImportGraph) -> None:
    cycles = find_cycles(import_graph.edges())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_library_imports_neither_airflow_nor_the_plugins_nor_tools(import_graph: ImportGraph) -> None:
    forbidden = {"airflow", "mlops_airflow", "mlops_plugin", "tools", "dags"}
    offending = [
        _where(import_graph, name, item)
        for name, imports in import_graph.imports.items()
        if name.split(".")[0] == "include"
        for item in imports
        if _top_package(item.target) in forbidden
    ]
    assert not offending, "include/ must stay free of Airflow, the plugins and tools:\n" + "\n".join(offending)


def test_dag_files_import_no_heavy_library_at_parse_time(import_graph: ImportGraph) -> None:
    offending = [
        _where(import_graph, name, item)
        for name, imports in import_graph.imports.items()
        if name.split(".")[0] == "dags"
        for item in imports
        if item.at_import_time and _top_package(item.target) in HEAVY_FOR_DAGS
    ]
    assert not offending, "DAG files import these while being parsed:\n" + "\n".join(offending)
