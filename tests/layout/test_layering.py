"""The package's layering: every module imports, the library never imports the CLI or the test
harness, and module-level imports form no cycle. Budget: ~3 s, no servers."""

from __future__ import annotations

import abc
import ast
import functools
import importlib
from pathlib import Path

import pytest

import iceberg_lake

PACKAGE_DIR = Path(iceberg_lake.__file__).parent


def _modules() -> list[str]:
    """Every module of the package, from its files: `pkgutil.walk_packages` imports packages to
    walk them and silently skips one that fails to import (and all its modules with it)."""
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        names.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
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
            # `from iceberg_lake.cli import common` imports the submodule too.
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


# ---- private members of other libraries stay in the engine ------------------------------------

#: `_x` members of other libraries a module outside `engine/` may use: documented standard-library
#: APIs only, each with its reason. A dependency's private member (pyiceberg, DuckDB, nats-py, ...)
#: belongs in `iceberg_lake/engine/` behind a guard test instead (docs/architecture.md).
PRIVATE_ALLOWED: dict[str, str] = {
    # "module._name": "why it is allowed" (documented standard-library `_x` APIs only)
}
#: Public API despite the underscore, on any object: `collections.namedtuple`'s documented
#: methods (the underscore only keeps them apart from field names).
NAMEDTUPLE_API = {"._asdict", "._replace", "._make"}


def _outside_engine() -> list[str]:
    return [m for m in _modules() if not m.startswith("iceberg_lake.engine")]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(source: str) -> list[tuple[int, str]]:
    """The private members of OTHER code a module's source uses, as (line, name).

    Found: `from lib import _x`, `import lib._mod` / `from lib._mod import x` (a library that is not
    `iceberg_lake`), `obj._x` read, written or called, and `getattr(obj, "_x")` (also `setattr`,
    `hasattr`, `delattr`). Not counted: dunders, and `_x` the module defines itself (its
    functions, classes and variables, attributes it assigns on `self`/`cls`), so `self._x` and
    `other._x` on the module's own classes pass. What remains is another library's private member,
    or another module's of this package (which should be public, with a docstring). `obj._x` is
    named by the module it was imported as (`os._exit`), else as `._x`.
    """
    tree = ast.parse(source)
    own: set[str] = set()
    modules: dict[str, str] = {}  # local name -> imported module
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            own.add(node.attr)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def member(receiver: ast.expr, attr: str) -> str:
        if isinstance(receiver, ast.Name) and receiver.id in modules:
            return f"{modules[receiver.id]}.{attr}"
        return f".{attr}"

    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name)
                for a in node.names
                if not a.name.startswith("iceberg_lake")
                and any(_is_private(part) for part in a.name.split("."))
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level or base.split(".")[0] in ("iceberg_lake", "__future__"):
                continue
            if any(_is_private(part) for part in base.split(".")):
                found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            found.append((node.lineno, member(node.value, node.attr)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append((node.lineno, member(node.args[0], node.args[1].value)))
    return sorted(found)


def _private_overrides(tree: ast.Module, namespace: dict[str, object]) -> list[str]:
    """`_x` members that a module-level class (its `ast` node in `tree`, its object in
    `namespace`) defines in its body and a base class from another library has: the module
    relies on the library calling or reading its private hook. (What a metaclass adds, such as
    `ABCMeta`'s `_abc_impl`, is not written by the module.)"""
    out = []
    for node in tree.body:
        cls = namespace.get(node.name) if isinstance(node, ast.ClassDef) else None
        if not isinstance(node, ast.ClassDef) or not isinstance(cls, type):
            continue
        defined: set[str] = set()
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(stmt.name)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                defined |= {t.id for t in targets if isinstance(t, ast.Name)}
        for name in sorted(defined):
            # `_x_` (Enum's `_missing_`, ...) is public API by the library's own convention.
            if not _is_private(name) or name.endswith("_"):
                continue
            if any(
                name in vars(base)
                for base in cls.__mro__[1:]
                if not base.__module__.startswith("iceberg_lake")
            ):
                out.append(f"{cls.__name__}.{name}")
    return out


@functools.cache
def _uses_in(module: str) -> tuple[tuple[int, str], ...]:
    return tuple(_private_uses(_path(module).read_text()))


@pytest.mark.parametrize("module", _outside_engine())
def test_no_private_member_of_another_library_outside_the_engine(module: str) -> None:
    """Every module outside `engine/` (the CLI and the test harness included) uses only public
    members of other libraries and of the package's other modules: no `obj._x`, `from lib import
    _x`, `lib._mod`, `getattr(obj, "_x")`, no override of a library's `_x` hook, beyond
    `PRIVATE_ALLOWED` and `NAMEDTUPLE_API`."""
    uses = [
        f"{line}: {name}"
        for line, name in _uses_in(module)
        if name not in PRIVATE_ALLOWED and name not in NAMEDTUPLE_API
    ]
    tree = ast.parse(_path(module).read_text())
    overrides = _private_overrides(tree, vars(importlib.import_module(module)))
    uses += [f"overrides {name}" for name in overrides]
    assert not uses, (
        f"{module} uses private members of other code (a dependency's belongs in "
        f"iceberg_lake/engine/ behind a guard test; the package's own should be public): {uses}"
    )


def test_every_allowed_private_member_is_still_used() -> None:
    """`PRIVATE_ALLOWED` names only what some module outside the engine uses (no stale entry)."""
    used = {name for m in _outside_engine() for _, name in _uses_in(m)}
    assert set(PRIVATE_ALLOWED) <= used, set(PRIVATE_ALLOWED) - used


def test_the_private_use_check_sees_what_it_should() -> None:
    """The mutants of issue 12's audit are caught; the module's own members and dunders are not."""
    source = (
        "import os\n"
        "import pyiceberg.io._private_module\n"
        "from __future__ import annotations\n"
        "from pyiceberg.io import pyarrow as pa_io\n"
        "from pyiceberg.table import _dataframe_to_data_files, Table\n"
        "from nats.js._impl import thing\n"
        "from iceberg_lake.timetravel import snapshots\n"
        "from .sibling import _ours\n"
        "_LIMIT = 1\n"
        "class W:\n"
        "    _flag = 1\n"
        "    def __init__(self, table):\n"
        "        self._table = table\n"
        "    def _helper(self, tx, other):\n"
        "        self._table._do_commit(tx._updates, ())\n"
        "        tx._table = other._table\n"
        "        os._exit(self._flag + _LIMIT + other.__dict__)\n"
        "        pa_io._get_parquet_writer_kwargs({})\n"
        "        snapshots._checkpoints_due()\n"
        "        return getattr(tx, '_stage'), hasattr(self, '_table'), getattr(tx, '__len__')\n"
        "    def row(self, r):\n"
        "        return r._asdict()\n"
    )
    assert _private_uses(source) == [
        (2, "pyiceberg.io._private_module"),
        (5, "pyiceberg.table._dataframe_to_data_files"),
        (6, "nats.js._impl"),
        (15, "._do_commit"),
        (15, "._updates"),
        (17, "os._exit"),
        (18, "pyiceberg.io.pyarrow._get_parquet_writer_kwargs"),
        (19, "iceberg_lake.timetravel.snapshots._checkpoints_due"),
        (20, "._stage"),
        (22, "._asdict"),  # found; `NAMEDTUPLE_API` lets it pass
    ]


def test_the_override_check_sees_what_it_should() -> None:
    """A class overriding a library's `_hook` is caught; its own `_x` and metaclass state not."""
    source = (
        "class Sub(Base):\n"
        "    _flag = 1\n"
        "    def _hook(self): ...\n"
        "    def _own(self): ...\n"
        "    def _missing_(self): ...\n"
        "class Ours(Sub):\n"
        "    def _own(self): ...\n"
    )

    class Base(abc.ABC):  # noqa: B024 - a library's class with private hooks
        _flag = 0

        def _hook(self) -> None: ...  # noqa: B027

        def _missing_(self) -> None: ...  # noqa: B027

    Base.__module__ = "lib.mod"
    namespace: dict[str, object] = {"Base": Base, "__name__": "iceberg_lake.x"}
    exec(compile(source, "iceberg_lake/x.py", "exec"), namespace)  # noqa: S102
    for name in ("Sub", "Ours"):
        namespace[name].__module__ = "iceberg_lake.x"  # type: ignore[attr-defined]
    assert _private_overrides(ast.parse(source), namespace) == ["Sub._flag", "Sub._hook"]


def test_no_module_imports_another_packages_private_names() -> None:
    """`from iceberg_lake.x import _y` only within x's own package (a private helper module
    beside its one user, like `timetravel._native_build`); anything shared across packages is
    public, with a docstring."""
    found = []
    for module in _modules():
        package = module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(_path(module).read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and not node.level):
                continue
            if not node.module.startswith("iceberg_lake") or node.module == package:
                continue
            found += [
                f"{module}:{node.lineno} {node.module}.{a.name}"
                for a in node.names
                if _is_private(a.name)
            ]
    assert not found, found


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
    """`timetravel/live/` reaches `Lake` and `ReplayEngine` (and its modules one another)
    through their public seams (`Lake.live_loop()`, `pinned_sources`, `set_complete`,
    `record_event`): no `obj._x` on anything but `self`/`cls` (docs/architecture.md)."""
    live = [m for m in _modules() if m.startswith("iceberg_lake.timetravel.live.")]
    assert len(live) > 1, live  # the package's modules, not only its __init__
    private = [
        f"{module}:{node.lineno}: {ast.unparse(node)}"
        for module in ["iceberg_lake.timetravel.live", *live]
        for node in ast.walk(ast.parse(_path(module).read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert not private, private
