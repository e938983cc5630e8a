"""Streams, consumers and the connection against a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ingest_support import settings_for

from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.engine.nats_pull import BatchPuller
from iceberg_lake.exceptions import TransientError
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
            puller = BatchPuller(nc, "$JS.API", "MARKET", "lake_bronze_stocks_trades")
            await puller.start()
            got = []
            while len(got) < 3:
                got += await puller.fetch(100, 2.0, 1 << 20)
            assert [m.data for m in got] == [b"2", b"3", b"4"]
            assert [m.metadata.sequence.stream for m in got] == [5, 7, 9]
            assert await puller.fetch(100, 0.2, 1 << 20) == []
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


def test_stream_limits_applied_and_status_warns_near_them(tmp_path: Path, nats: NatsServer) -> None:
    from iceberg_lake.ops.status import consumer_status

    limited = settings_for(
        tmp_path, nats.url, LAKE_STREAM_MAX_AGE="86400", LAKE_STREAM_MAX_BYTES="200000"
    )

    async def scenario() -> None:
        nc = await bus.connect(limited)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, limited)
            config = (await js.stream_info("MARKET")).config
            assert (config.max_age, config.max_bytes) == (86400, 200000)
            assert (await js.stream_info("LAKE_DLQ")).config.max_bytes == 200000
            await bus.ensure_consumer(js, "bronze.stocks_trades")
            for _ in range(170):  # ~170 KB of 1 KB messages: 85% of max_bytes, none stored
                await js.publish("market.stocks.trades", b"x" * 1000)
        finally:
            await nc.close()

    asyncio.run(scenario())
    consumers, state = consumer_status(limited, ["bronze.stocks_trades"])
    assert state == "ok"
    assert consumers[0].warning and "max_bytes" in consumers[0].warning

    # Limits changed in the settings: existing streams follow (0 = unlimited).
    unlimited = settings_for(tmp_path, nats.url, LAKE_STREAM_MAX_AGE="0")

    async def update() -> tuple[float | None, int | None]:
        nc = await bus.connect(unlimited)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, unlimited)
            config = (await js.stream_info("MARKET")).config
            return config.max_age, config.max_bytes
        finally:
            await nc.close()

    max_age, max_bytes = asyncio.run(update())
    assert not max_age and (max_bytes or -1) < 0
    consumers, _ = consumer_status(unlimited, ["bronze.stocks_trades"])
    assert consumers[0].warning is None


def test_message_sequences_match_nats_metadata() -> None:
    from nats.aio.msg import Msg

    v1 = "$JS.ACK.MARKET.lake_bronze_stocks_trades.1.{s}.{c}.1795913227013931227.49"
    v2 = "$JS.ACK.hub.ACCHASH.MARKET.lake_bronze_stocks_trades.1.{s}.{c}.1795913227013931227.0.r"
    for layout in (v1, v2, v2.removesuffix(".r")):
        msgs = [Msg(None, reply=layout.format(s=10 + 2 * i, c=1 + i)) for i in range(5)]  # type: ignore[arg-type]
        expected = [(m.metadata.sequence.stream, m.metadata.sequence.consumer) for m in msgs]
        assert bus.message_sequences(msgs) == expected == [(10 + 2 * i, 1 + i) for i in range(5)]


def test_lease_one_holder_release_and_takeover(tmp_path: Path, nats: NatsServer) -> None:
    settings = settings_for(tmp_path, nats.url, LAKE_WRITER_LEASE_SECONDS="30")

    async def scenario() -> None:
        nc = await bus.connect(settings)
        try:
            bucket = await bus.lease_bucket(bus.jetstream(nc, settings), settings)
            a = bus.Lease(bucket, "MARKET.c", 30, "A")
            b = bus.Lease(bucket, "MARKET.c", 30, "B")
            assert await a.try_acquire() and a.held()
            assert not await b.try_acquire() and not b.held()
            assert await b.current_holder() == "A"
            assert await a.renew()
            await a.release()  # clean stop: a standby takes over at once, not after the TTL
            assert not a.held()
            assert await b.try_acquire() and await b.current_holder() == "B"
            a.revision = 1  # a stale holder's renewal finds another revision: lost for good
            assert not await a.renew() and not a.held()
            assert await b.renew()
        finally:
            await nc.close()

    asyncio.run(scenario())


def test_a_lost_lease_says_whether_it_expired_or_who_took_it(
    tmp_path: Path, nats: NatsServer
) -> None:
    """ops13: a writer whose own lease ran out while NATS was down logged "lease taken by
    another process", and the operator looked for a rogue writer that did not exist."""
    from iceberg_lake.ingest.writer import _lost_lease

    settings = settings_for(tmp_path, nats.url, LAKE_WRITER_LEASE_SECONDS="2")

    async def scenario() -> None:
        nc = await bus.connect(settings)
        try:
            bucket = await bus.lease_bucket(bus.jetstream(nc, settings), settings)
            a = bus.Lease(bucket, "MARKET.e", bucket.ttl, "host:1:a")
            b = bus.Lease(bucket, "MARKET.e", bucket.ttl, "host:2:b")
            assert await a.try_acquire()
            deadline = time.monotonic() + 20
            while await a.current_holder() is not None:  # not renewed: the entry expires
                assert time.monotonic() < deadline, "the lease entry never expired"
                await asyncio.sleep(0.2)
            stale = a.revision
            assert not await a.renew()
            assert (await _lost_lease(a)).startswith("lease expired (not renewed within its")
            assert await b.try_acquire()
            a.revision = stale
            assert not await a.renew()
            assert await _lost_lease(a) == "lease taken by host:2:b"
        finally:
            await nc.close()

    asyncio.run(scenario())


def _with_lease_seconds(tmp_path: Path, nats: NatsServer, *seconds: int) -> list[Settings]:
    """One lake's settings per process, each with its own `LAKE_WRITER_LEASE_SECONDS`."""
    return [settings_for(tmp_path, nats.url, LAKE_WRITER_LEASE_SECONDS=str(s)) for s in seconds]


def test_a_shorter_lease_ttl_never_lowers_the_bucket_under_a_running_holder(
    tmp_path: Path, nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A process started with a shorter lease TTL must not make the holder's entry expire
    between its renewals (every third of the TTL it knows): the bucket keeps the longer TTL."""
    long, short, longer = _with_lease_seconds(tmp_path, nats, 30, 1, 40)

    async def scenario() -> None:
        nc = await bus.connect(long)
        try:
            js = bus.jetstream(nc, long)
            first = await bus.lease_bucket(js, long)
            holder = bus.Lease(first, "MARKET.c", first.ttl, "A")
            assert first.ttl == 30 and await holder.try_acquire()
            with caplog.at_level(logging.WARNING, logger=bus.__name__):
                second = await bus.lease_bucket(js, short)
            assert second.ttl == 30
            assert "LAKE_WRITER_LEASE_SECONDS=1 is shorter" in caplog.text
            info = await js.stream_info(f"KV_{bus.LEASE_BUCKET}")
            assert info.config.max_age == 30
            standby = bus.Lease(second, "MARKET.c", second.ttl, "B")
            # Past the shorter TTL the holder's entry is still there: the standby stays out.
            until = time.monotonic() + 2.5
            while time.monotonic() < until:
                assert not await standby.try_acquire()
                await asyncio.sleep(0.25)
            assert await bus.Lease(first, "MARKET.c", 30, "A").current_holder() == "A"
            raised = await bus.lease_bucket(js, longer)  # raising is safe: it happens
            info = await js.stream_info(f"KV_{bus.LEASE_BUCKET}")
            assert raised.ttl == info.config.max_age == 40
        finally:
            await nc.close()

    asyncio.run(scenario())


class _UpdateAfter:
    """The JetStream context of a process whose stream update lands only after `first` ran:
    the interleaving of two `lease_bucket` calls that raise the TTL at the same moment."""

    def __init__(self, js: Any, first: Callable[[], Awaitable[None]]) -> None:
        self._js, self._first = js, first

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def update_stream(self, config: Any, **kw: Any) -> Any:
        await self._first()
        return await self._js.update_stream(config, **kw)


def test_concurrent_ttl_raises_never_leave_a_holder_counting_a_longer_ttl_than_the_bucket(
    tmp_path: Path, nats: NatsServer
) -> None:
    """X (4 s) and Y (2 s) both read the bucket at 1 s and raise it; Y's update lands last, so
    the bucket says 2 s while X was told 4 s. X must count its lease by the bucket's 2 s: if it
    counted 0.8 × 4 s, it would still write when Y takes the expired lease (review6)."""
    first, x_settings, y_settings = _with_lease_seconds(tmp_path, nats, 1, 4, 2)

    async def scenario() -> None:
        nc = await bus.connect(first)
        try:
            js = bus.jetstream(nc, first)
            await bus.lease_bucket(js, first)
            got: dict[str, bus.LeaseBucket] = {}

            async def x_starts() -> None:
                got["x"] = await bus.lease_bucket(js, x_settings)

            got["y"] = await bus.lease_bucket(_UpdateAfter(js, x_starts), y_settings)
            info = await js.stream_info(f"KV_{bus.LEASE_BUCKET}")
            assert (info.config.max_age, got["x"].ttl) == (2, 4), "the race happened"
            x = bus.Lease(got["x"], "MARKET.c", got["x"].ttl, "X")
            y = bus.Lease(got["y"], "MARKET.c", got["y"].ttl, "Y")
            assert await x.try_acquire()
            # X is cut off from NATS from here on: it never renews.
            deadline = time.monotonic() + 10
            while not await y.try_acquire():
                assert time.monotonic() < deadline, "Y never took the expired lease"
                await asyncio.sleep(0.1)
            assert not x.held(), "X still counts a lease that Y holds"
            assert x.ttl == 2
        finally:
            await nc.close()

    asyncio.run(scenario())
