"""The package's modules import one another one way: no cycle among them (counting imports inside
functions too, which Python would not catch at import time), and the README's layout names
every module in an order its imports respect."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(__file__))
PACKAGE = os.path.join(ROOT, "trt_multidev_backend")


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports, anywhere in the module)."""
    graph: dict[str, set[str]] = {}
    for name in sorted(os.listdir(PACKAGE)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(PACKAGE, name)) as f:
            tree = ast.parse(f.read())
        graph[name[:-3]] = {node.module.split(".")[0] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in graph:
        if module not in state and (found := visit(module)):
            return found
    return None


def _layout() -> list[str]:
    """The modules the README's layout paragraph names, in its order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    paragraph = readme[readme.index("Layout (data moves one way)"):].split("\n\n")[0]
    return re.findall(r"`([a-z_]+)`", paragraph)


def test_no_import_cycle_among_the_packages_modules():
    graph = _imports()
    assert len(graph) > 20 and graph["pipeline"]  # the walk found the package and its imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_readme_layout_names_every_module_after_what_it_imports():
    graph = _imports()
    named = [name for name in dict.fromkeys(_layout()) if name in graph]  # first mentions; not `strict`
    entry_points = {"__init__", "__main__", "_version"}
    assert sorted(set(graph) - entry_points) == sorted(named)
    # The main line (up to `pipeline`) in an order its imports follow; the modules beside it
    # (named after it) may be imported by any module after them in that order or by pipeline.
    main = named[:named.index("pipeline") + 1]
    for i, module in enumerate(main):
        later = set(main[i + 1:])
        assert not graph[module] & later, f"{module} imports {sorted(graph[module] & later)}, named after it"
