"""No import cycles between memekit's modules.

Every module of ``space/``, ``analysis/`` and ``search/`` is parsed (not imported); its module-level
imports (``import`` and ``from ... import`` statements outside functions and classes, including those
under ``if``/``try`` and ``if TYPE_CHECKING:``) give the edges of a graph, which must sort
topologically: :class:`graphlib.TopologicalSorter` raises :class:`graphlib.CycleError` on a cycle. An
import inside a function is left out on purpose: it runs at call time, after both modules loaded.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the folders space/, analysis/, search/ are memekit.space, ...
PACKAGES = ("space", "analysis", "search")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("memekit", *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module's body, also under ``if``/``try``/``with``, not in functions
    or classes."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    todo.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return found


def imported_modules(name: str, path: Path) -> set[str]:
    """The memekit modules ``name`` (at ``path``) imports at module level; ``from pkg import mod``
    counts as importing ``pkg.mod`` when that is a module, else ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in module_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_the_walk_finds_the_packages_and_their_imports() -> None:
    """The graph is the one it claims to be (so an empty graph cannot pass the cycle test)."""
    assert {"memekit.space.spec", "memekit.analysis.data", "memekit.search.study"} <= set(MODULES)
    assert "memekit.search.search_config" in GRAPH["memekit.search.study"]  # a relative import
    assert "memekit.space" in GRAPH["memekit.analysis.data"]  # an absolute one, of a package
    assert sum(map(len, GRAPH.values())) > len(GRAPH)


def test_a_cycle_is_found() -> None:
    """One edge added backwards (the config imports the study that imports it) is a cycle."""
    graph = {**GRAPH, "memekit.search.search_config": GRAPH["memekit.search.search_config"] | {"memekit.search.study"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())


def test_no_import_cycles() -> None:
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
