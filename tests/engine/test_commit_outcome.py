"""A commit whose outcome is unknown keeps the files written for it (found by the production
chaos audit: a lost reply to the catalog database's COMMIT made the lake delete the data files
of a snapshot that had landed, and every read of the table then failed).

The fault is a real one injected at the catalog boundary: the SQL catalog's own `commit_table`
runs to the end (the catalog row is updated and committed), then the reply is "lost" as
SQLAlchemy reports it. A refused commit (a lost compare-and-swap) still deletes its files.
Budget: ~5 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table
from sqlalchemy.exc import OperationalError
from timetravel_data import T14, to_arrow, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.iceberg import COMMIT_REFUSED, watermarked_append
from iceberg_lake.exceptions import LakeError
from iceberg_lake.silver.compactor import SilverCompactor

TRADES = "bronze.stocks_trades"
DAY = "2025-12-16"


@pytest.fixture
def lost_reply(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Arm with `armed.append("ns.table")`: that table's next catalog commit lands, then its
    reply is lost."""
    armed: list[str] = []
    commit = SqlCatalog.commit_table

    def commit_then_lose_reply(self: Any, table: Any, requirements: Any, updates: Any) -> Any:
        response = commit(self, table, requirements, updates)
        if ".".join(table.name()) in armed:
            armed.clear()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return response

    monkeypatch.setattr(SqlCatalog, "commit_table", commit_then_lose_reply)
    yield armed


def _data_files(table: Table) -> set[str]:
    root = Path(table.location().removeprefix("file://")) / "data"
    return {str(p) for p in root.rglob("*.parquet")}


def _referenced(table: Table) -> list[str]:
    return [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]


def test_a_lost_reply_after_an_append_landed_keeps_its_files(
    lake: LakeCatalog, lost_reply: list[str]
) -> None:
    table = lake.load_table(TRADES)
    rows = to_arrow(table, trades("SPY", T14, 50, 10**6))
    lost_reply.append(TRADES)
    with pytest.raises(OperationalError):
        with watermarked_append(table, watermark={"lake.watermark.x": "50"}) as app:
            app.append(rows)
    landed = lake.load_table(TRADES)
    assert landed.properties["lake.watermark.x"] == "50", "the commit landed"
    files = _referenced(landed)
    assert files and all(Path(f).exists() for f in files)
    assert landed.scan().to_arrow().num_rows == 50


def test_a_refused_append_still_deletes_its_files(lake: LakeCatalog) -> None:
    table = lake.load_table(TRADES)
    rows = to_arrow(table, trades("SPY", T14, 50, 10**6))
    with pytest.raises(COMMIT_REFUSED):
        with watermarked_append(
            table, watermark={"lake.watermark.x": "50"}, expected={"lake.watermark.x": "7"}
        ) as app:
            app.append(rows)
    assert _data_files(lake.load_table(TRADES)) == set()


def test_a_lost_reply_after_a_silver_commit_landed_keeps_silver_readable(
    lake: LakeCatalog, lost_reply: list[str]
) -> None:
    bronze = lake.load_table(TRADES)
    bronze.append(to_arrow(bronze, trades("SPY", T14, 40, 10**6) + trades("QQQ", T14, 30, 10**6)))
    lost_reply.append("silver.stocks_trades")
    with pytest.raises((OperationalError, LakeError)), SilverCompactor(lake) as compactor:
        compactor.compact_date(DAY, schema=TRADES)
    silver = lake.load_table("silver.stocks_trades")
    assert silver.current_snapshot() is not None, "the Silver commit landed"
    files = _referenced(silver)
    assert len(files) == 2 and all(Path(f).exists() for f in files)
    assert silver.scan().to_arrow().num_rows == 70
    with SilverCompactor(lake) as compactor:
        again = compactor.compact_date(DAY, schema=TRADES)
    assert again["status"] == "unchanged", again
