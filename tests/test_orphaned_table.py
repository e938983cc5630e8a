"""A table missing from a restored catalog is registered back, never created anew over its data
(ops19: `lake init` created an empty table over the live table's location, exit 0; the writers
re-read only what the stream still held and `remove-orphans` deleted the rest: 2,732 of 3,937
Bronze rows lost).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.commit import ledger_key
from tests.load_data import polygon_trades, write_csv_gz

pytestmark = pytest.mark.integration
runner = CliRunner()
TABLE = "bronze.stocks_trades"


def _drop_row(data: Path, table: str) -> None:
    """What a catalog restored from a backup without the table holds: no row for it."""
    namespace, name = table.split(".")
    with sqlite3.connect(data / "catalog.db") as db:
        db.execute(
            "DELETE FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
            (namespace, name),
        )


def test_init_refuses_a_missing_table_whose_location_holds_metadata_and_register_brings_it_back(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {"LAKE_DATA_DIR": str(data)}
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    lake = LakeCatalog(load_settings(env))
    path = write_csv_gz(tmp_path / "day.csv.gz", polygon_trades(500))
    load_file(lake, path, LoadOptions(table=TABLE))
    before = lake.load_table(TABLE)
    ledger = {k: v for k, v in before.properties.items() if k.startswith("lake.load.")}
    assert ledger and before.scan().count() == 500
    _drop_row(data, TABLE)

    for command in (["init"], ["table", "create", TABLE]):
        refused = runner.invoke(app, command, env=env)
        assert refused.exit_code == 1, refused.output
        line = refused.output.strip()
        assert line.startswith(f"error: {TABLE} is not in the catalog, but its location")
        assert f"lake table register {TABLE} " in line and "Traceback" not in refused.output
        assert TABLE not in LakeCatalog(load_settings(env)).existing_tables()
    newest = line.split(f"lake table register {TABLE} ")[1].split(" ")[0]
    assert newest == before.metadata_location

    # Another table's metadata file is not this table's.
    other = lake.load_table("bronze.stocks_quotes").metadata_location
    wrong = runner.invoke(app, ["table", "register", TABLE, other], env=env)
    assert wrong.exit_code == 1 and "is not a metadata file of" in wrong.output

    back = runner.invoke(app, ["-o", "json", "table", "register", TABLE, newest], env=env)
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)[0]["current_snapshot"] == before.current_snapshot().snapshot_id
    table = LakeCatalog(load_settings(env)).load_table(TABLE)
    assert table.scan().count() == 500
    assert {k: v for k, v in table.properties.items() if k.startswith("lake.load.")} == ledger
    # The ledger came back with it: the file is loaded already, nothing stored twice.
    assert load_file(lake, path, LoadOptions(table=TABLE)).status == "already-loaded"
    assert ledger_key(next(iter(ledger)).removeprefix("lake.load.")) in table.properties
    again = runner.invoke(app, ["init"], env=env)
    assert again.exit_code == 0 and "nothing to create" in again.output


def test_a_missing_table_with_an_empty_location_is_created(tmp_path: Path) -> None:
    """A table never created (no metadata at its location) is created as before."""
    data = tmp_path / "data"
    env = {"LAKE_DATA_DIR": str(data)}
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    location = LakeCatalog(load_settings(env)).load_table(TABLE).location()
    _drop_row(data, TABLE)
    for f in sorted(Path(location.removeprefix("file://")).rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    created = runner.invoke(app, ["init"], env=env)
    assert created.exit_code == 0 and f"created {TABLE}" in created.output


def test_a_table_whose_row_arrives_while_init_looks_is_not_refused(tmp_path: Path) -> None:
    """review19b: two `lake init` (an active and a standby `lake serve`) starting on a new lake:
    pyiceberg writes a table's first metadata file, then its catalog row, and the other process
    saw the file without the row and refused ("restored without it?"). The row that arrives
    within a few seconds makes it a table being created, not an orphan."""
    data = tmp_path / "data"
    env = {"LAKE_DATA_DIR": str(data)}
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    lake = LakeCatalog(load_settings(env))
    metadata = lake.load_table(TABLE).metadata_location
    _drop_row(data, TABLE)
    other = LakeCatalog(load_settings(env))
    creator = threading.Timer(0.5, lambda: other.catalog.register_table(TABLE, metadata))
    creator.start()
    try:
        assert lake.create_table(lake.definition(TABLE)) is False  # it exists by then
    finally:
        creator.join()
    assert lake.load_table(TABLE).metadata_location == metadata
    # A plain path of a local warehouse is taken as its file:// URI.
    _drop_row(data, TABLE)
    back = runner.invoke(
        app, ["table", "register", TABLE, metadata.removeprefix("file://")], env=env
    )
    assert back.exit_code == 0, back.output
