"""The import graph of ``src/proctor``: each side stays on its side, and nothing imports in a circle.

The graph is built from the AST of every module, with module-level AND function-level imports (a
late import that dodges a circle at run time is still an edge here), and imports under
``if TYPE_CHECKING:`` too: a type-only cycle still ties the modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "proctor"

ENGINE = ("evals", "models", "harness", "profiling", "retrieval", "tunnel")
"""Packages that run in the engine's process (or the submitter's) and so never import the server."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name a ``from X import ...`` refers to (relative imports included)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the proctor modules it imports (``from pkg import name`` counts ``pkg.name``
    when that is a module, else ``pkg``)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for name in names:
                # ``import proctor.a.b`` names proctor.a.b; keep the longest prefix that is a module.
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name.startswith("proctor") and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


GRAPH = _edges(_modules())


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_the_package() -> None:
    """A guard for the tests below: an empty or import-less graph would make them pass vacuously."""
    assert "proctor.evals.runner" in GRAPH
    assert "proctor.models.router" in GRAPH["proctor.evals.runner"] or any(
        _in(t, "proctor.models") for t in GRAPH["proctor.evals.runner"]
    )
    assert sum(len(targets) for targets in GRAPH.values()) > 100


@pytest.mark.parametrize("package", ENGINE)
def test_the_engine_never_imports_the_server(package: str) -> None:
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _in(module, f"proctor.{package}")
        for target in targets
        if _in(target, "proctor.server")
    )
    assert offenders == []


@pytest.mark.parametrize("package", [p for p in ENGINE if p != "tunnel"])
def test_the_engine_takes_only_the_wire_protocol_from_the_tunnel(package: str) -> None:
    """``proctor.tunnel`` is the submitter's agent and the protocol both ends speak; the engine's
    end of the job channel is a model transport, not a tunnel part."""
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _in(module, f"proctor.{package}")
        for target in targets
        if _in(target, "proctor.tunnel") and target != "proctor.tunnel.protocol"
    )
    assert offenders == []


def test_nothing_imports_the_cli() -> None:
    """Only the CLI itself and the ``python -m`` entry points (``__main__``) import it."""
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if not _in(module, "proctor.cli") and not module.endswith("__main__")
        for target in targets
        if _in(target, "proctor.cli")
    )
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            if children:
                child = children.pop()
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a test that cannot fail is a defect."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []
