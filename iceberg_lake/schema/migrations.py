"""Versioned schema migrations: discover `migrations/NNNN_name.py`, apply pending ones in order.

A migration is a forward-only Python file with a docstring and `upgrade(ctx)`. The step does not
commit anything itself: it *declares* changes through the `MigrationContext` (`ctx.add_column`,
`ctx.rename_column`, ...). The runner plans them against the live tables (`evolve.plan_changes`:
changes already in effect become no-ops, unsafe ones are refused) and then commits each table's
changes as one metadata commit that also bumps `lake.schema-version`. A dry run plans the same
way against a simulated state and prints the exact changes instead of committing.

Why steps are idempotent instead of `lake init` marking them applied: `lake init` creates missing
tables from the newest `catalog/` definitions, so on a fresh lake (or for a table created later)
every shipped step finds its changes already in effect; `lake migrate up` then records it as
applied without committing anything. A table that does not exist yet is skipped for the same
reason (`lake init` / `lake table create` will create it in the newest shape). A step that failed
half-way (a commit on one table landed, the next one failed) is simply run again.

The ledger `lake_migrations` lives in the catalog database (SQLAlchemy, SQLite or PostgreSQL):
version, name, checksum (SHA-256 of the file), applied time, duration and the changes made. A
migration edited after it was applied is reported by `status` and `check` and refused by `up`;
`EARLIER_CHECKSUMS` names the released bytes of a shipped migration that was changed on purpose
without changing what it does (a ledger holding one of those is as applied as the current file).
Two `up` at once cannot both apply a step: `up` holds a lock in the same database while it runs
(PostgreSQL: `SELECT ... FOR UPDATE` on a lock row, released with the connection even if the
process dies; SQLite: a lease row taken by a conditional UPDATE, because holding a SQLite write
transaction would block the catalog commits the migration itself makes; a lease whose holder
process on this host is gone, or that is older than an hour, is taken over) and re-reads the
ledger after taking it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from pyiceberg.table import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateTable

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.iceberg import CommitRefusedError, read_only_table
from iceberg_lake.exceptions import LakeError, MigrationError, TransientError, UnknownTableError
from iceberg_lake.schema.evolve import (
    AddColumn,
    AddPartitionField,
    Change,
    DropColumn,
    Plan,
    RenameColumn,
    TableState,
    WidenColumn,
    evolve_table,
    plan_changes,
)
from iceberg_lake.tables import declared_dir

log = logging.getLogger(__name__)

LEDGER_TABLE = "lake_migrations"
LOCK_TABLE = "lake_migrations_lock"
#: `NNNN_short_name.py`: four digits, then lower-case letters, digits and underscores.
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.py$")
#: A SQLite lease older than this is considered left behind by a dead process.
SQLITE_LEASE_STALE_SECONDS = 3600.0
DEFAULT_LOCK_TIMEOUT = 120.0
#: Attempts at creating the ledger tables and lock row (PostgreSQL: concurrent DDL may collide).
ENSURE_ATTEMPTS = 5
WAITING = "waiting for the migration lock held by %s (up to %g s)"

#: Checksums a released version of a shipped migration recorded, by migration id, for files
#: changed later without changing what they do. A ledger row with one of these is "applied",
#: not "edited"; any other difference is still refused. Add one only for such a change, with the
#: commit that made it, and never for a change to what `upgrade` declares.
EARLIER_CHECKSUMS: dict[str, frozenset[str]] = {
    # The first release (378a778) imported `iceberg_lake.migrations`; cb52186 moved the module
    # to `iceberg_lake.schema.migrations` and changed only that import line. Every lake created
    # by the first release has this checksum in its ledger.
    "0001_trades_conditions": frozenset(
        {"94bce44e2fe64fe815fd5a1d50034d76a036a5668204fe1d2f87d12557e1d216"}
    ),
}

_metadata = sa.MetaData()
ledger_table = sa.Table(
    LEDGER_TABLE,
    _metadata,
    sa.Column("catalog_name", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("applied_at", sa.String(40), nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("changes", sa.Text, nullable=False),
)
lock_table = sa.Table(
    LOCK_TABLE,
    _metadata,
    sa.Column("catalog_name", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=True),
    sa.Column("acquired_at", sa.Float, nullable=True),
)


#: Why a dry run's table refuses to commit (`MigrationContext.load_table`).
DRY_RUN_DATA_STEP = "a dry run commits nothing, so the step was not run past its first commit"


def migrations_dir() -> Path:
    """The shipped migrations folder (`migrations/` in a checkout, packaged in a wheel)."""
    return declared_dir("migrations")


# ---- migration files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    checksum: str

    @property
    def id(self) -> str:
        """`0001_trades_conditions`."""
        return f"{self.version:04d}_{self.name}"

    def matches(self, checksum: str) -> bool:
        """True if a ledger row's `checksum` records this file (or a released equivalent).

        See `EARLIER_CHECKSUMS`: an earlier release's bytes of a migration changed later
        without changing what it does count as this file; any other checksum is an edit.
        """
        return checksum == self.checksum or checksum in EARLIER_CHECKSUMS.get(self.id, ())

    def load(self) -> Callable[[MigrationContext], Any]:
        """Import the file and return its `upgrade` function.

        Raises:
            MigrationError: the file cannot be imported, has no docstring or no `upgrade(ctx)`.
        """
        spec = importlib.util.spec_from_file_location(f"lake_migration_{self.id}", self.path)
        if spec is None or spec.loader is None:
            raise MigrationError(f"cannot load migration {self.path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise MigrationError(
                f"migration {self.id} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        upgrade = getattr(module, "upgrade", None)
        if not callable(upgrade):
            raise MigrationError(f"migration {self.id} has no upgrade(ctx) function")
        if not (module.__doc__ or "").strip():
            raise MigrationError(f"migration {self.id} has no docstring saying what it does")
        return upgrade


def file_checksum(path: Path) -> str:
    """SHA-256 of a migration file's bytes (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    """The migrations in `directory` (default: the shipped ones), ordered by version.

    Files starting with `_` or `.` and non-Python files are ignored.

    Raises:
        MigrationError: `directory` was given and is not a folder, a Python file is misnamed,
            or two files share a version number.
    """
    if directory is not None and not directory.is_dir():
        # A mistyped --dir must not read as "nothing to apply".
        raise MigrationError(f"migrations folder {directory} does not exist or is not a folder")
    directory = directory or migrations_dir()
    if not directory.is_dir():
        return []
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".py" or path.name.startswith(("_", ".")):
            continue
        m = MIGRATION_FILE.match(path.name)
        if m is None:
            raise MigrationError(
                f"migration file {path.name} must be named NNNN_short_name.py"
                " (four digits, lower-case name)"
            )
        version = int(m.group(1))
        if version in found:
            raise MigrationError(
                f"migrations {found[version].path.name} and {path.name} share version {version}"
            )
        found[version] = Migration(version, m.group(2), path, file_checksum(path))
    return [found[v] for v in sorted(found)]


# ---- the context a step declares its changes through ------------------------------------------


@dataclass
class TableChanges:
    """What one migration step does to one table."""

    identifier: str
    plan: Plan | None = None
    note: str = ""
    committed: bool = False

    def lines(self) -> list[str]:
        """Human-readable lines: the planned changes or why the table was skipped."""
        if self.plan is None:
            return [f"skip: {self.note}"]
        return self.plan.describe() or ["no change"]


class MigrationContext:
    """What a migration's `upgrade(ctx)` uses: declare changes, look at tables.

    Changes are recorded, not committed, while `upgrade` runs; the runner plans and commits them
    afterwards (or only prints them for a dry run). Changes to a table the catalog does not hold
    yet are skipped: `lake init` creates it from the newest definitions.

    Args:
        catalog: the lake's catalog.
        migration: the step being run.
        dry_run: plan only.
        simulated: for dry runs, table states as earlier dry-run steps left them.
    """

    def __init__(
        self,
        catalog: LakeCatalog,
        migration: Migration,
        *,
        dry_run: bool = False,
        simulated: dict[str, TableState] | None = None,
    ) -> None:
        self.catalog = catalog
        self.migration = migration
        self.dry_run = dry_run
        self._simulated = simulated if simulated is not None else {}
        self._changes: dict[str, list[Change]] = {}
        self._existing: list[str] | None = None
        self.messages: list[str] = []

    # ---- looking ------------------------------------------------------------------------------

    def existing_tables(self) -> list[str]:
        """Every table the catalog holds in the lake's namespaces."""
        if self._existing is None:
            self._existing = self.catalog.existing_tables()
        return self._existing

    def table_exists(self, identifier: str) -> bool:
        """True if the catalog holds `identifier`."""
        return identifier in self.existing_tables()

    def tables(self, *, schema_name: str | None = None, namespace: str | None = None) -> list[str]:
        """Declared tables, optionally of one schema (`stocks.trades`) or namespace."""
        return [
            d.identifier
            for d in self.catalog.registry
            if (schema_name is None or d.schema_name == schema_name)
            and (namespace is None or d.namespace == namespace)
        ]

    def load_table(self, identifier: str) -> Table:
        """The live pyiceberg table, for steps that must read or rewrite data themselves.

        In a dry run (`lake migrate up --dry-run`, and the planning `lake status` and `lake
        serve` do) the table reads but refuses a transaction or commit: the step stops there
        and its output says it would run a data step. A data step must be idempotent: a step
        that failed half-way is run again whole.
        """
        table = self.catalog.load_table(identifier)
        if self.dry_run:
            return read_only_table(table, DRY_RUN_DATA_STEP)
        return table

    def log(self, message: str) -> None:
        """Report something in the step's output."""
        self.messages.append(message)

    # ---- declaring changes --------------------------------------------------------------------

    def add_column(
        self,
        tables: str | Iterable[str],
        name: str,
        type: str,
        *,
        doc: str = "",
        required: bool = False,
    ) -> None:
        """Add a column (optional by default) to one or more tables."""
        self._declare(tables, AddColumn(name, type, doc, required))

    def rename_column(self, tables: str | Iterable[str], old: str, new: str) -> None:
        """Rename a column; data written under the old name stays readable under the new one."""
        self._declare(tables, RenameColumn(old, new))

    def widen_column(self, tables: str | Iterable[str], name: str, type: str) -> None:
        """Widen a column's type (int→long, float→double, decimal precision)."""
        self._declare(tables, WidenColumn(name, type))

    def drop_column(self, tables: str | Iterable[str], name: str) -> None:
        """Drop a column from the current schema (old snapshots keep it)."""
        self._declare(tables, DropColumn(name))

    def add_partition_field(self, tables: str | Iterable[str], source: str, transform: str) -> None:
        """Add a hidden partition field (applies to data written from now on)."""
        self._declare(tables, AddPartitionField(source, transform))

    def _declare(self, tables: str | Iterable[str], change: Change) -> None:
        for identifier in [tables] if isinstance(tables, str) else list(tables):
            self._changes.setdefault(identifier, []).append(change)

    # ---- run by the runner --------------------------------------------------------------------

    def apply(self) -> list[TableChanges]:
        """Plan every declared change; commit them unless this is a dry run.

        All tables are planned before the first commit, so a refused change commits nothing.
        """
        staged: list[tuple[TableChanges, Table | None, list[Change]]] = []
        for identifier, changes in self._changes.items():
            result = TableChanges(identifier)
            table: Table | None = None
            if identifier in self._simulated:
                state = self._simulated[identifier]
            elif self.table_exists(identifier):
                table = self.catalog.load_table(identifier)
                state = TableState.from_table(identifier, table)
            elif identifier in self.catalog.registry:
                result.note = (
                    f"{identifier} does not exist yet (lake init creates it in the current shape)"
                )
                staged.append((result, None, changes))
                continue
            else:
                raise UnknownTableError(f"no table '{identifier}' in the catalog or in catalog/")
            result.plan = plan_changes(state, changes)
            staged.append((result, table, changes))
        for result, table, changes in staged:
            if result.plan is None:
                continue
            if self.dry_run or table is None:
                self._simulated[result.identifier] = result.plan.after
                continue
            outcome = evolve_table(table, result.identifier, changes, fresh=True)
            result.plan, result.committed = outcome.plan, outcome.committed
        return [r for r, _, _ in staged]


# ---- the ledger and the lock ------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedMigration:
    """One row of `lake_migrations`."""

    version: int
    name: str
    checksum: str
    applied_at: str
    duration_ms: int
    applied_by: str
    changes: str


class MigrationLedger:
    """The `lake_migrations` table and the migration lock, in the catalog database.

    Several lakes may share one catalog database (pyiceberg's SQL catalog keys its rows by
    catalog name); so do the ledger rows and the lock row.

    Args:
        catalog_uri: SQLAlchemy URI of the catalog database (SQLite or PostgreSQL).
        catalog_name: the lake's catalog name (`LAKE_CATALOG_NAME`).
    """

    def __init__(self, catalog_uri: str, catalog_name: str) -> None:
        self.uri = catalog_uri
        self.catalog_name = catalog_name
        self.is_postgres = catalog_uri.startswith("postgresql")
        with catalog_errors("opening the migration ledger"):
            self.engine = sa.create_engine(catalog_uri, pool_pre_ping=True)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def exists(self) -> bool:
        """True once the ledger table has been created."""
        with catalog_errors("reading the migration ledger"):
            return sa.inspect(self.engine).has_table(LEDGER_TABLE)

    def ensure(self) -> None:
        """Create the ledger and lock tables and the lock row if missing. Idempotent.

        Safe when several processes (or threads: two `lake dead-letters replay` at once) create
        them at the same moment: every statement is idempotent (`CREATE TABLE IF NOT EXISTS`,
        an insert that ignores an existing row), so losing the race is not an error.
        PostgreSQL can still refuse a concurrent `CREATE TABLE IF NOT EXISTS` (a duplicate
        type row) while the other transaction commits: that one is retried.
        """
        if self._lock_row_exists():
            return
        for _ in range(ENSURE_ATTEMPTS - 1):
            try:
                self._create()
                return
            except (IntegrityError, ProgrammingError, OperationalError) as exc:
                log.debug("creating the migration ledger raced with another process: %s", exc)
                time.sleep(0.05)
        with catalog_errors("creating the migration ledger"):
            self._create()

    def _lock_row_exists(self) -> bool:
        """True once the lock row exists (then so do both tables): nothing to write."""
        mine = lock_table.c.catalog_name == self.catalog_name
        # A database that cannot be reached is not "no ledger yet": it said "creating the
        # migration ledger" after retrying the creation.
        with catalog_errors("reading the migration ledger"):
            conn = self.engine.connect()
        with conn:
            try:
                row = conn.execute(sa.select(lock_table.c.catalog_name).where(mine)).first()
            except (OperationalError, ProgrammingError):  # no lock table yet
                return False
        return row is not None

    def _create(self) -> None:
        with self.engine.begin() as conn:
            for table in (ledger_table, lock_table):
                conn.execute(CreateTable(table, if_not_exists=True))
            conn.execute(self._insert_lock_row())

    def _insert_lock_row(self) -> sa.Executable:
        """`INSERT` of this catalog's lock row that does nothing if the row exists."""
        values = {"catalog_name": self.catalog_name}
        if self.is_postgres:
            return postgresql.insert(lock_table).values(**values).on_conflict_do_nothing()
        return sqlite.insert(lock_table).values(**values).on_conflict_do_nothing()

    def applied(self) -> dict[int, AppliedMigration]:
        """Every applied migration, by version (empty if the ledger does not exist yet)."""
        if not self.exists():
            return {}
        with catalog_errors("reading the migration ledger"), self.engine.connect() as conn:
            query = (
                sa.select(ledger_table)
                .where(ledger_table.c.catalog_name == self.catalog_name)
                .order_by(ledger_table.c.version)
            )
            rows = [dict(r) for r in conn.execute(query).mappings()]
        return {
            r["version"]: AppliedMigration(**{k: v for k, v in r.items() if k != "catalog_name"})
            for r in rows
        }

    def record(self, migration: Migration, duration_ms: int, changes: str) -> None:
        """Record `migration` as applied (its checksum, now, who, what changed).

        Raises:
            MigrationError: it is already recorded (another process applied it).
        """
        values = {
            "catalog_name": self.catalog_name,
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
            "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_ms": duration_ms,
            "applied_by": lock_holder(),
            "changes": changes,
        }
        with catalog_errors("recording a migration"):
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(ledger_table).values(**values))
            except IntegrityError:
                raise MigrationError(
                    f"migration {migration.id} was recorded by another process meanwhile"
                ) from None

    @contextmanager
    def lock(self, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the migration lock while the block runs; wait up to `timeout` seconds for it.

        Raises:
            MigrationError: another process held the lock for the whole timeout.
        """
        self.ensure()
        if self.is_postgres:
            with self._pg_lock(timeout):
                yield
        else:
            with self._lease_lock(timeout):
                yield

    @contextmanager
    def _pg_lock(self, timeout: float) -> Iterator[None]:
        with catalog_errors("taking the migration lock"):
            conn = self.engine.connect()
        try:
            mine = lock_table.c.catalog_name == self.catalog_name
            trans = conn.begin()
            try:
                conn.execute(sa.select(lock_table).where(mine).with_for_update(nowait=True))
            except OperationalError:
                trans.rollback()
                log.info(WAITING, "another process", timeout)
                trans = conn.begin()
                try:
                    ms = max(1, int(timeout * 1000))
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{ms}ms'"))
                    conn.execute(sa.select(lock_table).where(mine).with_for_update())
                except OperationalError as exc:
                    trans.rollback()
                    raise MigrationError(
                        f"another `lake migrate up` held the migration lock for {timeout:g} s;"
                        " try again when it has finished"
                    ) from exc
            try:
                yield
            finally:
                trans.rollback()
        finally:
            conn.close()

    @contextmanager
    def _lease_lock(self, timeout: float) -> Iterator[None]:
        me = lock_holder()
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            now = time.time()
            with catalog_errors("taking the migration lock"), self.engine.begin() as conn:
                taken = conn.execute(
                    sa.update(lock_table)
                    .where(lock_table.c.catalog_name == self.catalog_name)
                    .where(
                        sa.or_(
                            lock_table.c.holder.is_(None),
                            lock_table.c.acquired_at < now - SQLITE_LEASE_STALE_SECONDS,
                        )
                    )
                    .values(holder=me, acquired_at=now)
                ).rowcount
                holder = None
                if taken != 1:
                    holder = conn.execute(
                        sa.select(lock_table.c.holder).where(
                            lock_table.c.catalog_name == self.catalog_name
                        )
                    ).scalar()
            if taken == 1:
                break
            if holder and _local_process_gone(holder):
                # Left behind by a process of this host that died: take it over at once.
                log.warning(
                    "taking over the migration lock of %s, which is no longer running", holder
                )
                with catalog_errors("taking the migration lock"), self.engine.begin() as conn:
                    conn.execute(
                        sa.update(lock_table)
                        .where(lock_table.c.catalog_name == self.catalog_name)
                        .where(lock_table.c.holder == holder)
                        .values(holder=None, acquired_at=None)
                    )
                continue
            if delay == 0.05:
                log.info(WAITING, holder, timeout)
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"another `lake migrate up` ({holder}) held the migration lock for"
                    f" {timeout:g} s; try again when it has finished"
                )
            time.sleep(delay)  # polling the lease; bounded by the deadline above
            delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            with catalog_errors("releasing the migration lock"), self.engine.begin() as conn:
                conn.execute(
                    sa.update(lock_table)
                    .where(lock_table.c.catalog_name == self.catalog_name)
                    .where(lock_table.c.holder == me)
                    .values(holder=None, acquired_at=None)
                )


def lock_holder() -> str:
    """Who is running: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _local_process_gone(holder: str) -> bool:
    """True if `holder` (`host:pid`) names a process of this host that no longer exists."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


# ---- the runner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationStatus:
    """One migration's state: `applied`, `pending`, `edited` (changed after being applied) or
    `missing` (applied, but the file is gone)."""

    version: int
    name: str
    state: str
    checksum: str
    applied_checksum: str | None = None
    applied_at: str | None = None

    def as_row(self) -> dict[str, Any]:
        """For `lake migrate status` output."""
        return {
            "version": f"{self.version:04d}",
            "name": self.name,
            "state": self.state,
            "checksum": self.checksum[:12],
            "applied_checksum": (self.applied_checksum or "")[:12] or None,
            "applied_at": self.applied_at,
        }


@dataclass
class StepResult:
    """What `up` did for one migration."""

    migration: Migration
    tables: list[TableChanges] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    duration_ms: int = 0
    recorded: bool = False
    #: A dry run stopped the step at a data step's first commit (`MigrationContext.load_table`).
    data_step: bool = False

    def lines(self) -> list[str]:
        """Every change of the step, `table: change`."""
        out = [f"{t.identifier}: {line}" for t in self.tables for line in t.lines()]
        out.extend(self.messages)
        return out or ["no changes declared"]


class MigrationRunner:
    """Applies the migrations of a folder to a lake.

    Args:
        catalog: the lake's catalog.
        directory: the migrations folder (default: the shipped `migrations/` and the lake's
            own `LAKE_MIGRATIONS_DIR`, merged by version).
        lock_timeout: how long `up` waits for another `up` to finish.
    """

    def __init__(
        self,
        catalog: LakeCatalog,
        directory: Path | None = None,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.catalog = catalog
        own = catalog.settings.migrations_dir
        #: `--dir` alone; else the shipped folder plus the lake's own (LAKE_MIGRATIONS_DIR),
        #: merged by version (review14b: the own folder alone hid the shipped steps).
        self.folders: list[Path] = (
            [directory] if directory else [migrations_dir(), *([own] if own else [])]
        )
        #: Where `new` writes: `--dir`, else the lake's own folder, else the shipped one.
        self.directory = self.folders[-1]
        self.lock_timeout = lock_timeout
        self.ledger = MigrationLedger(catalog.settings.catalog_uri, catalog.settings.catalog_name)

    def close(self) -> None:
        """Release database connections."""
        self.ledger.close()

    def migrations(self) -> list[Migration]:
        """The migration files, ordered."""
        merged: dict[int, Migration] = {}
        for folder in self.folders:
            for m in discover(folder):
                if m.version in merged:
                    raise MigrationError(
                        f"migrations {merged[m.version].path} and {m.path} share version "
                        f"{m.version}: number the lake's own migrations (LAKE_MIGRATIONS_DIR) "
                        "after the shipped ones"
                    )
                merged[m.version] = m
        return [merged[v] for v in sorted(merged)]

    def status(self) -> list[MigrationStatus]:
        """Every migration, applied or pending, plus applied ones whose file is gone."""
        applied = self.ledger.applied()
        out: list[MigrationStatus] = []
        for m in self.migrations():
            a = applied.pop(m.version, None)
            if a is None:
                out.append(MigrationStatus(m.version, m.name, "pending", m.checksum))
                continue
            state = "applied" if m.matches(a.checksum) else "edited"
            out.append(
                MigrationStatus(m.version, m.name, state, m.checksum, a.checksum, a.applied_at)
            )
        for a in applied.values():
            out.append(MigrationStatus(a.version, a.name, "missing", "", a.checksum, a.applied_at))
        return sorted(out, key=lambda s: s.version)

    def up(self, to: int | None = None, *, dry_run: bool = False) -> list[StepResult]:
        """Apply pending migrations in order, up to and including version `to`.

        Idempotent: applied migrations are skipped, so a second run does nothing. Each step's
        changes are planned for every table before the first commit; each table's changes are one
        metadata commit. A step is recorded only after all its commits succeeded.

        Args:
            to: last version to apply (default: all).
            dry_run: print the changes only; nothing is committed or recorded and no lock is taken.

        Returns:
            One result per step run (empty when nothing was pending).

        Raises:
            MigrationError: an applied migration was edited, a pending one is older than an
                applied one, a step failed (it is not recorded; later steps do not run), or the
                lock could not be taken.
        """
        migrations = self.migrations()
        if to is not None and to not in {m.version for m in migrations}:
            raise MigrationError(f"--to {to}: no migration with that version")
        if dry_run:
            return self._run(migrations, self.ledger.applied(), to, dry_run=True)
        with self.ledger.lock(self.lock_timeout):
            # Re-read after taking the lock: another process may have applied steps meanwhile.
            return self._run(migrations, self.ledger.applied(), to, dry_run=False)

    def _run(
        self,
        migrations: list[Migration],
        applied: dict[int, AppliedMigration],
        to: int | None,
        *,
        dry_run: bool,
    ) -> list[StepResult]:
        for m in migrations:
            a = applied.get(m.version)
            if a is not None and not m.matches(a.checksum):
                raise MigrationError(
                    f"migration {m.id} was edited after it was applied (checksum"
                    f" {m.checksum[:12]}, applied {a.checksum[:12]}); restore it and put the"
                    " change in a new migration"
                )
        newest = max(applied, default=0)
        pending = [
            m for m in migrations if m.version not in applied and (to is None or m.version <= to)
        ]
        for m in pending:
            if m.version < newest:
                raise MigrationError(
                    f"migration {m.id} is older than the applied migration {newest:04d};"
                    " renumber it after the newest one"
                )
        simulated: dict[str, TableState] = {}
        results = []
        for m in pending:
            results.append(self._step(m, dry_run=dry_run, simulated=simulated))
        return results

    def _step(
        self, migration: Migration, *, dry_run: bool, simulated: dict[str, TableState]
    ) -> StepResult:
        started = time.monotonic()
        ctx = MigrationContext(self.catalog, migration, dry_run=dry_run, simulated=simulated)
        data_step = False
        try:
            upgrade = migration.load()
            try:
                upgrade(ctx)
            except CommitRefusedError:
                if not dry_run:
                    raise
                # A dry run stops a data step at its first commit (review: it committed on
                # every dry run, `lake status` and `lake serve` start); what it declared before
                # is still planned.
                data_step = True
                ctx.log(f"would run a data step: {DRY_RUN_DATA_STEP}")
            tables = ctx.apply()
        except MigrationError:
            raise
        except LakeError as exc:
            raise MigrationError(
                f"migration {migration.id} failed: {exc} (not recorded as applied;"
                " later migrations not run)"
            ) from exc
        except Exception as exc:
            raise MigrationError(
                f"migration {migration.id} failed: {type(exc).__name__}: {exc} (not recorded"
                " as applied; later migrations not run)"
            ) from exc
        result = StepResult(migration, tables, ctx.messages, data_step=data_step)
        result.duration_ms = int((time.monotonic() - started) * 1000)
        if not dry_run:
            self.ledger.record(migration, result.duration_ms, "\n".join(result.lines()))
            result.recorded = True
            log.info("applied migration %s in %d ms", migration.id, result.duration_ms)
        return result

    def new(self, name: str) -> Path:
        """Write a numbered migration template `NNNN_name.py` (next free number).

        Raises:
            MigrationError: the name is not a short lower-case identifier.
        """
        slug = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
        if not slug or not slug[0].isalnum():
            raise MigrationError(f"migration name {name!r} must contain letters or digits")
        version = max((m.version for m in self.migrations()), default=0) + 1
        if version > 9999:
            raise MigrationError("migration numbers are exhausted (9999)")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{version:04d}_{slug}.py"
        path.write_text(TEMPLATE.format(title=name.strip()))
        return path


def pending_warning(catalog: LakeCatalog) -> str | None:
    """One line for `lake serve` / `lake status` when the lake needs `lake migrate up`.

    That is: a pending migration (shipped, or of `LAKE_MIGRATIONS_DIR`) would change
    a table (an upgraded lake, whose writers now run with today's code against yesterday's
    tables, e.g. without `bronze.dead_letters.event_index`), or an applied one was edited (`up`
    refuses to run then) or is missing from the folder (applied from another folder: set
    `LAKE_MIGRATIONS_DIR` to it). Pending steps that are no-ops here (every table already in the
    newest shape, as on a lake `lake init` made) are not worth a warning. Planning is a dry run:
    nothing is committed or recorded, no lock is taken.

    Returns:
        The warning, or None.

    Raises:
        LakeError: the catalog cannot be read.
    """
    runner = MigrationRunner(catalog)
    try:
        states = runner.status()
        odd = [
            f"{s.version:04d}_{s.name} {s.state}"
            for s in states
            if s.state in ("edited", "missing")
        ]
        if odd:  # `up` refuses to run (edited), or the lake's folder is another (missing)
            hint = (
                " (applied from another folder? set LAKE_MIGRATIONS_DIR to it)"
                if any(s.state == "missing" for s in states)
                and catalog.settings.migrations_dir is None
                else ""
            )
            return (
                f"migrations {', '.join(odd)}{hint}: see `lake migrate status` before "
                "`lake migrate up`"
            )
        if not any(s.state == "pending" for s in states):
            return None
        try:
            steps = runner.up(dry_run=True)
        except MigrationError as exc:
            if isinstance(exc.__cause__, TransientError):
                # The store or the catalog cannot be read: not the migrations' problem, and
                # the caller says so in its own words (`lake serve`: one line).
                raise exc.__cause__ from None
            return f"pending migrations cannot be planned ({exc}): see `lake migrate up --dry-run`"
    finally:
        runner.close()
    changing = [
        r.migration.id
        for r in steps
        if r.data_step or any(t.plan is not None and not t.plan.is_noop for t in r.tables)
    ]
    if not changing:
        return None
    return f"{len(changing)} migration(s) pending ({', '.join(changing)}): run `lake migrate up`"


TEMPLATE = '''"""{title}.

Say in a sentence or two what this migration changes and why.

Forward-only and idempotent: `upgrade` declares changes through `ctx`; the runner skips the ones
already in effect and commits each table's changes in one commit that bumps lake.schema-version.
Also update the table definitions in catalog/ (the columns and `schema_version` + 1) so that
`lake init` creates the new shape and `lake migrate check` finds no drift.
"""

from __future__ import annotations

from iceberg_lake.schema.migrations import MigrationContext


def upgrade(ctx: MigrationContext) -> None:
    """Declare the changes, e.g.:

    ctx.add_column(["bronze.stocks_trades", "silver.stocks_trades"], "venue", "string",
                   doc="reporting venue")
    ctx.rename_column("bronze.stocks_trades", "old_name", "new_name")
    ctx.widen_column("bronze.stocks_trades", "size", "long")
    ctx.add_partition_field("gold.levels_signals", "level_kind", "identity")
    """
    raise NotImplementedError("write this migration before running `lake migrate up`")
'''
