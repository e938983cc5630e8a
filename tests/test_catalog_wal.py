"""The embedded SQLite catalog is in WAL journal mode: a reader never blocks the lake's commits.

A Spark or Trino JVM holding an open read transaction on the catalog (tests/test_spark.py runs
the real one) is simulated here with a second SQLite connection that keeps a read open.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from timetravel_data import T14, append, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings

TRADES = "bronze.stocks_trades"


def test_sqlite_catalog_is_in_wal_mode_and_a_held_read_does_not_block_commits(
    tmp_path: Path,
) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    db = settings.data_dir / "catalog.db"
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        # What a JDBC connection with an unclosed result set does: a read transaction left open.
        reader.execute("BEGIN")
        held = reader.execute("SELECT metadata_location FROM iceberg_tables").fetchall()
        table = catalog.load_table(TRADES)
        for i in range(3):
            append(table, trades("SPY", T14, 5, 10**9, seq0=i * 10))
        assert len(LakeCatalog(settings).load_table(TRADES).scan().to_arrow()) == 15
        # The held read still sees the catalog as of its start (why the engine settings also
        # turn off Iceberg's catalog-table check, which leaves such a read open).
        assert reader.execute("SELECT metadata_location FROM iceberg_tables").fetchall() == held
        reader.execute("COMMIT")
        fresh = reader.execute("SELECT metadata_location FROM iceberg_tables").fetchall()
        assert fresh != held
    finally:
        reader.close()


def test_opening_the_catalog_again_keeps_wal(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    again = LakeCatalog(settings)
    with again.catalog.engine.connect() as con:
        assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
