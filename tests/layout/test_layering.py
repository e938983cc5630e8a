"""The package's layering: every module imports, the library never imports the CLI or the test
harness, and module-level imports form no cycle. Budget: ~3 s, no servers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import iceberg_lake

PACKAGE_DIR = Path(iceberg_lake.__file__).parent


def _modules() -> list[str]:
    names = ["iceberg_lake"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="iceberg_lake."):
        names.append(info.name)
    return sorted(names)


def _path(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    package = PACKAGE_DIR / rel / "__init__.py"
    return package if package.exists() else (PACKAGE_DIR / rel).with_suffix(".py")


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    """`iceberg_lake.*` modules that `module` imports (relative imports resolved)."""
    tree = ast.parse(_path(module).read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, node.module])
            found.add(base)
            # `from iceberg_lake.cli import app` imports the submodule too.
            found |= {f"{base}.{a.name}" for a in node.names}
    known = set(_modules())
    return {m for m in found if m in known and m != module}


def _is_library(module: str) -> bool:
    return not module.startswith(("iceberg_lake.cli", "iceberg_lake.testing"))


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_the_library_never_imports_the_cli_or_the_test_harness() -> None:
    offenders = {
        module: sorted(
            m
            for m in _imports(module, top_level_only=False)
            if m.startswith(("iceberg_lake.cli", "iceberg_lake.testing"))
        )
        for module in _modules()
        if _is_library(module)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


#: Contact with a dependency's protocol or internals that only `engine/` may have: the token, the
#: library modules (outside `engine/`) it must not appear in, and where it lives instead.
ENGINE_ONLY = [
    ("CONSUMER.MSG.NEXT", "iceberg_lake", "engine/nats_pull.py (the JetStream pull path)"),
    ("$JS.", "iceberg_lake", "engine/nats.py, engine/nats_pull.py (JetStream API subjects)"),
    ("ArrowScan", "iceberg_lake", "engine/iceberg.py (read_scan_tasks)"),
    ("PyArrowFileIO", "iceberg_lake", "engine/iceberg.py (listing_io, list_files, delete_file)"),
    ("FromInputFile", "iceberg_lake", "engine/iceberg.py (read_table_metadata)"),
    ("duckdb.connect(", "iceberg_lake", "engine/duck.py (connect, connect_lake, DuckSession)"),
    ("SET TimeZone", "iceberg_lake", "engine/duck.py (connect_lake(time_zone=), cursor(utc=))"),
    ("LOAD iceberg", "iceberg_lake", "engine/duck.py (connect, DuckSession.cursor(iceberg=))"),
]


@pytest.mark.parametrize(("token", "scope", "home"), ENGINE_ONLY)
def test_dependency_contact_stays_in_the_engine(token: str, scope: str, home: str) -> None:
    offenders = [
        module
        for module in _modules()
        if module.startswith(scope)
        and _is_library(module)
        and not module.startswith("iceberg_lake.engine")
        and token in _path(module).read_text()
    ]
    assert not offenders, f"{token!r} outside the engine (belongs in {home}): {offenders}"


def test_module_level_imports_have_no_cycle() -> None:
    graph = {m: _imports(m, top_level_only=True) for m in _modules()}
    # A package's __init__ re-exporting its submodules is not a cycle between modules.
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not module.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module)


def test_the_live_tail_uses_only_public_seams() -> None:
    """`timetravel/live.py` reaches `Lake` and `ReplayEngine` through their public seams
    (`Lake.live_loop()`, `pinned_sources`, `set_complete`, `record_event`): no `obj._x` on
    anything but `self`/`cls` (docs/architecture.md)."""
    tree = ast.parse(_path("iceberg_lake.timetravel.live").read_text())
    private = [
        f"{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert not private, private
