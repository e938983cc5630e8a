"""`lake load` on the production layout: PostgreSQL catalog, S3 warehouse (SeaweedFS), two files
loaded in parallel processes committing to the same tables (budget: ~15 s plus the shared
servers' start-up)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.load import LoadOptions, load_files
from tests.load_data import polygon_trades, write_csv_gz

pytestmark = pytest.mark.integration


def test_parallel_loads_on_postgres_and_s3_store_every_row_once(
    tmp_path: Path, s3_server, postgres_server
) -> None:
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            "LAKE_CATALOG_URI": postgres_server.uri,
            "LAKE_CATALOG_NAME": f"c{uuid.uuid4().hex[:8]}",
            **s3_server.lake_env(f"s3://load-{uuid.uuid4().hex[:8]}/warehouse"),
        }
    )
    lake = LakeCatalog(settings)
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for table in ("bronze.stocks_trades", "bronze.dead_letters"):
        lake.create_table(lake.definition(table))
    first = polygon_trades(4000, symbols=("AAPL", "MSFT"))
    first["price"][7] = "-2"
    second = polygon_trades(3000, symbols=("NVDA",))
    paths = [
        write_csv_gz(tmp_path / "day1.csv.gz", first),
        write_csv_gz(tmp_path / "day2.csv.gz", second),
    ]
    options = LoadOptions(commit_rows=1000)

    results = load_files(settings, paths, options, jobs=2)

    assert [(r.rows_stored, r.dead_lettered) for r in results] == [(3999, 1), (3000, 0)]
    assert sum(len(r.snapshots) for r in results) == 7  # 4 + 3 commits, none lost to conflicts
    table = LakeCatalog(settings).load_table("bronze.stocks_trades")
    rows = table.scan(selected_fields=("symbol", "seq")).to_arrow()
    assert rows.num_rows == 6999
    assert len(set(zip(rows["symbol"].to_pylist(), rows["seq"].to_pylist(), strict=True))) == 6999
    dead = LakeCatalog(settings).load_table("bronze.dead_letters").scan().to_arrow()
    assert dead["stream_seq"].to_pylist() == [7]

    again = load_files(settings, paths, options, jobs=2)
    assert [r.status for r in again] == ["already-loaded", "already-loaded"]
    assert LakeCatalog(settings).load_table("bronze.stocks_trades").scan().count() == 6999
