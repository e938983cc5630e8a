"""Silver after Bronze-only schema evolution, and several-table runs with one failing table.

A real lake (SQLite catalog, local warehouse, every declared table) evolved as
docs/schema-evolution.md shows, then compacted through the CLI and the Python API; Silver is
compared with a dedup computed here. Budget: ~15 s, no servers.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.types import IntegerType, LongType
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.properties import SCHEMA_VERSION_PROPERTY
from iceberg_lake.schema.evolve import WidenColumn, evolve_table
from iceberg_lake.silver.compactor import SilverCompactor

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9
MIN_NS = 60 * 10**9
T0 = int(datetime(2025, 12, 16, 14, tzinfo=UTC).timestamp()) * 10**9  # 14:00 UTC
DAY = date(2025, 12, 16)
TRADES = "stocks_trades"
BRONZE, SILVER = f"bronze.{TRADES}", f"silver.{TRADES}"
KEYS = ("source", "ts_event_ns", "symbol", "price", "size", "exchange", "seq")


def trade(ts: int, seq: int, *, sym: str = "SPY", source: str = "databento", **kw: Any) -> dict:
    row = {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1_000,
        "source": source,
        "symbol": sym,
        "price": 600.0 + seq % 7,
        "size": 100,
        "exchange": 1,
        "seq": seq,
        "ts_event": ts // 1000,
        "conditions": None,
    }
    return {**row, **kw}


def append(table: Table, rows: list[dict]) -> None:
    """Append as the writers do (one commit)."""
    table.append(
        pa.Table.from_pylist(
            rows, schema=schema_to_pyarrow(table.schema(), include_field_ids=False)
        )
    )


def expected(rows: list[dict]) -> list[tuple]:
    """The spec's dedup: one row per event (the dedup columns), the earliest receive wins."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r[k] for k in KEYS)
        if key not in best or r["ts_recv_ns"] < best[key]["ts_recv_ns"]:
            best[key] = r
    return sorted(_row(r) for r in best.values())


def _row(r: dict) -> tuple:
    return (r["ts_event_ns"], r["ts_recv_ns"], *(r[k] for k in KEYS))


def silver_rows(lake: LakeCatalog, identifier: str = SILVER) -> list[tuple]:
    return sorted(_row(r) for r in lake.load_table(identifier).scan().to_arrow().to_pylist())


def _cli(lake: LakeCatalog, *args: str):
    env = {"LAKE_DATA_DIR": str(lake.settings.data_dir)}
    return CliRunner().invoke(app, list(args), env=env)


def test_documented_bronze_partition_change_keeps_silver_compacting(lake: LakeCatalog) -> None:
    """docs/schema-evolution.md's `--add-partition-field source:identity` on Bronze only."""
    first = [
        trade(T0 + i * MIN_NS + h * HOUR_NS, seq=100 * h + i, sym=s)
        for h in range(2)
        for i, s in enumerate(["SPY", "QQQ"] * 5)
    ]
    append(lake.load_table(BRONZE), first)
    with SilverCompactor(lake) as compactor:
        assert compactor.compact_incremental([TRADES])[0].status == "success"

    res = _cli(lake, "table", "evolve", BRONZE, "--add-partition-field", "source:identity")
    assert res.exit_code == 0, res.output
    assert len(lake.load_table(BRONZE).spec().fields) == 3

    # New spec's files in the same Silver partitions: a second feed, a redelivery of rows
    # stored before the change (duplicates across the two specs), and a new hour.
    second = [trade(T0 + i * MIN_NS + 7, seq=900 + i, source="polygon") for i in range(4)]
    redelivered = [{**r, "ts_recv_ns": r["ts_recv_ns"] + 5} for r in first[:6]]
    later = [trade(T0 + 2 * HOUR_NS + i, seq=2000 + i, sym="QQQ") for i in range(3)]
    append(lake.load_table(BRONZE), second + redelivered + later)

    res = _cli(lake, "compact", "--incremental", "-o", "json")
    assert res.exit_code == 0, res.output
    by_table = {r["table"]: r for r in json.loads(res.stdout)}
    assert all(r["status"] != "error" for r in by_table.values()), by_table
    got = by_table[SILVER]
    assert got["status"] == "success"
    touched = {("SPY", 0), ("QQQ", 0), ("QQQ", 2)}  # (symbol, hour after 14:00)
    everything = first + second + redelivered + later
    read = [r for r in everything if (r["symbol"], (r["ts_event_ns"] - T0) // HOUR_NS) in touched]
    assert got["rows_read"] == len(read), "only the touched Silver partitions are read"
    assert sorted(got["replaced_partitions"]) == [
        ["QQQ", "2025-12-16T14"],  # the redelivered rows are SPY and QQQ of hour 14
        ["QQQ", "2025-12-16T16"],
        ["SPY", "2025-12-16T14"],
    ]
    assert silver_rows(lake) == expected(everything)
    silver = lake.load_table(SILVER)
    assert [str(f.transform) for f in silver.spec().fields] == ["identity", "hour"]
    assert {t.file.spec_id for t in silver.scan().plan_files()} == {silver.spec().spec_id}

    # Change detection across the two Bronze specs: nothing new, nothing committed.
    history = [s.snapshot_id for s in silver.snapshots()]
    with SilverCompactor(lake) as compactor:
        assert compactor.compact_incremental([TRADES])[0].status == "unchanged"
        again = compactor.compact_date(DAY, TRADES)  # full planning path
        assert again.status == "unchanged" and again.partitions_unchanged == 5
    assert [s.snapshot_id for s in lake.load_table(SILVER).snapshots()] == history


def test_bronze_only_widening_is_followed_by_silver(lake: LakeCatalog) -> None:
    """docs/ingest.md's use case: sizes above 2^31 after `--widen size:long` on Bronze only."""
    rows = [trade(T0 + i, seq=i) for i in range(5)]
    append(lake.load_table(BRONZE), rows)
    with SilverCompactor(lake) as compactor:
        compactor.compact_incremental([TRADES])
    evolve_table(lake.load_table(BRONZE), BRONZE, [WidenColumn("size", "long")])
    assert lake.load_table(SILVER).schema().find_field("size").field_type == IntegerType()
    version = int(lake.load_table(SILVER).properties[SCHEMA_VERSION_PROPERTY])
    big = trade(T0 + 10, seq=10, size=3_000_000_000)
    append(lake.load_table(BRONZE), [big])

    res = _cli(lake, "compact", "--incremental", "--table", TRADES, "-o", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["status"] == "success"
    silver = lake.load_table(SILVER)
    assert silver.schema().find_field("size").field_type == LongType()
    assert silver.properties[SCHEMA_VERSION_PROPERTY] == str(version + 1)
    assert silver_rows(lake) == expected([*rows, big])
    with SilverCompactor(lake) as compactor:
        assert compactor.compact_incremental([TRADES])[0].status == "unchanged"


def test_a_failing_table_does_not_stop_the_others(lake: LakeCatalog) -> None:
    """One broken table: every other table is compacted, one line per failure, exit 1."""
    futures = [trade(T0 + i, seq=i, sym="ES") for i in range(4)]
    futures = [{k: v for k, v in r.items() if k != "exchange"} for r in futures]
    append(lake.load_table("bronze.futures_trades"), futures)
    stocks = [trade(T0 + i, seq=i) for i in range(4)]
    append(lake.load_table(BRONZE), stocks)
    # Another engine gave Silver a layout its compaction cannot write: the first table fails.
    with lake.load_table("silver.futures_trades").update_spec() as spec:
        spec.add_identity("source")

    res = _cli(lake, "compact", "--incremental", "-o", "json")
    assert res.exit_code == 1
    rows = {r["table"]: r for r in json.loads(res.stdout)}
    assert rows["silver.futures_trades"]["status"] == "error"
    assert (
        "partitioned as [identity(symbol), hour(ts_event), identity(source)]"
        in (rows["silver.futures_trades"]["error"])
    )
    assert rows[SILVER]["status"] == "success", "the table after the failing one is compacted"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: silver.futures_trades is partitioned")
    assert errors[0].count("silver.futures_trades") == 1, "the table is named once"
    assert "Traceback" not in res.output
    assert silver_rows(lake) == expected(stocks)

    # The Python API's several-table entry points say the same, without raising.
    append(lake.load_table(BRONZE), [trade(T0 + 50, seq=50)])
    with SilverCompactor(lake) as compactor:
        merged = compactor.compact_date(DAY)
    assert merged.status == "error" and merged["error"].startswith("1 of 6 tables failed")
    statuses = {r.table: r.status for r in merged.tables}
    assert statuses["silver.futures_trades"] == "error" and statuses[SILVER] == "success"
    assert "error" not in dict(next(r for r in merged.tables if r.table == SILVER))


def test_silver_partition_fields_are_refused(lake: LakeCatalog) -> None:
    res = _cli(lake, "table", "evolve", SILVER, "--add-partition-field", "source:identity")
    assert res.exit_code == 1
    assert "partition the Bronze table instead" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert len(lake.load_table(SILVER).spec().fields) == 2


def test_bronze_only_rename_is_followed_by_field_id(lake: LakeCatalog) -> None:
    """A rename is metadata only: Silver's column of the old name is fed from the renamed Bronze
    column (old and new files alike), a dedup key included; renaming Silver too keeps it fed."""
    rows = [trade(T0 + i, seq=i, conditions=f"c{i}") for i in range(3)]
    append(lake.load_table(BRONZE), rows)
    res = _cli(lake, "table", "evolve", BRONZE, "--rename", "conditions:cond", "--force")
    assert res.exit_code == 0, res.output
    append(lake.load_table(BRONZE), [{**trade(T0 + 5, seq=5), "cond": "c5"}])

    res = _cli(lake, "compact", "--incremental", "--table", TRADES)
    assert res.exit_code == 0, res.output
    got = lake.load_table(SILVER).scan().to_arrow()
    assert sorted(got.column("conditions").to_pylist()) == ["c0", "c1", "c2", "c5"]

    fix = f"lake table evolve {SILVER} --rename conditions:cond --force"
    assert _cli(lake, *fix.split()[1:]).exit_code == 0
    append(lake.load_table(BRONZE), [{**trade(T0 + 6, seq=6), "cond": "c6"}])
    res = _cli(lake, "compact", "--incremental", "--table", TRADES)
    assert res.exit_code == 0, res.output
    got = lake.load_table(SILVER).scan().to_arrow()
    assert sorted(got.column("cond").to_pylist()) == ["c0", "c1", "c2", "c5", "c6"]

    # A dedup column: Silver keeps the declared name and every event keeps its value.
    assert _cli(lake, "table", "evolve", BRONZE, "--rename", "seq:sequence").exit_code == 1
    res = _cli(lake, "table", "evolve", BRONZE, "--rename", "seq:sequence", "--force")
    assert res.exit_code == 0, res.output
    append(lake.load_table(BRONZE), [{**trade(T0 + 9, seq=9), "sequence": 9}])
    res = _cli(lake, "compact", "--incremental")
    assert res.exit_code == 0, res.output
    got = lake.load_table(SILVER).scan().to_arrow()
    assert sorted(got.column("seq").to_pylist()) == [0, 1, 2, 5, 6, 9]


def test_a_column_dropped_in_bronze_is_named_when_silver_compaction_nulls_it(
    lake: LakeCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    """evolve14: after `--drop-column --force` on Bronze, the next compaction wrote Silver's
    column of that name as NULL over the whole day without a word. It still does (Silver's
    column has no source), but says so."""
    append(lake.load_table(BRONZE), [trade(T0 + i, seq=i, conditions=f"c{i}") for i in range(3)])
    assert _cli(lake, "compact", "--incremental", "--table", TRADES).exit_code == 0
    res = _cli(lake, "table", "evolve", BRONZE, "--drop-column", "conditions", "--force")
    assert res.exit_code == 0, res.output
    append(lake.load_table(BRONZE), [trade(T0 + 5, seq=5)])

    with caplog.at_level("WARNING"), SilverCompactor(lake) as compactor:
        result = compactor.compact_date(DAY, TRADES)

    assert result.status == "success", result
    assert lake.load_table(SILVER).scan().to_arrow().column("conditions").null_count == 4
    warned = [r.getMessage() for r in caplog.records if "no longer has column" in r.getMessage()]
    assert warned and "'conditions'" in warned[0] and BRONZE in warned[0]


def test_a_column_added_under_a_renamed_keys_old_name_is_refused_not_used(
    lake: LakeCatalog,
) -> None:
    """`lake table evolve` refuses adding `seq` after `seq` was renamed `vendor_seq`; another
    engine does not. Silver's key `seq` was then fed by the new, mostly NULL column: three
    fills of one sweep (same time, price and size) merged into one row, `success`, no word
    (silver18). Compaction refuses instead, and follows the columns again once the names agree."""
    fills = [trade(T0, seq=s) for s in (11, 12, 13)]
    append(lake.load_table(BRONZE), fills)
    res = _cli(lake, "table", "evolve", BRONZE, "--rename", "seq:vendor_seq", "--force")
    assert res.exit_code == 0, res.output
    bronze = lake.load_table(BRONZE)
    with bronze.update_schema() as update:  # as Spark's ALTER TABLE … ADD COLUMN seq would
        update.add_column("seq", LongType())
    bronze = lake.load_table(BRONZE)
    late = {**trade(T0 + 5, seq=2), "vendor_seq": 14}
    append(bronze, [late])

    res = _cli(lake, "compact", "--date", DAY.isoformat(), "--table", TRADES)
    assert res.exit_code == 1
    assert "which its column 'vendor_seq' carried first" in res.output
    assert "Traceback" not in res.output
    assert lake.load_table(SILVER).current_snapshot() is None

    # The way out: the newer column out of the way, the old one renamed back.
    with bronze.update_schema() as update:
        update.delete_column("seq")
    with lake.load_table(BRONZE).update_schema() as update:
        update.rename_column("vendor_seq", "seq")
    res = _cli(lake, "compact", "--date", DAY.isoformat(), "--table", TRADES)
    assert res.exit_code == 0, res.output
    got = lake.load_table(SILVER).scan().to_arrow()
    assert sorted(got.column("seq").to_pylist()) == [11, 12, 13, 14]


@pytest.mark.parametrize("table", [BRONZE, SILVER])
@pytest.mark.parametrize("column", ["symbol", "ts_event"])
def test_renaming_one_tables_partition_source_is_refused_even_with_force(
    lake: LakeCatalog, table: str, column: str
) -> None:
    """A Bronze-only rename of `symbol` (accepted with --force) stopped every compaction of the
    table, with a message claiming Bronze's spec lacked identity(symbol) (silver18)."""
    before = lake.load_table(table).schema().schema_id
    res = _cli(lake, "table", "evolve", table, "--rename", f"{column}:renamed", "--force")
    assert res.exit_code == 1
    assert f"cannot rename '{column}' in this table alone" in res.output
    assert "`lake migrate`" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert lake.load_table(table).schema().schema_id == before
    append(lake.load_table(BRONZE), [trade(T0, seq=1)])
    assert _cli(lake, "compact", "--incremental", "--table", TRADES).exit_code == 0


def test_a_second_time_partition_of_one_column_is_refused_and_writes_go_on(
    lake: LakeCatalog,
) -> None:
    """`--add-partition-field ts_event:day` on an hour-partitioned table was accepted (dry run
    too); every later commit then failed with "Cannot have redundant partitions", and no
    `lake` command removes a partition field (history18)."""
    for args in (["--dry-run"], []):
        res = _cli(lake, "table", "evolve", BRONZE, "--add-partition-field", "ts_event:day", *args)
        assert res.exit_code == 1
        assert "partitioned by hour(ts_event) already" in res.output
        assert "Traceback" not in res.output
    assert len(lake.load_table(BRONZE).spec().fields) == 2
    append(lake.load_table(BRONZE), [trade(T0, seq=1)])
    res = _cli(lake, "table", "evolve", BRONZE, "--add-partition-field", "source:identity")
    assert res.exit_code == 0, res.output  # another column: allowed as before


def test_a_rename_back_and_other_partition_columns_are_not_refused(lake: LakeCatalog) -> None:
    """Only the columns Silver pairs partitions by are refused (review18: renaming back a
    `symbol` another engine renamed, and a column of an added partition field, were refused)."""
    bronze = lake.load_table(BRONZE)
    with bronze.update_schema() as update:  # another engine's rename
        update.rename_column("symbol", "sym")
    res = _cli(lake, "table", "evolve", BRONZE, "--rename", "sym:symbol", "--force")
    assert res.exit_code == 0, res.output
    res = _cli(lake, "table", "evolve", BRONZE, "--add-partition-field", "exchange:identity")
    assert res.exit_code == 0, res.output
    res = _cli(lake, "table", "evolve", BRONZE, "--rename", "exchange:venue", "--force")
    assert res.exit_code == 0, res.output
    append(lake.load_table(BRONZE), [trade(T0, seq=1, venue=1)])
    assert _cli(lake, "compact", "--incremental", "--table", TRADES).exit_code == 0
    assert lake.load_table(SILVER).scan().to_arrow().num_rows == 1
