"""The package's shape: no import cycle, dependencies pointing one way, and docs/ARCHITECTURE.md naming every module.

Imports are read with ``ast`` from every module under ``rlhfctl/``: top-level and function-level ones alike, those
under ``if TYPE_CHECKING:`` included (a cycle there is still two modules that each need the other).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlhfctl"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"

LIBRARY = ("rlhfctl.objectives", "rlhfctl.models", "rlhfctl.training", "rlhfctl.data", "rlhfctl.config",
           "rlhfctl.progress", "rlhfctl.monitor", "rlhfctl.report", "rlhfctl.errors", "rlhfctl.fileio",
           "rlhfctl.runfiles")
CONSUMERS = ("rlhfctl.recipes", "rlhfctl.cli", "rlhfctl.example")  # what the library never imports
TERMINAL_UI = ("typer", "rich", "questionary", "click")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module name ``name`` imports (rlhfctl modules resolved to the module, others as written)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _internal_imports(name: str) -> set[str]:
    """The rlhfctl modules ``name`` imports (``import rlhfctl.a.b`` counts as rlhfctl.a.b)."""
    internal = set()
    for target in _imports(name):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target.startswith("rlhfctl") and target != name:
            internal.add(target)
    return internal


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_rlhfctl_modules():
    graph = {name: _internal_imports(name) for name in MODULES}
    assert _cycles(graph) == []


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith(LIBRARY)])
def test_library_modules_never_import_recipes_cli_or_the_example(name):
    assert not {target for target in _internal_imports(name) if target.startswith(CONSUMERS)}


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith("rlhfctl.recipes")])
def test_recipes_never_import_the_cli_or_the_example(name):
    assert not {target for target in _internal_imports(name) if target.startswith(("rlhfctl.cli", "rlhfctl.example"))}


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith("rlhfctl.objectives")])
def test_objectives_are_pure_maths(name):
    """Objectives use torch, the standard library and each other only: no model loading, data reading or training
    core."""
    assert not {target for target in _internal_imports(name)
                if target != "rlhfctl.errors" and not target.startswith("rlhfctl.objectives")}
    assert not {target for target in _imports(name) if target.split(".")[0] in ("transformers", "ray", "datasets")}


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith(
    ("rlhfctl.training", "rlhfctl.data", "rlhfctl.config", "rlhfctl.models", "rlhfctl.objectives", "rlhfctl.recipes",
     "rlhfctl.monitor"))])
def test_only_the_cli_and_renderers_use_terminal_ui_libraries(name):
    assert not {target for target in _imports(name) if target.split(".")[0] in TERMINAL_UI}


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith(
    ("rlhfctl.progress", "rlhfctl.report", "rlhfctl.monitor"))])
def test_renderers_and_health_checks_never_import_torch_or_ray(name):
    assert not {target for target in _imports(name) if target.split(".")[0] in ("torch", "ray", "transformers")}


def test_every_module_is_named_in_architecture_md():
    """Each module has its row in docs/ARCHITECTURE.md's module table: ``| `models/loading.py` | what it is |``;
    empty ``__init__.py`` files are exempt."""
    rows = re.findall(r"^\| `([\w/]+\.py)` \| \S.*\|$", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    named = set(rows)
    missing = [path.relative_to(PACKAGE).as_posix() for path in MODULES.values()
               if path.read_text(encoding="utf-8").strip() and path.relative_to(PACKAGE).as_posix() not in named]
    assert missing == [], f"describe these modules in docs/ARCHITECTURE.md: {missing}"
