"""Migrations: the shipped step on an old lake, ledger, dry run, edits, failures, `new`."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import CatalogUnavailableError, MigrationError
from iceberg_lake.properties import SCHEMA_VERSION_PROPERTY
from iceberg_lake.schema.drift import find_drift
from iceberg_lake.schema.migrations import (
    MigrationLedger,
    MigrationRunner,
    discover,
    migrations_dir,
)
from iceberg_lake.tables import TableRegistry, registry

TRADES = ["bronze.stocks_trades", "silver.stocks_trades"]
FUTURES = ["bronze.futures_trades", "silver.futures_trades"]
TS_NS = 1_765_000_000_000_000_000


def _settings(tmp_path: Path) -> Settings:
    return load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})


def _v1_registry() -> TableRegistry:
    """The trades tables as they were declared before migration 0001 (no `conditions`)."""
    return TableRegistry(
        [
            dataclasses.replace(
                registry().get(t),
                columns=tuple(c for c in registry().get(t).columns if c.name != "conditions"),
                schema_version=1,
            )
            for t in TRADES + FUTURES
        ]
    )


def _old_lake(settings: Settings) -> LakeCatalog:
    old = LakeCatalog(settings, tables=_v1_registry())
    old.init()
    return old


def _write(dir_: Path, name: str, body: str, doc: str = "Test step.") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / name
    path.write_text(f'"""{doc}"""\n\n' + textwrap.dedent(body))
    return path


def _lake(tmp_path: Path, *args: str):
    return CliRunner().invoke(app, list(args), env={"LAKE_DATA_DIR": str(tmp_path / "lake")})


# ---- the shipped migration --------------------------------------------------------------------


def test_shipped_migration_upgrades_an_old_lake_then_no_drift(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    old = _old_lake(settings)
    table = old.load_table("bronze.stocks_trades")
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    row = {
        "ts_event_ns": TS_NS, "ts_recv_ns": TS_NS, "source": "t", "symbol": "SPY", "price": 1.0,
        "size": 1, "ts_event": datetime.fromtimestamp(TS_NS / 1e9, tz=UTC),
    }  # fmt: skip
    table.append(pa.Table.from_pylist([row], schema=schema))
    before = table.current_snapshot().snapshot_id

    lake = LakeCatalog(settings)  # the current catalog/ definitions
    runner = MigrationRunner(lake)
    try:
        assert [m.id for m in runner.migrations()][0] == "0001_trades_conditions"
        results = runner.up()
        assert results[0].recorded
        assert (
            results[0]
            .lines()[0]
            .startswith("bronze.stocks_trades: add column conditions string (optional)")
        )
        for ident in TRADES + FUTURES:
            t = lake.load_table(ident)
            assert t.schema().find_field("conditions").required is False
            assert t.properties[SCHEMA_VERSION_PROPERTY] == "2"
        t = lake.load_table("bronze.stocks_trades")
        assert t.scan().to_arrow().column("conditions").to_pylist() == [None]
        assert "conditions" not in t.scan(snapshot_id=before).to_arrow().column_names

        assert runner.up() == [], "applying twice is a no-op"
        assert [s.state for s in runner.status()] == ["applied"] * len(runner.migrations())
    finally:
        runner.close()
    lake.init()  # the tables the old lake lacked, in the newest shape
    assert find_drift(lake) == []


def test_fresh_lake_records_shipped_migrations_without_changing_tables(tmp_path: Path) -> None:
    lake = LakeCatalog(_settings(tmp_path))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for ident in TRADES + FUTURES:
        lake.create_table(registry().get(ident))
    locations = {t: lake.load_table(t).metadata_location for t in TRADES + FUTURES}
    res = _lake(tmp_path, "migrate", "up")
    assert res.exit_code == 0, res.output
    assert "applied 0001_trades_conditions" in res.output
    assert "(column already exists)" in res.output
    assert {t: lake.load_table(t).metadata_location for t in locations} == locations
    status = _lake(tmp_path, "migrate", "status", "-o", "json")
    assert '"state": "applied"' in status.output and '"pending"' not in status.output


# ---- runner behaviour on custom steps ---------------------------------------------------------

STEP_ADD = """
def upgrade(ctx):
    ctx.add_column("bronze.stocks_trades", "venue", "string", doc="MIC")
"""
STEP_RENAME = """
def upgrade(ctx):
    ctx.rename_column("bronze.stocks_trades", "venue", "mic")
"""


@pytest.fixture
def one_table(tmp_path: Path) -> LakeCatalog:
    lake = LakeCatalog(_settings(tmp_path))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    lake.create_table(registry().get("bronze.stocks_trades"))
    return lake


def test_dry_run_prints_exact_changes_and_commits_nothing(
    one_table: LakeCatalog, tmp_path: Path
) -> None:
    d = tmp_path / "mig"
    _write(d, "0001_add_venue.py", STEP_ADD)
    _write(d, "0002_rename_venue.py", STEP_RENAME)
    location = one_table.load_table("bronze.stocks_trades").metadata_location
    res = _lake(tmp_path, "migrate", "up", "--dry-run", "--dir", str(d))
    assert res.exit_code == 0, res.output
    out = res.output
    assert "would apply 0001_add_venue" in out and "would apply 0002_rename_venue" in out
    assert 'bronze.stocks_trades: add column venue string (optional) doc "MIC"' in out
    assert "bronze.stocks_trades: set lake.schema-version 2 -> 3" in out
    # step 2 is planned against the state step 1 would leave
    assert "bronze.stocks_trades: rename column venue to mic" in out
    assert "bronze.stocks_trades: set lake.schema-version 3 -> 4" in out
    assert one_table.load_table("bronze.stocks_trades").metadata_location == location
    status = _lake(tmp_path, "migrate", "status", "--dir", str(d), "-o", "json").output
    assert status.count('"pending"') == 2

    applied = _lake(tmp_path, "migrate", "up", "--to", "1", "--dir", str(d))
    assert applied.exit_code == 0, applied.output
    table = one_table.load_table("bronze.stocks_trades")
    assert "venue" in table.schema().column_names and "mic" not in table.schema().column_names
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "3"


def test_dry_run_refuses_what_the_real_run_refuses_after_a_planned_rename(
    one_table: LakeCatalog, tmp_path: Path
) -> None:
    """A rename planned by an earlier step of the same dry run keeps its old name reserved (the
    real run refuses a new column under it), and a drop frees it again (found by review5)."""
    d = tmp_path / "mig"
    _write(d, "0001_add_venue.py", STEP_ADD)
    _write(d, "0002_rename_venue.py", STEP_RENAME)
    _write(d, "0003_add_venue_again.py", STEP_ADD)
    dry = _lake(tmp_path, "migrate", "up", "--dry-run", "--dir", str(d))
    real = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    for res in (dry, real):
        assert res.exit_code == 1, res.output
        assert "migration 0003_add_venue_again failed" in res.output
        assert "column 'mic' was called 'venue' before a rename" in res.output

    (d / "0003_add_venue_again.py").unlink()
    _write(
        d,
        "0003_drop_mic.py",
        'def upgrade(ctx):\n    ctx.drop_column("bronze.stocks_trades", "mic")\n',
    )
    _write(d, "0004_add_venue_again.py", STEP_ADD)
    dry = _lake(tmp_path, "migrate", "up", "--dry-run", "--dir", str(d))
    assert dry.exit_code == 0, dry.output
    assert "would apply 0004_add_venue_again" in dry.output
    real = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    assert real.exit_code == 0, real.output
    assert "venue" in one_table.load_table("bronze.stocks_trades").schema().column_names


def test_edited_applied_migration_is_reported_and_refused(
    one_table: LakeCatalog, tmp_path: Path
) -> None:
    d = tmp_path / "mig"
    step = _write(d, "0001_add_venue.py", STEP_ADD)
    assert _lake(tmp_path, "migrate", "up", "--dir", str(d)).exit_code == 0
    step.write_text(step.read_text() + "# edited\n")
    _write(d, "0002_rename_venue.py", STEP_RENAME)

    status = _lake(tmp_path, "migrate", "status", "--dir", str(d), "-o", "json").output
    assert '"state": "edited"' in status
    res = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    assert res.exit_code == 1
    assert "0001_add_venue was edited after it was applied" in res.output
    assert "mic" not in one_table.load_table("bronze.stocks_trades").schema().column_names
    check = _lake(tmp_path, "migrate", "check", "--dir", str(d))
    assert check.exit_code == 1 and "edited" in check.output

    step.unlink()  # an applied migration whose file is gone is reported too
    status = _lake(tmp_path, "migrate", "status", "--dir", str(d), "-o", "json").output
    assert '"state": "missing"' in status


def test_failing_step_stops_with_a_clear_message_and_is_not_recorded(
    one_table: LakeCatalog, tmp_path: Path
) -> None:
    d = tmp_path / "mig"
    _write(d, "0001_add_venue.py", STEP_ADD)
    _write(d, "0002_broken.py", "def upgrade(ctx):\n    raise RuntimeError('boom')\n")
    _write(d, "0003_rename_venue.py", STEP_RENAME)
    res = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    assert res.exit_code == 1
    assert "migration 0002_broken failed: RuntimeError: boom" in res.output
    assert "not recorded as applied" in res.output
    runner = MigrationRunner(one_table, d)
    try:
        assert [s.state for s in runner.status()] == ["applied", "pending", "pending"]
    finally:
        runner.close()
    names = one_table.load_table("bronze.stocks_trades").schema().column_names
    assert "venue" in names and "mic" not in names


def test_refused_change_in_a_step_commits_nothing_of_that_step(
    one_table: LakeCatalog, tmp_path: Path
) -> None:
    one_table.create_table(registry().get("bronze.futures_trades"))
    d = tmp_path / "mig"
    _write(
        d,
        "0001_mixed.py",
        """
        def upgrade(ctx):
            ctx.add_column("bronze.futures_trades", "venue", "string")
            ctx.widen_column("bronze.stocks_trades", "price", "float")
        """,
    )
    runner = MigrationRunner(one_table, d)
    try:
        with pytest.raises(MigrationError, match="cannot narrow price from double to float"):
            runner.up()
        assert [s.state for s in runner.status()] == ["pending"]
    finally:
        runner.close()
    assert "venue" not in one_table.load_table("bronze.futures_trades").schema().column_names


def test_new_writes_the_next_numbered_template(one_table: LakeCatalog, tmp_path: Path) -> None:
    d = tmp_path / "mig"
    _write(d, "0001_add_venue.py", STEP_ADD)
    res = _lake(tmp_path, "migrate", "new", "Quotes venue", "--dir", str(d))
    assert res.exit_code == 0, res.output
    path = d / "0002_quotes_venue.py"
    assert path.is_file() and path.read_text().startswith('"""Quotes venue.')
    up = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    assert up.exit_code == 1
    assert "0002_quotes_venue failed: NotImplementedError: write this migration" in up.output


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("1_short.py", STEP_ADD, "must be named NNNN_short_name.py"),
        ("0001_nodoc.py", None, "has no docstring"),
        ("0001_noupgrade.py", "X = 1\n", "has no upgrade(ctx) function"),
    ],
)
def test_invalid_migration_files_are_reported(
    tmp_path: Path, name: str, body: str | None, reason: str
) -> None:
    d = tmp_path / "mig"
    if body is None:
        d.mkdir()
        (d / name).write_text(STEP_ADD)
    else:
        _write(d, name, body)
    with pytest.raises(MigrationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        for m in discover(d):
            m.load()


def test_shipped_migrations_are_valid_and_documented() -> None:
    found = discover(migrations_dir())
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    for m in found:
        assert callable(m.load())


def test_a_missing_migrations_folder_is_an_error_not_nothing_to_apply(tmp_path: Path) -> None:
    res = _lake(tmp_path, "migrate", "up", "--dir", str(tmp_path / "no-such-folder"))
    assert res.exit_code == 1
    assert "no-such-folder does not exist" in res.output
    assert "nothing to apply" not in res.output and "Traceback" not in res.output


def test_a_catalog_database_that_cannot_be_reached_is_named_as_such(tmp_path: Path) -> None:
    # A PostgreSQL socket directory with no server in it: the connection is refused.
    uri = f"postgresql+psycopg2://lake@/lake?host={tmp_path}"
    ledger = MigrationLedger(uri, "lake")
    try:
        with pytest.raises(CatalogUnavailableError) as err:
            ledger.ensure()
    finally:
        ledger.close()
    # Not "creating the migration ledger" after retries: nothing says the ledger is missing.
    assert str(err.value).startswith("reading the migration ledger: catalog database unavailable")


STEP_DATA = """
from iceberg_lake.schema.migrations import MigrationContext


def upgrade(ctx: MigrationContext) -> None:
    ctx.add_column("bronze.stocks_trades", "venue", "string")
    table = ctx.load_table("bronze.stocks_trades")
    runs = int(table.properties.get("test.data-step-runs", "0")) + 1
    with table.transaction() as tx:
        tx.set_properties({"test.data-step-runs": str(runs)})
    ctx.log(f"data step run {runs}")
"""


def test_a_data_step_commits_only_when_the_step_is_applied(
    one_table: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evolve14: a step's data step (`ctx.load_table` and a commit of its own) ran and
    committed on every `--dry-run`, and on every `lake status` and `lake serve` start (their
    pending-migration warning is a dry run): one applied step ran five times."""
    from iceberg_lake.schema import migrations

    d = tmp_path / "mig"
    _write(d, "0001_data_step.py", STEP_DATA)

    def runs() -> str | None:
        return one_table.load_table("bronze.stocks_trades").properties.get("test.data-step-runs")

    dry = _lake(tmp_path, "migrate", "up", "--dry-run", "--dir", str(d))
    assert dry.exit_code == 0, dry.output
    assert "would run a data step" in dry.output and "add column venue" in dry.output
    monkeypatch.setattr(migrations, "migrations_dir", lambda: d)
    for _ in range(2):  # what `lake status` and `lake serve` plan at their start
        warning = migrations.pending_warning(one_table)
        assert warning is not None and "0001_data_step" in warning
    assert runs() is None
    assert "venue" not in one_table.load_table("bronze.stocks_trades").schema().column_names

    applied = _lake(tmp_path, "migrate", "up", "--dir", str(d))
    assert applied.exit_code == 0, applied.output
    assert "data step run 1" in applied.output and runs() == "1"
    assert "venue" in one_table.load_table("bronze.stocks_trades").schema().column_names
    assert migrations.pending_warning(one_table) is None and runs() == "1"


def test_the_lakes_own_migrations_folder_is_planned_with_the_shipped_one(
    tmp_path: Path,
) -> None:
    """evolve14: a lake migrated with `--dir` had every step reported `missing` by `lake
    status` and `lake serve`, forever. LAKE_MIGRATIONS_DIR names the lake's own folder, planned
    together with the shipped one (review14b: alone, it hid the shipped steps from an upgraded
    lake, which then never got them)."""
    from iceberg_lake.schema import migrations

    d = tmp_path / "mig"
    _write(d, "0042_add_venue.py", STEP_ADD)
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_MIGRATIONS_DIR": str(d)}
    old = _old_lake(load_settings(env))  # before the shipped 0001 (no `conditions`)
    warning = migrations.pending_warning(LakeCatalog(load_settings(env)))
    assert warning is not None and "0001_trades_conditions" in warning
    up = CliRunner().invoke(app, ["migrate", "up"], env=env)
    assert up.exit_code == 0, up.output
    assert "applied 0001_trades_conditions" in up.output and "applied 0042_add_venue" in up.output
    trades = old.load_table("bronze.stocks_trades").schema().column_names
    assert "conditions" in trades and "venue" in trades
    assert migrations.pending_warning(LakeCatalog(load_settings(env))) is None
    status = CliRunner().invoke(app, ["migrate", "status", "-o", "json"], env=env)
    assert status.exit_code == 0 and "missing" not in status.output
    assert "pending" not in status.output

    # Applied with --dir alone, the lake's own step is missing from the shipped folder: the
    # warning points at the setting.
    shipped_only = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")}))
    warning = migrations.pending_warning(shipped_only)
    assert warning is not None and "0042_add_venue missing" in warning
    assert "LAKE_MIGRATIONS_DIR" in warning
    clash = tmp_path / "clash"
    _write(clash, "0001_mine.py", STEP_ADD)
    res = CliRunner().invoke(
        app, ["migrate", "status"], env={**env, "LAKE_MIGRATIONS_DIR": str(clash)}
    )
    assert res.exit_code == 1 and "share version 1" in res.output
