"""Guard test of `engine.iceberg.default_table_location` and the metadata listing (budget ~2 s).

`default_table_location` calls pyiceberg's private `_resolve_table_location`: the location it
gives must be the one a created table gets, and `metadata_files_at` / `read_metadata_file` must
find and read that table's metadata without loading the table (the catalog may have lost it).
"""

from __future__ import annotations

from pathlib import Path

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import (
    default_table_location,
    metadata_files_at,
    read_metadata_file,
)


def test_the_default_location_is_the_created_tables_and_its_metadata_is_listed(
    tmp_path: Path,
) -> None:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    location = default_table_location(lake.catalog, "bronze.stocks_trades")
    assert metadata_files_at(lake.catalog, location) == []
    lake.create_table(lake.definition("bronze.stocks_trades"))
    table = lake.load_table("bronze.stocks_trades")
    assert location == table.location()
    listed = [uri for uri, _, _ in metadata_files_at(lake.catalog, location)]
    assert listed == [table.metadata_location]
    assert read_metadata_file(lake.catalog, listed[0]).table_uuid == table.metadata.table_uuid
