"""Guard: `engine.iceberg.read_only_table` reads like the table and refuses, before writing any
data file, every way pyiceberg commits (a pyiceberg upgrade that commits outside
`transaction()` or the catalog's `commit_table` fails here)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.types import StringType

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import CommitRefusedError, read_only_table, watermarked_append


def test_a_read_only_table_reads_and_refuses_every_commit(tmp_path: Path) -> None:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")}))
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    view = read_only_table(table, "dry run")
    assert view.schema() == table.schema() and view.properties == table.properties
    assert view.scan().to_arrow().num_rows == 0
    empty = pa.Table.from_pylist([], schema=view.scan().to_arrow().schema)
    files_before = sorted(p for p in (tmp_path / "lake").rglob("*") if p.is_file())
    one = pa.Table.from_pylist(
        [
            {
                "ts_event_ns": 1_765_000_000_000_000_000,
                "ts_recv_ns": 1_765_000_000_000_000_000,
                "source": "t",
                "symbol": "SPY",
                "price": 1.0,
                "size": 1,
                "ts_event": 1_765_000_000_000_000,
            }
        ],
        schema=empty.schema,
    )

    def lakes_own_append() -> None:
        with watermarked_append(view, watermark={}) as append:
            append.append(one)

    attempts = [
        lakes_own_append,
        lambda: view.append(one),
        lambda: view.append(empty),
        lambda: view.overwrite(empty),
        lambda: view.transaction(),
        lambda: view.update_schema().add_column("x", StringType()).commit(),
        lambda: view.update_spec().add_identity("source").commit(),
    ]
    for attempt in attempts:
        with pytest.raises(CommitRefusedError, match="dry run"):
            attempt()
    assert sorted(p for p in (tmp_path / "lake").rglob("*") if p.is_file()) == files_before
    assert catalog.load_table("bronze.stocks_trades").metadata_location == table.metadata_location
