"""The import graph of ``vmunet`` has no cycles.

Every module under ``vmunet/`` is parsed with :mod:`ast` (nothing is imported) and every import
it can run is collected: at module level and inside functions (lazy imports), absolute and
relative, plus ``importlib.import_module("vmunet.…")`` with a literal name. Imports that run only
under ``if TYPE_CHECKING:`` are left out: they never execute.

Edges point from the importing module to the module whose code the import runs:

- ``import vmunet.a.b`` and ``from vmunet.a import b`` (``b`` a submodule) point to ``vmunet.a.b``;
- ``from vmunet.a import name`` (``name`` not a submodule) points to ``vmunet.a`` itself (its
  ``__init__`` when it is a package), also from inside ``vmunet.a``: a submodule that reads names
  from its own package's ``__init__`` while that ``__init__`` imports the submodule only works in
  one import order, so it is a cycle like any other;
- a package's ``__init__`` importing its own submodules is an ordinary edge.

Importing ``vmunet.a.b`` also initialises the package ``vmunet.a`` first; that implicit step is
not an edge (otherwise every package whose ``__init__`` re-exports a submodule would be a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vmunet"


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` runs ``target``'s module code at ``path``:``line``."""

    source: str
    target: str
    path: str
    line: int
    lazy: bool


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file for every module of ``package`` under ``root`` (``__init__`` = package)."""
    names: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.AST, bool]]:
    """(import node, lazy) for every import the module can run; ``if TYPE_CHECKING:`` bodies skipped."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # the else branch does run
                    yield from walk_one(stmt, lazy)
                continue
            yield from walk_one(child, lazy)

    def walk_one(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif isinstance(node, ast.Call) and _import_module_name(node) is not None:
            yield node, True
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from walk(node, inner)

    yield from walk(tree, False)


def _import_module_name(call: ast.Call) -> str | None:
    """The literal module name of an ``importlib.import_module("…")`` call, else None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not call.args or call.keywords:
        return None
    arg = call.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _owner(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is one of ``modules`` (the module whose code runs)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every ``package``-internal import edge of the modules under ``root / package``."""
    modules = module_names(root, package)
    edges: list[Edge] = []
    for source, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(root))
        for node, lazy in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(source, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            else:
                targets = [_import_module_name(node) or ""]
            for dotted in targets:
                if dotted != package and not dotted.startswith(package + "."):
                    continue
                target = _owner(dotted, modules)
                if target is not None and target != source:
                    edges.append(Edge(source, target, rel, node.lineno, lazy))
    return edges


def find_cycles(edges: list[Edge], limit: int = 200) -> list[list[Edge]]:
    """The elementary cycles of the graph (at most ``limit``), each as its list of edges.

    Every cycle is listed once, starting at its smallest module name.
    """
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)  # first import of a pair stands for all
        graph.setdefault(e.target, {})
    cycles: list[list[Edge]] = []
    for start in sorted(graph):
        # cycles whose smallest node is ``start``: walk only through larger nodes
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path: list[Edge] = []
        on_path = {start}
        while stack and len(cycles) < limit:
            node, successors = stack[-1]
            nxt = next(successors, None)
            if nxt is None:
                stack.pop()
                if path:
                    on_path.discard(path.pop().target)
                continue
            if nxt == start:
                cycles.append([*path, graph[node][nxt]])
            elif nxt > start and nxt not in on_path:
                path.append(graph[node][nxt])
                on_path.add(nxt)
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return cycles


def format_cycle(cycle: list[Edge]) -> str:
    """``a -> b -> a`` and, below it, the import line behind every arrow."""
    chain = " -> ".join([e.source for e in cycle] + [cycle[0].source])
    where = "\n".join(
        f"    {e.source} -> {e.target}  ({e.path}:{e.line}{', lazy' if e.lazy else ''})" for e in cycle
    )
    return f"{chain}\n{where}"


def test_detector_finds_a_synthetic_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # lazy and relative
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import x\n")
    (pkg / "sub" / "c.py").write_text("from pkg.sub import y\n")  # reads its own package's __init__
    (pkg / "sub" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import e\n"
    )
    (pkg / "sub" / "e.py").write_text("from pkg.sub import d\n")
    cycles = find_cycles(import_edges(tmp_path, "pkg"))
    chains = sorted(" -> ".join(e.source for e in c) for c in cycles)
    assert chains == ["pkg.a -> pkg.b", "pkg.sub -> pkg.sub.c"], chains
    assert "pkg.a -> pkg.b -> pkg.a" in format_cycle(next(c for c in cycles if c[0].source == "pkg.a"))


def test_vmunet_import_graph_has_no_cycles() -> None:
    edges = import_edges(ROOT, PACKAGE)
    assert edges, "no imports found: is the package path right?"
    cycles = find_cycles(edges)
    report = "\n".join(format_cycle(c) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in {PACKAGE}:\n{report}"
