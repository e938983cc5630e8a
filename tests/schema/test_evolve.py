"""Safe table changes: planning rules, and real commits read back across versions.

Time travel is checked with both readers: pyiceberg (`scan(snapshot_id=...)`) and DuckDB
(`iceberg_scan(..., snapshot_from_id=...)`) on a real SQLite catalog and file warehouse.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.types import DecimalType, IntegerType, LongType, StringType
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import SchemaChangeError
from iceberg_lake.properties import SCHEMA_VERSION_PROPERTY, WATERMARK_PREFIX
from iceberg_lake.schema.evolve import (
    AddColumn,
    AddPartitionField,
    ColumnState,
    DropColumn,
    RenameColumn,
    TableState,
    WidenColumn,
    evolve_table,
    plan_changes,
)
from iceberg_lake.tables import registry

TRADES = "bronze.stocks_trades"
TS_NS = 1_765_000_000_123_456_789


def _state(rows: int = 10) -> TableState:
    return TableState(
        "bronze.t",
        (
            ColumnState("symbol", StringType(), True),
            ColumnState("size", IntegerType(), True),
            ColumnState("seq", LongType(), False),
            ColumnState("px", DecimalType(10, 2), False),
        ),
        (("symbol", "identity"),),
        rows,
        3,
    )


# ---- planning (pure) --------------------------------------------------------------------------


def test_plan_applies_in_order_and_bumps_the_version_once() -> None:
    plan = plan_changes(
        _state(),
        [
            AddColumn("venue", "string"),
            RenameColumn("seq", "sequence"),
            WidenColumn("size", "long"),
        ],
    )
    assert [c.describe() for c in plan.apply] == [
        "add column venue string (optional)",
        "rename column seq to sequence",
        "widen column size to long",
    ]
    assert plan.after.schema_version == 4
    assert [c.name for c in plan.after.columns] == ["symbol", "size", "sequence", "px", "venue"]
    assert plan.after.column("size").type == LongType()


def test_planning_the_result_again_is_a_noop() -> None:
    changes = [AddColumn("venue", "string"), RenameColumn("seq", "sequence")]
    again = plan_changes(plan_changes(_state(), changes).after, changes)
    assert again.is_noop
    assert [why for _, why in again.skipped] == [
        "column already exists",
        "column already named sequence",
    ]
    assert again.after.schema_version == 4  # no bump for a no-op


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (WidenColumn("seq", "int"), "cannot narrow seq from long to int"),
        (WidenColumn("px", "decimal(8,2)"), "cannot narrow px from decimal(10, 2)"),
        (WidenColumn("px", "decimal(12,3)"), "scale fixed"),
        (WidenColumn("symbol", "long"), "only allows int -> long"),
        (AddColumn("venue", "string", required=True), "table with 10 rows"),
        (AddColumn("venue", "varchar"), "unknown column type 'varchar'"),
        (AddColumn("size", "string"), "already exists as int (required)"),
        (DropColumn("symbol"), "partition field identity(symbol) is computed from it"),
        (RenameColumn("nope", "x"), "no column 'nope'"),
        (RenameColumn("seq", "size"), "that name is taken"),
        (AddPartitionField("symbol", "hour"), "hour does not apply to string"),
        (AddPartitionField("symbol", "zorder"), "unknown partition transform"),
    ],
)
def test_unsafe_changes_are_refused_with_the_reason(change: object, reason: str) -> None:
    with pytest.raises(SchemaChangeError, match=re.escape(reason)):
        plan_changes(_state(), [change])  # type: ignore[list-item]


def test_required_column_is_allowed_on_an_empty_table_and_widening_decimal_precision() -> None:
    plan = plan_changes(
        _state(rows=0),
        [AddColumn("venue", "string", required=True), WidenColumn("px", "decimal(18,2)")],
    )
    assert plan.after.column("venue").required
    assert plan.after.column("px").type == DecimalType(18, 2)


# ---- real commits -----------------------------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> LakeCatalog:
    cat = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")}))
    cat.ensure_warehouse()
    cat.ensure_namespaces()
    cat.create_table(registry().get(TRADES))
    return cat


def _append(table: Table, rows: list[dict]) -> int:
    """Append rows built against the live schema; returns the new snapshot id."""
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    full = [
        {
            "ts_event_ns": TS_NS + i,
            "ts_recv_ns": TS_NS + i + 1000,
            "source": "test",
            "symbol": "SPY",
            "price": 100.0 + i,
            "ts_event": datetime.fromtimestamp((TS_NS + i) // 1000 / 1e6, tz=UTC),
            **r,
        }
        for i, r in enumerate(rows)
    ]
    table.append(pa.Table.from_pylist(full, schema=schema))
    return table.current_snapshot().snapshot_id


def _duck_columns(duck, table: Table, snapshot_id: int) -> list[str]:
    rel = duck.sql(
        f"SELECT * FROM iceberg_scan('{table.metadata_location}', snapshot_from_id={snapshot_id})"
    )
    return rel.columns


def test_add_column_time_travel_returns_the_old_shape(catalog: LakeCatalog, duck) -> None:
    table = catalog.load_table(TRADES)
    before = _append(table, [{"size": 1}, {"size": 2}])
    watermark = f"{WATERMARK_PREFIX}MARKET.lake_bronze_stocks_trades"
    with table.transaction() as tx:
        tx.set_properties({watermark: "42"})

    result = evolve_table(table, TRADES, [AddColumn("venue", "string", "reporting venue")])
    assert result.committed
    table = catalog.load_table(TRADES)
    assert table.current_snapshot().snapshot_id == before, "a schema change makes no snapshot"
    after = _append(table, [{"size": 3, "venue": "XNAS"}])
    table = catalog.load_table(TRADES)

    assert table.properties[SCHEMA_VERSION_PROPERTY] == "3"  # declared 2, +1
    assert table.properties[watermark] == "42", "the writers' watermark must survive"

    old = table.scan(snapshot_id=before).to_arrow()
    assert "venue" not in old.column_names and old.num_rows == 2
    new = table.scan(snapshot_id=after).to_arrow().sort_by("size")
    assert new.column("venue").to_pylist() == [None, None, "XNAS"]

    assert "venue" not in _duck_columns(duck, table, before)
    assert "venue" in _duck_columns(duck, table, after)
    got = duck.sql(
        f"SELECT size, venue FROM iceberg_scan('{table.metadata_location}',"
        f" snapshot_from_id={after}) ORDER BY size"
    ).fetchall()
    assert got == [(1, None), (2, None), (3, "XNAS")]


def test_rename_keeps_old_data_readable_under_the_new_name(catalog: LakeCatalog, duck) -> None:
    table = catalog.load_table(TRADES)
    _append(table, [{"size": 5, "seq": 7}])
    evolve_table(table, TRADES, [RenameColumn("seq", "sequence")])
    table = catalog.load_table(TRADES)
    assert table.scan().to_arrow().column("sequence").to_pylist() == [7]
    got = duck.sql(f"SELECT sequence FROM iceberg_scan('{table.metadata_location}')").fetchall()
    assert got == [(7,)]


def test_widen_int_to_long_keeps_values(catalog: LakeCatalog, duck) -> None:
    table = catalog.load_table(TRADES)
    _append(table, [{"size": 2_000_000_000}, {"size": -5}])
    evolve_table(table, TRADES, [WidenColumn("size", "long")])
    table = catalog.load_table(TRADES)
    assert table.schema().find_field("size").field_type == LongType()
    _append(table, [{"size": 5_000_000_000}])  # does not fit an int
    table = catalog.load_table(TRADES)
    values = sorted(table.scan().to_arrow().column("size").to_pylist())
    assert values == [-5, 2_000_000_000, 5_000_000_000]
    got = duck.sql(
        f"SELECT size FROM iceberg_scan('{table.metadata_location}') ORDER BY size"
    ).fetchall()
    assert [v for (v,) in got] == values


def test_evolve_twice_is_a_noop_and_partition_field_lands(catalog: LakeCatalog) -> None:
    table = catalog.load_table(TRADES)
    changes = [AddPartitionField("source", "identity"), DropColumn("exchange")]
    assert evolve_table(table, TRADES, changes).committed
    second = evolve_table(catalog.load_table(TRADES), TRADES, changes)
    assert not second.committed and second.plan.is_noop
    table = catalog.load_table(TRADES)
    assert [f.name for f in table.spec().fields] == ["symbol", "ts_event_hour", "source"]
    assert "exchange" not in table.schema().column_names
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "3"


# ---- the CLI ----------------------------------------------------------------------------------


def _lake(tmp_path: Path, *args: str):
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake")}
    return CliRunner().invoke(app, list(args), env=env)


def test_cli_table_create_and_evolve(tmp_path: Path) -> None:
    first = _lake(tmp_path, "table", "create", TRADES)
    assert first.exit_code == 0, first.output
    assert "created bronze.stocks_trades" in first.output
    assert "already exists" in _lake(tmp_path, "table", "create", TRADES).output

    dry = _lake(tmp_path, "table", "evolve", TRADES, "--add-column", "venue:string", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "add column venue string (optional)" in dry.output
    assert "lake.schema-version 2 -> 3" in dry.output
    cat = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")}))
    assert "venue" not in cat.load_table(TRADES).schema().column_names, "dry run commits nothing"

    res = _lake(
        tmp_path, "table", "evolve", TRADES, "--add-column", "venue:string", "--doc", "MIC",
        "--widen", "size:long", "--rename", "seq:sequence", "--force", "--add-partition-field",
        "source:identity",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    table = cat.load_table(TRADES)
    assert table.schema().find_field("venue").doc == "MIC"
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "3"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--widen", "price:float"], "cannot narrow price from double to float"),
        (["--add-column", "venue:string", "--required"], "table with 1 rows"),
        (["--add-column", "venue:varchar"], "unknown column type 'varchar'"),
        (["--drop-column", "seq"], "pass --force"),
        (["--rename", "seq:sequence"], "'seq' is a dedup key in catalog/"),
        (["--rename", "conditions:conds"], "'conditions' is a declared column in catalog/"),
        (["--add-column", "venue"], "--add-column expects col:type"),
        ([], "nothing to change"),
    ],
)
def test_cli_refused_changes_exit_1_with_the_reason(
    catalog: LakeCatalog, tmp_path: Path, args: list[str], reason: str
) -> None:
    _append(catalog.load_table(TRADES), [{"size": 1}])
    res = _lake(tmp_path, "table", "evolve", TRADES, *args)
    if reason is None:
        assert res.exit_code == 0, res.output
        return
    assert res.exit_code == 1
    assert reason in res.output
    assert "Traceback" not in res.output
    assert catalog.load_table(TRADES).properties[SCHEMA_VERSION_PROPERTY] == "2"


def test_a_stale_table_object_is_refreshed_and_the_writer_watermark_kept(
    catalog: LakeCatalog,
) -> None:
    stale = catalog.load_table(TRADES)
    writer = catalog.load_table(TRADES)
    watermark = f"{WATERMARK_PREFIX}MARKET.lake_bronze_stocks_trades"
    with writer.transaction() as tx:  # a writer's watermark and append land first
        tx.set_properties({watermark: "7"})
    _append(writer, [{"size": 1}])
    evolve_table(catalog.load_table(TRADES), TRADES, [AddColumn("other", "long")])

    # "other" exists now although the stale object does not know it: a no-op, not an error
    result = evolve_table(stale, TRADES, [AddColumn("other", "long"), AddColumn("venue", "string")])
    assert result.committed
    assert [c.describe() for c in result.plan.apply] == ["add column venue string (optional)"]
    table = catalog.load_table(TRADES)
    assert table.properties[watermark] == "7"
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "4"
    assert table.scan().to_arrow().num_rows == 1


def test_a_commit_race_is_replanned_and_retried(
    catalog: LakeCatalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import iceberg_lake.schema.evolve as evolve_module

    real_plan = evolve_module.plan_changes
    raced: list[bool] = []

    def plan_then_race(state: TableState, changes: list) -> object:
        plan = real_plan(state, changes)
        if not raced:  # another process changes the schema between our plan and our commit
            raced.append(True)
            evolve_table(catalog.load_table(TRADES), TRADES, [AddColumn("other", "long")])
        return plan

    monkeypatch.setattr(evolve_module, "plan_changes", plan_then_race)
    with caplog.at_level(logging.INFO, logger="iceberg_lake.schema.evolve"):
        result = evolve_table(catalog.load_table(TRADES), TRADES, [AddColumn("venue", "string")])
    assert result.committed
    assert any("concurrent commit" in r.getMessage() for r in caplog.records)
    table = catalog.load_table(TRADES)
    assert {"venue", "other"} <= set(table.schema().column_names)
    assert table.properties[SCHEMA_VERSION_PROPERTY] == "4"


def test_a_pinned_query_keeps_the_written_shape_whether_or_not_the_pin_is_current(
    catalog: LakeCatalog,
) -> None:
    """evolve14: after a rename, `lake query --as-of TAG` showed the new name while TAG was
    the current snapshot and the old one once anybody had written since; replay of the same
    pin always shows the written shape. A pin now always reads the shape it was written with;
    without a pin the current snapshot shows in the current schema."""
    from iceberg_lake.timetravel import snapshots
    from iceberg_lake.timetravel.query import Lake

    table = catalog.load_table(TRADES)
    tagged = _append(table, [{"size": 5, "seq": 7}])
    snapshots.create_tag(catalog, "bt-evolve", [TRADES])
    evolve_table(table, TRADES, [RenameColumn("seq", "sequence")])
    sql_old, sql_new = f"SELECT seq FROM {TRADES}", f"SELECT sequence FROM {TRADES}"
    with Lake(catalog) as lake:
        assert lake.query(sql_new).column(0).to_pylist() == [7]  # current, current schema
        for pin in ("bt-evolve", str(tagged)):
            assert lake.query(sql_old, as_of=pin).column(0).to_pylist() == [7]
    _append(catalog.load_table(TRADES), [{"size": 6, "sequence": 8}])
    with Lake(catalog) as lake:
        assert lake.query(sql_old, as_of="bt-evolve").column(0).to_pylist() == [7]
        assert sorted(lake.query(sql_new).column(0).to_pylist()) == [7, 8]
