"""The object store goes away for 10 s mid-run, or is not there yet when `lake serve` starts:
the writers retry and store everything once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ingest_support import (
    count_rows,
    duck_for,
    encode,
    make_event,
    publish,
    publish_async,
    scan_sql,
    settings_for,
    start_serve,
    wait_stream,
)
from support.wait import await_until, wait_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.ops import metrics
from iceberg_lake.testing import NatsServer, S3Server

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 10.0


async def _until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    await await_until(predicate, timeout, what, interval=0.1)


def _errors(table: str) -> float:
    return metrics.COMMIT_ERRORS.labels(table)._value.get()


def test_s3_outage_of_ten_seconds_is_retried_and_loses_nothing(
    tmp_path: Path, nats: NatsServer, s3_server: S3Server, duck
) -> None:
    settings = settings_for(
        tmp_path,
        nats.url,
        s3=s3_server,
        LAKE_BRONZE_BATCH_SIZE="300",
        LAKE_BRONZE_BATCH_SECONDS="0.3",
    )
    table = "bronze.stocks_trades"
    n = 3000
    items = [("market.stocks.trades", encode(make_event(table, i)), None) for i in range(n)]

    async def scenario() -> LakeService:
        service = LakeService(settings, [table])
        runner = asyncio.create_task(service.run())
        try:
            await publish_async(settings, items[: n // 3])
            await _until(lambda: service.committed_events >= n // 3, 60, "first third committed")
            errors_before = _errors(table)
            await asyncio.to_thread(s3_server.stop)
            try:
                await publish_async(settings, items[n // 3 :], pace=1000)
                # The outage itself: the writer must keep retrying for this long.
                await asyncio.sleep(OUTAGE_SECONDS)
                assert _errors(table) > errors_before, "no failed commit during the outage"
                stored_during_outage = service.committed_events
            finally:
                await asyncio.to_thread(s3_server.start)
            await _until(lambda: service.committed_events >= n, 90, "everything committed")
            assert stored_during_outage < n
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)
        return service

    service = asyncio.run(scenario())
    assert service.committed_events == n
    con = duck_for(duck, settings)
    count, distinct = con.sql(
        f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, table)}"
    ).fetchone()
    assert (count, distinct) == (n, n)


def test_a_warehouse_not_mounted_yet_at_start_is_waited_for_not_a_lost_file(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """The whole warehouse is missing when `lake serve` starts (a volume not mounted yet): the
    tables' current metadata files are missing, but so is everything beside them, so it is an
    outage to retry, not the "catalog restored from an old backup" error that ends serve for
    good (it did: exit 1; review9)."""
    trades = "bronze.stocks_trades"
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    publish(
        settings, [("market.stocks.trades", encode(make_event(trades, i)), None) for i in range(10)]
    )
    wait_stream(settings, "MARKET", 10)
    warehouse = settings.data_dir / "warehouse"
    away = settings.data_dir / "warehouse.unmounted"
    warehouse.rename(away)
    log = tmp_path / "serve.log"
    proc = start_serve(settings, log, "--tables", "stocks_trades", "--until-idle")
    try:
        wait_until(
            lambda: "unavailable" in log.read_text(),
            60,
            "serve to retry the missing storage",
            alive=proc,
        )
        away.rename(warehouse)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "restored from a backup" not in log.read_text()
    assert count_rows(duck_for(duck, settings), settings, trades) == 10
