"""The import graph of the package (every import, type-only ones included), and its circles."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.servers import REPO


def modules() -> dict[str, Path]:
    found = {}
    for path in [*(REPO / "runtime").rglob("*.py"), *(REPO / "plugins").glob("*.py")]:
        if "templates" in path.parts:
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[0] == "plugins":
            parts[0] = "runtime_plugins"
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run (or are type-checked) when the module is imported: not those inside functions."""
    found: list[ast.stmt] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        found.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(node, field, []))
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time (type-only imports included)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        for node in _module_level(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                subs = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(node.module)
        edges[name] = {d for d in deps if d in known and d != name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in edges[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found
