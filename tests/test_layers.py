"""The architecture, held by a test: no import circles in src/, and each layer imports only
the layers below it (core knows neither store nor doors; doors know no store; the SDK knows
nothing of the server). Imports under `if TYPE_CHECKING:` are annotations, not dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "turnstream"

# layer -> the turnstream layers it may import (itself always allowed).
ALLOWED = {
    "errors": set(),
    "config": set(),
    "logctx": set(),
    "v1": set(),
    "core": {"v1", "errors"},
    "formats": {"core", "v1", "errors"},
    "store": {"core", "v1", "config"},
    "doors": {"core", "formats", "v1", "errors", "config", "logctx"},
    "client": {"v1"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """turnstream modules imported by `path`, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith(PACKAGE)
        ):
            # `from turnstream.core import ingest` imports the module turnstream.core.ingest;
            # `from turnstream import errors` imports turnstream.errors, not the package root.
            found |= {f"{node.module}.{a.name}" for a in node.names}
            if node.module != PACKAGE:
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py") if "/v1/" not in str(p)}
    modules = {m: p for m, p in modules.items() if ".migrations." not in m}
    return {
        m: {i for i in runtime_imports(p) if i in modules and i != m} for m, p in modules.items()
    }


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_there_are_no_import_circles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, imports in graph().items():
        own = layer(module)
        if own not in ALLOWED:
            continue  # the composition root (server, cli, send) may import anything
        for imported in imports:
            other = layer(imported)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_rules_see_the_imports_they_judge() -> None:
    edges = graph()
    assert "turnstream.core.pipeline" in edges["turnstream.core.ingest"]
    assert "turnstream.doors.http" in edges["turnstream.doors.http_kubiya"]
    assert len(edges) > 30
