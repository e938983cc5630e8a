"""NATS closing a connection for good must not stall ingest (ingest17).

A rejected message within a few hundred bytes of the server's `max_payload` was copied to the
dead-letter stream with its headers, past the limit: the server closed `lake serve`'s connection,
nats-py does not reconnect after that, and the service retried calls on the dead client forever,
ingesting nothing, never exiting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ingest_support import encode, make_event, publish_async, run_until_idle, settings_for
from support.wait import await_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import BusClosedError
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
SUBJECT = "market.stocks.trades"


def test_a_rejected_message_near_max_payload_is_dead_lettered_and_ingest_goes_on(
    tmp_path: Path, nats: NatsServer
) -> None:
    settings = settings_for(tmp_path, nats.url)

    async def publish() -> int:
        nc = await bus.connect(settings)
        try:
            limit = int(nc.max_payload)
        finally:
            await nc.close()
        junk = b"x" * (limit - 100)  # not JSON: rejected whole, copied to the DLQ stream
        good = [(SUBJECT, encode(make_event(TABLE, i)), None) for i in (2, 3, 4)]
        await publish_async(settings, [(SUBJECT, junk, None), *good])
        return limit

    limit = asyncio.run(publish())
    run_until_idle(settings, [TABLE])  # within its 120 s bound: it stalled for good before

    catalog = LakeCatalog(settings)
    stored = catalog.load_table(TABLE).scan().to_arrow()
    assert sorted(stored.column("seq").to_pylist()) == [2, 3, 4]
    letters = catalog.load_table("bronze.dead_letters").scan().to_arrow()
    assert [len(raw) for raw in letters.column("raw").to_pylist()] == [limit - 100]

    async def dlq_copy() -> tuple[bytes, dict[str, str]]:
        nc = await bus.connect(settings)
        try:
            js = bus.jetstream(nc, settings)
            msg = await js.get_last_msg(bus.DEAD_LETTER_STREAM, "lake.dlq.stocks_trades")
            return msg.data or b"", dict(msg.headers or {})
        finally:
            await nc.close()

    body, headers = asyncio.run(dlq_copy())
    assert body == b"" and f"{limit - 100} bytes" in headers["Lake-Body-Omitted"]


def test_serve_stops_with_one_line_when_nats_closes_its_connection_for_good(
    tmp_path: Path, nats: NatsServer
) -> None:
    """The server closes the service's own connection (a message over `max_payload` once its
    headers count): the service ends with `BusClosedError` instead of retrying forever."""
    settings = settings_for(tmp_path, nats.url)

    async def scenario() -> None:
        service = LakeService(settings, [TABLE])
        runner = asyncio.create_task(service.run())
        await await_until(lambda: service._nc is not None, 30, "the connection", alive=runner)
        nc = service._nc
        assert nc is not None
        big = b"x" * (int(nc.max_payload) - 10)
        await nc.publish("lake.test.oversize", big, headers={"Pad": "p" * 200})
        with pytest.raises(BusClosedError, match="NATS closed the connection for good"):
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
