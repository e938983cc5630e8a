"""Streams, consumers and the connection against a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ingest_support import settings_for

from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import TransientError
from iceberg_lake.ingest.pull import BatchPuller
from iceberg_lake.testing import NatsServer, free_port

pytestmark = pytest.mark.integration


def test_streams_consumers_and_reset(tmp_path: Path, nats: NatsServer) -> None:
    settings = settings_for(tmp_path, nats.url, LAKE_STREAM_DUPLICATE_WINDOW_SECONDS="30")

    async def scenario() -> None:
        nc = await bus.connect(settings)
        try:
            js = nc.jetstream()
            assert sorted(await bus.ensure_streams(js, settings)) == [
                "LAKE_DLQ",
                "MARKET",
                "SIGNALS",
            ]
            assert await bus.ensure_streams(js, settings) == []
            info = await js.stream_info("MARKET")
            assert info.config.subjects == ["market.>"] and info.config.duplicate_window == 30
            assert (await js.stream_info("LAKE_DLQ")).config.subjects == ["lake.dlq.>"]

            ci = await bus.ensure_consumer(js, "bronze.stocks_trades")
            assert ci.name == "lake_bronze_stocks_trades"
            assert ci.config.filter_subject == "market.stocks.trades"
            assert ci.config.ack_policy == "all"
            assert (await bus.ensure_consumer(js, "bronze.stocks_trades")).name == ci.name
            assert (await bus.ensure_consumer(js, "gold.levels_signals")).config.filter_subject == (
                "levels.signals"
            )

            for i in range(5):
                await js.publish("market.stocks.trades", str(i).encode())
                await js.publish("market.stocks.quotes", b"q")  # other subject: not delivered
            await bus.reset_consumer(js, "bronze.stocks_trades", 5)
            puller = BatchPuller(nc, "MARKET", "lake_bronze_stocks_trades")
            await puller.start()
            got = []
            while len(got) < 3:
                got += [m.data for m in await puller.fetch(100, 2.0)]
            assert got == [b"2", b"3", b"4"]  # stream seqs 5, 7, 9
            assert await puller.fetch(100, 0.2) == []
            await puller.close()
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_connect_to_nothing_is_a_clear_transient_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match="cannot connect to NATS"):
        asyncio.run(bus.connect(settings, connect_timeout=1.0))


def test_subject_helpers() -> None:
    assert bus.consumer_name("bronze.stocks_trades") == "lake_bronze_stocks_trades"
    assert bus.dead_letter_subject("bronze.stocks_trades") == "lake.dlq.stocks_trades"
    assert bus.stream_for_subject("levels.signals") == bus.SIGNALS_STREAM
    assert bus.stream_for_subject("market.stocks.trades") == bus.MARKET_STREAM
    assert bus.consumer_target(bus.INFERRED_TARGET) == ("MARKET", "lake_inferred", "market.>")
