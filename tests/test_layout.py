"""The shape of the code: no import circles between spml's modules, no path edits in library code."""
from __future__ import annotations

import ast
from pathlib import Path

from presets import REPO_ROOT

ENTRY_POINT_DIRS = ("tests", "scripts", "benchmarks")


def library_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module a run may import."""
    modules = {}
    for path in REPO_ROOT.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in ENTRY_POINT_DIRS + ("runs", "data") or rel.parts[0].startswith("."):  # runs/: run output
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, known: set[str]) -> set[str]:
    """spml modules `path` imports anywhere (function-level imports are arrows too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def test_no_import_circles():
    modules = library_modules()
    graph = {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}
    # A package's __init__ importing its own submodules is not a circle; a submodule importing
    # its package only for what the package re-exports is the same module: fold it in.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_sys_path_edits_in_library_code():
    offenders = [str(path.relative_to(REPO_ROOT)) for path in library_modules().values()
                 if "sys.path" in path.read_text()]
    assert offenders == []
