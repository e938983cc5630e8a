"""Two `lake migrate up` processes at once apply each step exactly once (SQLite and PostgreSQL).

Deterministic, no timing guesses: process A enters step 0001 and holds there until the test
releases it; process B is started only then, and the release comes only once B reports that it
is waiting for the migration lock. Without the lock B would apply the steps a second time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable
from support.wait import wait_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import MigrationError
from iceberg_lake.properties import SCHEMA_VERSION_PROPERTY
from iceberg_lake.schema.migrations import (
    LOCK_TABLE,
    MigrationLedger,
    ledger_table,
    lock_holder,
    lock_table,
)
from iceberg_lake.tables import registry

pytestmark = pytest.mark.integration

HOLD_STEP = '''"""Test step: note who runs it, wait for the test's go-ahead, add a column."""
import os, time
from pathlib import Path


def upgrade(ctx):
    d = Path(os.environ["MIGRATION_TEST_DIR"])
    with open(d / "entered-1", "a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 90
    while not (d / "release").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the test never released this step")
        time.sleep(0.05)
    ctx.add_column("bronze.stocks_trades", "venue", "string")
'''
SECOND_STEP = '''"""Test step: note who runs it, widen a column."""
import os
from pathlib import Path


def upgrade(ctx):
    with open(Path(os.environ["MIGRATION_TEST_DIR"]) / "entered-2", "a") as f:
        f.write(f"{os.getpid()}\\n")
    ctx.widen_column("bronze.stocks_trades", "size", "long")
'''


def _wait_for(what: str, cond: Callable[[], bool], procs: list[subprocess.Popen], logs: list[Path]):
    def none_failed() -> bool:
        for p, log in zip(procs, logs, strict=True):
            if p.poll() is not None and p.returncode != 0:
                pytest.fail(
                    f"lake exited {p.returncode} while waiting for {what}:\n{log.read_text()}"
                )
        return True

    wait_until(cond, 90, what, alive=none_failed)


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql"])
def test_two_concurrent_up_apply_each_step_once(
    request: pytest.FixtureRequest, tmp_path: Path, catalog_kind: str
) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": f"m{uuid.uuid4().hex[:8]}"}
    if catalog_kind == "postgresql":
        env["LAKE_CATALOG_URI"] = request.getfixturevalue("postgres_server").uri
    settings = load_settings(env)
    lake = LakeCatalog(settings)
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    lake.create_table(registry().get("bronze.stocks_trades"))

    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "0001_hold.py").write_text(HOLD_STEP)
    (steps / "0002_widen.py").write_text(SECOND_STEP)
    sync = tmp_path / "sync"
    sync.mkdir()

    exe = shutil.which("lake", path=os.path.dirname(sys.executable)) or shutil.which("lake")
    assert exe, "the lake console script must be installed"
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc_env.update(env, MIGRATION_TEST_DIR=str(sync))
    argv = [
        exe,
        "--log-level",
        "INFO",
        "migrate",
        "up",
        "--dir",
        str(steps),
        "--lock-timeout",
        "90",
    ]
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    outs: list[Path] = []

    def start(name: str) -> None:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        outs.append(out)
        logs.append(err)
        procs.append(
            subprocess.Popen(argv, env=proc_env, stdout=out.open("w"), stderr=err.open("w"))
        )

    try:
        start("a")
        _wait_for("A to enter step 1", (sync / "entered-1").exists, procs, logs)
        start("b")
        _wait_for(
            "B to wait for the lock",
            lambda: "waiting for the migration lock" in logs[1].read_text(),
            procs,
            logs,
        )
        (sync / "release").touch()
        for p in procs:
            p.wait(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    assert [p.returncode for p in procs] == [0, 0], [log.read_text() for log in logs]
    assert (sync / "entered-1").read_text().splitlines() == [str(procs[0].pid)]
    assert (sync / "entered-2").read_text().splitlines() == [str(procs[0].pid)]
    assert "applied 0002_widen" in outs[0].read_text()
    assert "nothing to apply" in outs[1].read_text()

    ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    try:
        applied = ledger.applied()
    finally:
        ledger.close()
    assert sorted(applied) == [1, 2]
    table = lake.load_table("bronze.stocks_trades")
    assert "venue" in table.schema().column_names
    assert str(table.schema().find_field("size").field_type) == "long"
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "4", "each step bumped the version once"


def test_lock_is_released_and_reusable(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings)  # creates the SQLite catalog file
    ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    try:
        with ledger.lock(timeout=5):
            pass
        with ledger.lock(timeout=5):  # released by the first block
            pass
    finally:
        ledger.close()
    assert ledger.applied() == {}


def test_a_held_lease_times_out_with_a_clear_message(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings)
    first = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    second = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    try:
        with first.lock(timeout=5):
            with pytest.raises(MigrationError, match="held the migration lock for 0.3 s"):
                with second.lock(timeout=0.3):
                    pass
    finally:
        first.close()
        second.close()


def test_a_lease_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    try:
        ledger.ensure()
        with ledger.engine.begin() as conn:
            conn.execute(
                sa.update(lock_table).values(
                    holder=f"{socket.gethostname()}:{dead.stdout.strip()}", acquired_at=time.time()
                )
            )
        with ledger.lock(timeout=5):
            with ledger.engine.connect() as conn:
                holder = conn.execute(sa.select(lock_table.c.holder)).scalar()
            assert holder == lock_holder()
    finally:
        ledger.close()


@pytest.mark.parametrize("catalog_kind", ["sqlite", "postgresql"])
def test_creating_the_ledger_while_another_process_does_still_takes_the_lock(
    request: pytest.FixtureRequest, tmp_path: Path, catalog_kind: str
) -> None:
    """Two replays (or `migrate up`) started together on a lake without a ledger both create it.

    Deterministic worst case: the other process makes each step (a table, then the lock row)
    just before this one does. Each lost step used to be an error and the third one escaped:
    "creating the migration ledger: catalog database unavailable (UNIQUE constraint failed:
    lake_migrations_lock.catalog_name)", the rare failure of the concurrent replays in
    tests/test_poison_pipeline.py. Budget: ~1 s (SQLite), ~5 s (PostgreSQL, shared server).
    """
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": f"m{uuid.uuid4().hex[:8]}"}
    if catalog_kind == "postgresql":
        env["LAKE_CATALOG_URI"] = request.getfixturevalue("postgres_server").uri
    settings = load_settings(env)
    LakeCatalog(settings)  # creates the catalog database
    other = sa.create_engine(settings.catalog_uri)  # the other process's connection
    existing = set(sa.inspect(other).get_table_names())  # the PostgreSQL server is shared
    steps: dict[re.Pattern[str], Any] = {
        re.compile(rf"CREATE TABLE (IF NOT EXISTS )?{t.name}\b"): CreateTable(t)
        for t in (ledger_table, lock_table)
        if t.name not in existing
    }
    row = sa.insert(lock_table).values(catalog_name=settings.catalog_name)
    steps[re.compile(rf"INSERT INTO {LOCK_TABLE}\b")] = row
    expected = len(steps)
    ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)

    @sa.event.listens_for(ledger.engine, "before_cursor_execute")
    def other_process_first(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        for pattern in [p for p in steps if p.match(statement.strip())]:
            with other.begin() as c:
                c.execute(steps.pop(pattern))

    mine = lock_table.c.catalog_name == settings.catalog_name
    try:
        with ledger.lock(timeout=5):
            if catalog_kind == "sqlite":  # a lease row naming this process
                with other.connect() as c:
                    assert c.execute(sa.select(lock_table.c.holder).where(mine)).scalar() == (
                        lock_holder()
                    )
            else:  # PostgreSQL: the row is locked by the ledger's transaction
                with other.connect() as c, pytest.raises(sa.exc.OperationalError):
                    c.execute(sa.select(lock_table).where(mine).with_for_update(nowait=True))
        assert not steps, f"never raced (the interleaving was not forced): {list(steps)}"
        if catalog_kind == "sqlite":  # a fresh database: both tables and the row were raced
            assert expected == 3
    finally:
        ledger.close()
        other.dispose()
