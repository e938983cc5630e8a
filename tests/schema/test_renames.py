"""Renaming a column of a live table loses nothing: Silver follows a Bronze rename by field id,
refuses (one line) when a dedup key has no source, and `lake query` shows the new name at once.

Real SQLite catalog and file warehouse; Silver's content is read back with pyarrow from the data
files pyiceberg lists (not through the lake's code). Budget: ~6 s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.ops.check import check_tables
from iceberg_lake.schema.evolve import DropColumn, RenameColumn, evolve_table
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.timetravel.query import Lake

pytestmark = pytest.mark.integration

BRONZE, SILVER = "bronze.futures_trades", "silver.futures_trades"
T0 = int(datetime(2025, 12, 16, 14, tzinfo=UTC).timestamp()) * 10**9
DAY = date(2025, 12, 16)


def pairs(start: int, count: int, seq_name: str = "seq") -> list[dict[str, Any]]:
    """`count` pairs of distinct trades that differ only in their sequence number."""
    rows = []
    for i in range(start, start + count):
        for k in (0, 1):
            ts = T0 + i * 10**6
            rows.append(
                {
                    "ts_event_ns": ts,
                    "ts_recv_ns": ts + 1000,
                    "source": "feed",
                    "symbol": "ES",
                    "price": 6000.25,
                    "size": 1,
                    "aggressor": 1,
                    "exchange": "CME",
                    seq_name: 2 * i + k,
                    "ts_event": ts // 1000,
                }
            )
    return rows


def append(table: Table, rows: list[dict[str, Any]]) -> None:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    table.append(pa.Table.from_pylist(rows, schema=schema))


def silver_column(table: Table, name: str) -> list[Any]:
    """Column `name` of the current snapshot, read with pyarrow from the listed data files."""
    values: list[Any] = []
    for task in table.scan().plan_files():
        values += pq.read_table(task.file.file_path.removeprefix("file://"), columns=[name])[
            name
        ].to_pylist()
    return values


def test_a_bronze_rename_of_a_dedup_key_feeds_silver_by_field_id(lake: LakeCatalog) -> None:
    bronze = lake.load_table(BRONZE)
    append(bronze, pairs(0, 50))  # written as `seq`
    evolve_table(lake.load_table(BRONZE), BRONZE, [RenameColumn("seq", "sequence")])
    bronze = lake.load_table(BRONZE)
    append(bronze, pairs(50, 50, seq_name="sequence"))  # written as `sequence`

    with SilverCompactor(lake) as compactor:
        result = compactor.compact_date(DAY, "futures.trades")
    assert result["status"] == "success", result
    seqs = silver_column(lake.load_table(SILVER), "seq")
    # 200 distinct trades: none merged with its twin, none with a NULL key.
    assert sorted(seqs) == list(range(200))


def test_a_new_column_under_a_renamed_columns_old_name_is_refused(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `seq` → `sequence`, adding a new `seq` made the declared dedup key `seq` resolve
    to the new, all-null column: Silver merged distinct events (found by the Spark/evolution
    audit, both engines). The add is refused in one line; the rename back still works."""
    from iceberg_lake.exceptions import SchemaChangeError
    from iceberg_lake.schema.evolve import AddColumn

    append(lake.load_table(BRONZE), pairs(0, 25))
    evolve_table(lake.load_table(BRONZE), BRONZE, [RenameColumn("seq", "sequence")])
    with pytest.raises(SchemaChangeError, match="column 'sequence' was called 'seq' before"):
        evolve_table(lake.load_table(BRONZE), BRONZE, [AddColumn("seq", "long")])
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    cli = CliRunner().invoke(app, ["table", "evolve", BRONZE, "--add-column", "seq:long"])
    assert cli.exit_code != 0 and "Traceback" not in cli.output
    assert "cannot add column 'seq'" in cli.output, cli.output
    evolve_table(lake.load_table(BRONZE), BRONZE, [RenameColumn("sequence", "seq")])
    with SilverCompactor(lake) as compactor:
        assert compactor.compact_date(DAY, "futures.trades")["status"] == "success"
    assert sorted(silver_column(lake.load_table(SILVER), "seq")) == list(range(50))


def test_a_silver_only_rename_of_a_dedup_key_is_fed_from_bronze(lake: LakeCatalog) -> None:
    append(lake.load_table(BRONZE), pairs(0, 20))
    evolve_table(lake.load_table(SILVER), SILVER, [RenameColumn("seq", "sequence")])
    with SilverCompactor(lake) as compactor:
        assert compactor.compact_date(DAY, "futures.trades")["status"] == "success"
    assert sorted(silver_column(lake.load_table(SILVER), "sequence")) == list(range(40))


def test_a_dedup_key_missing_from_bronze_fails_compaction_in_one_line(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(lake.load_table(BRONZE), pairs(0, 20))
    evolve_table(lake.load_table(BRONZE), BRONZE, [DropColumn("seq")])
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    res = CliRunner().invoke(app, ["compact", "--date", "2025-12-16", "-t", "futures_trades"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "'seq' (a dedup key)" in lines[0] and BRONZE in lines[0]
    assert lake.load_table(SILVER).current_snapshot() is None  # nothing half-written


def test_query_shows_the_current_snapshot_under_the_new_name_at_once(lake: LakeCatalog) -> None:
    bronze = lake.load_table(BRONZE)
    append(bronze, pairs(0, 5))
    before = bronze.current_snapshot()
    assert before is not None
    evolve_table(lake.load_table(BRONZE), BRONZE, [RenameColumn("exchange", "venue")])
    lake_q = Lake(lake)
    got = lake_q.query(f"SELECT count(venue) AS n, min(venue) AS v FROM {BRONZE}").to_pylist()
    assert got == [{"n": 10, "v": "CME"}]  # no new snapshot was needed
    # Time travel to a snapshot older than the current one: the shape it was written with.
    append(lake.load_table(BRONZE), [{**r, "venue": r.pop("exchange")} for r in pairs(5, 1)])
    got = lake_q.query(
        f"SELECT count(exchange) AS n FROM {BRONZE}", as_of=before.snapshot_id
    ).to_pylist()
    assert got == [{"n": 10}]
    got = lake_q.query(f"SELECT count(venue) AS n FROM {BRONZE}").to_pylist()
    assert got == [{"n": 12}]


def test_check_counts_duplicates_under_a_renamed_dedup_key(lake: LakeCatalog) -> None:
    rows = pairs(0, 10)
    append(lake.load_table(BRONZE), rows + rows[:3])  # 3 events stored twice
    evolve_table(lake.load_table(BRONZE), BRONZE, [RenameColumn("seq", "sequence")])
    report = check_tables(Lake(lake), [BRONZE])
    assert report.count(BRONZE, "duplicates") == 3
