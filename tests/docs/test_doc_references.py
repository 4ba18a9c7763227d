"""What the README and docs/ name must exist: modules run with ``python -m``, files, links, and the library layout.

The library moves between stage packages now and then; a page that still names the old place fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
from functools import cache
from pathlib import Path

import pytest
from markdown_blocks import DOC_PAGES, README, ROOT, tables_after

# Paths a page names on purpose although they are not in the tree, and why.
EXAMPLES = {
    "include/models/cancer.yaml": "the README's example of adding a model",
    "include/models/cancer.py": "the README's example of adding a model",
}
PROJECT_ROOTS = ("include", "plugins", "tests", "benchmarks", "tools", "scripts", "dags", "docs")
LIBRARY = ROOT / "include" / "mlops"

_MODULE_RUN = re.compile(r"python[\d.]*\s+-m\s+([A-Za-z_][\w.]*)")
_PATH = re.compile(r"(?<![\w./$-])((?:" + "|".join(PROJECT_ROOTS) + r")/[\w./*{},<>:-]*)")
_DOTTED = re.compile(r"`((?:include|tools|benchmarks)\.[\w.]*\w)[`(]")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return list(
        itertools.chain.from_iterable(
            _expand_braces(path[: match.start()] + option + path[match.end() :]) for option in match.group(1).split(",")
        )
    )


def named_paths(page: Path) -> set[str]:
    paths = set()
    for match in _PATH.finditer(_text(page)):
        path = match.group(1).split("::")[0].rstrip(".,:;")
        paths.update(_expand_braces(path))
    return paths


def _module_file(module: str) -> Path | None:
    """The project file that ``python -m module`` runs, or None if ``module`` is not the project's."""
    base = ROOT.joinpath(*module.split("."))
    if not (ROOT / module.split(".")[0]).is_dir():
        return None
    if base.is_dir():
        return base / "__main__.py"
    return base.with_suffix(".py")


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_python_m_modules_exist(page: Path) -> None:
    missing = []
    for module in sorted(set(_MODULE_RUN.findall(_text(page)))):
        module = module.rstrip(".")
        path = _module_file(module)
        if path is not None:
            if not path.is_file():
                missing.append(f"python -m {module}: no {path.relative_to(ROOT)}")
        elif importlib.util.find_spec(module) is None:
            missing.append(f"python -m {module}: no such module")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_named_paths_exist(page: Path) -> None:
    missing = []
    for path in sorted(named_paths(page)):
        if path in EXAMPLES:
            continue
        if "<" in path:  # a placeholder: what comes before it must exist
            path = path.split("<")[0]
            path = path if path.endswith("/") else path.rsplit("/", 1)[0] + "/"
        if "*" in path:
            if not list(ROOT.glob(path.rstrip("/"))):
                missing.append(f"{path}: matches nothing")
        elif not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{page.name} names paths that do not exist:\n" + "\n".join(missing)


def test_the_examples_are_still_named() -> None:
    named = set().union(*(named_paths(page) for page in DOC_PAGES))
    assert set(EXAMPLES) <= named, "drop the examples no page names any more"


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_dotted_references_exist(page: Path) -> None:
    """``include.mlops.x.y.name``: the module exists, and defines ``name`` (read from its source, not imported)."""
    missing = []
    for reference in sorted(set(_DOTTED.findall(_text(page)))):
        parts = reference.split(".")
        for split in range(len(parts), 0, -1):
            base = ROOT.joinpath(*parts[:split])
            module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if module.is_file():
                rest = parts[split:]
                if rest and rest[0] not in _top_level_names(module):
                    missing.append(f"{reference}: {module.relative_to(ROOT)} defines no {rest[0]}")
                break
        else:
            missing.append(f"{reference}: no such module")
    assert not missing, "\n".join(missing)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> set[str]:
    in_code = False
    found = set()
    for line in _text(page).splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(_anchor(line.lstrip("#")))
    return found


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_links_resolve(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_text(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: {linked.name} has no heading #{fragment}")
    assert not broken, "\n".join(broken)


def _library_layout() -> list[list[str]]:
    return tables_after(_text(README), "### Library layout")


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_library_layout_names_what_exists() -> None:
    missing = []
    for package, modules, _what in _library_layout():
        (folder,) = _backticked(package)
        if folder == "include/mlops/":
            for name in _backticked(modules):
                if not (LIBRARY / name).exists():
                    missing.append(f"include/mlops/{name}")
            continue
        stage = LIBRARY / folder
        if not (stage / "__init__.py").is_file():
            missing.append(f"include/mlops/{folder} (a package)")
            continue
        for name in _backticked(modules):
            name = name.rstrip("/")
            if not any(stage.rglob(f"{name}.py")) and not any(p.is_dir() for p in stage.rglob(name)):
                missing.append(f"include/mlops/{folder}: {name}")
    assert not missing, "README's library layout names what is not there:\n" + "\n".join(missing)


def test_library_layout_lists_every_package() -> None:
    listed = set()
    for package, modules, _what in _library_layout():
        (folder,) = _backticked(package)
        names = _backticked(modules) if folder == "include/mlops/" else [folder]
        listed.update(name.rstrip("/") for name in names)
    packages = {path.parent.name for path in LIBRARY.glob("*/__init__.py")}
    assert packages <= listed, f"add to README's library layout: {sorted(packages - listed)}"
