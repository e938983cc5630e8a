"""Several lakes in one catalog database (`LAKE_CATALOG_NAME` tells them apart, as the docs
allow) must not share a warehouse: their tables would share directories and one lake's
`remove-orphans` deleted the other's data files (found by the production chaos audit). `lake init`
refuses to create tables where another catalog keeps tables, and `remove-orphans` refuses to
clean a location that holds another catalog's tables. Budget: ~3 s.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from timetravel_data import T14, append, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import ConfigError, OrphanedTableError
from iceberg_lake.ops.maintenance import remove_orphans

TRADES = "bronze.stocks_trades"


def _settings(tmp_path: Path, name: str, warehouse: Path | None = None) -> Settings:
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": name}
    if warehouse is not None:
        env["LAKE_WAREHOUSE"] = warehouse.as_uri()
    return load_settings(env)


def test_a_second_catalog_on_the_same_warehouse_is_refused_and_cannot_delete_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = LakeCatalog(_settings(tmp_path, "desk_a"))
    first.init()
    append(first.load_table(TRADES), trades("SPY", T14, 20, 10**6))

    second = LakeCatalog(_settings(tmp_path, "desk_b"))
    with pytest.raises(ConfigError, match="catalog 'desk_a' in the same catalog database"):
        second.init()
    assert second.existing_tables() == []
    monkeypatch.setenv("LAKE_DATA_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("LAKE_CATALOG_NAME", "desk_b")
    res = CliRunner().invoke(app, ["init"])
    assert res.exit_code != 0 and "give each LAKE_CATALOG_NAME its own LAKE_WAREHOUSE" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1

    # Nor one table of it: the location holds desk_a's table (ops19's check).
    second.ensure_namespaces()
    with pytest.raises(OrphanedTableError, match="is not in the catalog, but its location"):
        second.create_table(second.definition(TRADES))
    # A lake that got there before these checks (its tables created at the first lake's
    # locations, here through pyiceberg itself) cannot run remove-orphans over them.
    definition = second.definition(TRADES)
    schema = definition.iceberg_schema()
    second.catalog.create_table(
        TRADES, schema=schema, partition_spec=definition.partition_spec(schema)
    )
    with pytest.raises(ConfigError, match="remove-orphans: .* holds table bronze.stocks_trades"):
        remove_orphans(second, [TRADES], older_than=timedelta(0), force=True)
    assert first.load_table(TRADES).scan().to_arrow().num_rows == 20

    # Its own warehouse in the same database is fine.
    third = LakeCatalog(_settings(tmp_path, "desk_c", tmp_path / "warehouse_c"))
    assert TRADES in third.init()
    assert remove_orphans(third, [TRADES], older_than=timedelta(0), force=True)[0].table == TRADES
