"""The package's layers: every ``import`` is read, module level and inside functions alike (an
import deferred into a function still closes a cycle), and none may point to a higher layer or
close a cycle.

The layers, lowest first, are the subpackages of :data:`LAYERS`; the package's root
(``pipeline/__init__.py``, its version) imports nothing and may be imported from anywhere; the
modules directly under ``pipeline/`` (``pipeline.config``, ``pipeline.runner``, ...) keep the
documented imports working by re-exporting, above every layer, so nothing in the package imports
them."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from . import x`` counts ``x`` when it
    is a module; a name imported from a package counts the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in import order, the first repeated at the end),
    or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


LAYERS = ("core", "infra", "io", "algo", "post", "exec", "reconstructors", "runner", "service",
          "cli")
"""The subpackages of ``pipeline``, lowest first: a module imports only from its own layer or
lower ones."""


def layer(module: str) -> int:
    """The rank of ``module`` in :data:`LAYERS`: -1 for the package root, ``len(LAYERS)`` for
    the re-exporting modules directly under ``pipeline/``."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else len(LAYERS)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a imports b"`` for every import of a higher layer."""
    return [f"{a} ({LAYERS[layer(a)] if 0 <= layer(a) < len(LAYERS) else 'top'}) imports {b}"
            for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]


def test_the_finder_finds_a_cycle_and_reads_relative_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "pipeline.infra.files" in graph["pipeline.io.window_folders"]  # module level, relative
    assert "pipeline.reconstructors" in graph["pipeline.runner.ray_engine"]  # inside a function


def test_every_module_lives_in_a_layer_and_imports_only_downward():
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if m.count(".") >= 1 and m.split(".")[1] in LAYERS} \
        == set(LAYERS)
    top = [m for m in graph if layer(m) == len(LAYERS)]
    assert top, "the documented re-exporting modules are counted"
    assert graph["pipeline"] == set(), "the package root imports nothing"
    assert upward_imports({"pipeline.core.a": {"pipeline.runner.b"}}) == [
        "pipeline.core.a (core) imports pipeline.runner.b"]
    upward = upward_imports(graph)
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
