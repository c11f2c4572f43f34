"""The house keeps its shape (issue 12): the modules of mailgate/ import one another without a
circle, and the README's layout names every module there is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import REPO

PACKAGE = REPO / "mailgate"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "versions" in path.relative_to(PACKAGE).parts:  # Alembic's migrations import nothing of ours
            continue
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that NAME imports when it is loaded (imports inside functions are
    deferred on purpose, to keep the command line fast, and cannot form a loading circle)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from pkg import submodule`
                    edges.add(f"{base}.{alias.name}")
                elif base in modules:
                    edges.add(base)
    edges.discard(name)
    return edges


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, circles = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return circles


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 100  # the graph was read, not empty
    assert _circles(graph) == []


def test_a_circle_is_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_the_readmes_layout_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("The layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"[\w]+\.py", layout))
    missing = sorted(path.name for path in _modules().values()
                     if path.name not in named and path.name not in {"__init__.py", "__main__.py"})
    assert missing == []
