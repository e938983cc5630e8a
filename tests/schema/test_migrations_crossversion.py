"""Every component across a migration: writers, Silver compaction and readers.

An old-shape lake (trades tables without `conditions`) receives events that carry `conditions`
through a real nats-server: the writer keeps the field out of the row and counts it. Migration
0001 is applied; after the writer restarts it fills the new column when a message carries it and
writes null when not. Silver carries the column through, and a reader pinned to a snapshot from
before the migration (pyiceberg and DuckDB) sees the old shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import date
from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.ops import metrics
from iceberg_lake.properties import WATERMARK_PREFIX
from iceberg_lake.schema.migrations import MigrationRunner
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.tables import TableRegistry, registry
from iceberg_lake.testing import run_nats_server

pytestmark = pytest.mark.integration

BRONZE = "bronze.stocks_trades"
SILVER = "silver.stocks_trades"
BASE_NS = 1_765_900_000 * 1_000_000_000  # 2025-12-16 15:46 UTC
DAY = date(2025, 12, 16)


def _event(i: int, conditions: str | None) -> dict:
    ts = BASE_NS + i * 1_000_000_000
    event = {"ts_event_ns": ts, "ts_recv_ns": ts + 1000, "source": "xver", "symbol": "SPY",
             "price": 500.0 + i, "size": 10 + i, "exchange": 4, "seq": i}  # fmt: skip
    if conditions is not None:
        event["conditions"] = conditions
    return event


async def _publish(settings: Settings, events: list[dict]) -> None:
    nc = await bus.connect(settings, name="xver-test")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        for e in events:
            await js.publish("market.stocks.trades", json.dumps(e).encode())
    finally:
        await nc.close()


def _serve_until_idle(settings: Settings) -> None:
    service = LakeService(settings, [BRONZE])
    asyncio.run(asyncio.wait_for(service.run(stop_when_idle=True, idle_seconds=0.3), 120))


def _unknown_count() -> float:
    return metrics.UNKNOWN_FIELDS.labels(BRONZE, "conditions")._value.get()


def test_writer_silver_and_readers_across_the_conditions_migration(
    tmp_path: Path, duck, caplog: pytest.LogCaptureFixture
) -> None:
    with run_nats_server(tmp_path / "nats") as nats:
        settings = load_settings(
            {
                "LAKE_DATA_DIR": str(tmp_path / "lake"),
                "LAKE_NATS_URL": nats.url,
                "LAKE_BRONZE_BATCH_SECONDS": "0.3",
            }
        )
        old_shape = TableRegistry(
            [
                dataclasses.replace(
                    registry().get(t),
                    columns=tuple(c for c in registry().get(t).columns if c.name != "conditions"),
                    schema_version=1,
                )
                for t in (BRONZE, SILVER)
            ]
        )
        LakeCatalog(settings, tables=old_shape).init()

        # 1. old schema: the field is kept out of the row, counted and logged once
        unknown_before = _unknown_count()
        asyncio.run(_publish(settings, [_event(0, "@,T"), _event(1, "I")]))
        with caplog.at_level(logging.WARNING, logger="iceberg_lake"):
            _serve_until_idle(settings)
        assert _unknown_count() - unknown_before == 2
        warnings = [r for r in caplog.records if "has no column 'conditions'" in r.getMessage()]
        assert len(warnings) == 1
        lake = LakeCatalog(settings)
        bronze = lake.load_table(BRONZE)
        old_snapshot = bronze.current_snapshot().snapshot_id
        assert bronze.scan().to_arrow().num_rows == 2
        assert "conditions" not in bronze.schema().column_names
        watermarks = {k: v for k, v in bronze.properties.items() if k.startswith(WATERMARK_PREFIX)}
        assert watermarks, "the writer keeps its exactly-once watermark in table properties"

        # 2. migrate
        runner = MigrationRunner(lake)
        try:
            assert [r.migration.version for r in runner.up(to=1)] == [1]
        finally:
            runner.close()
        bronze = lake.load_table(BRONZE)
        assert "conditions" in bronze.schema().column_names
        for k, v in watermarks.items():
            assert bronze.properties[k] == v, "the migration must keep the writer's watermark"

        # 3. new schema: filled when carried, null when not; nothing written twice
        asyncio.run(_publish(settings, [_event(2, "@,F"), _event(3, None)]))
        _serve_until_idle(settings)
        bronze = lake.load_table(BRONZE)
        rows = bronze.scan().to_arrow().sort_by("seq")
        assert rows.column("seq").to_pylist() == [0, 1, 2, 3]
        assert rows.column("conditions").to_pylist() == [None, None, "@,F", None]

    # readers at the old snapshot see the old shape, at the current one the new shape
    assert "conditions" not in bronze.scan(snapshot_id=old_snapshot).to_arrow().column_names
    location = bronze.metadata_location
    old_cols = duck.sql(
        f"SELECT * FROM iceberg_scan('{location}', snapshot_from_id={old_snapshot})"
    ).columns
    assert "conditions" not in old_cols
    got = duck.sql(f"SELECT seq, conditions FROM iceberg_scan('{location}') ORDER BY seq")
    assert got.fetchall() == [(0, None), (1, None), (2, "@,F"), (3, None)]

    # 4. Silver carries the new column through
    with SilverCompactor(lake) as compactor:
        result = compactor.compact_date(DAY, "stocks.trades")
    assert result["rows_written"] == 4, result
    silver = lake.load_table(SILVER).scan().to_arrow().sort_by("seq")
    assert silver.column("conditions").to_pylist() == [None, None, "@,F", None]
