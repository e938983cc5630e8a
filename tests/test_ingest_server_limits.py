"""A NATS server that limits pull requests (`max_request_batch`, a consumer's `max_bytes` /
`max_expires`): the writers store everything, capped at the limit, and say so once.

review14: the server refuses a request beyond its limit with `409 Exceeded MaxRequestBatch of
N`; the puller took that for an ordinary end of request, so after its first one-message fetch
the writer asked for 5,000 again and again, stored nothing more, logged nothing, and
`--until-idle` never ended. Budget: about 10 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import count_rows, encode, make_event, publish, publish_async, settings_for
from nats.js.api import ConsumerConfig
from support.wait import await_until
from test_ingest_domain import _serve, _wait_port

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine import nats as bus
from iceberg_lake.engine.nats_pull import BatchPuller
from iceberg_lake.exceptions import BusUnavailableError
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.testing import free_ports

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


@pytest.fixture
def limited_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server whose JetStream refuses pull requests of more than 100 messages."""
    (port,) = free_ports(1)
    server = _serve(
        tmp_path,
        "limited",
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}", limits {{ max_request_batch: 100 }} }}\n',
    )
    try:
        _wait_port(server, port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.stop()


def test_writers_store_everything_under_a_server_batch_limit(
    tmp_path: Path, limited_url: str, duck, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, limited_url)
    n = 3_000
    publish(
        settings, [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(n)]
    )
    service = LakeService(settings, [TABLE])

    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(service.run(stop_when_idle=True, idle_seconds=0.3), 60))

    assert service.committed_events == n
    assert count_rows(duck, settings, TABLE) == n
    refused = [r for r in caplog.records if "Exceeded MaxRequestBatch of 100" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]


def test_the_puller_learns_a_consumers_byte_and_expiry_limits_and_names_other_refusals(
    tmp_path: Path, limited_url: str
) -> None:
    settings = settings_for(tmp_path, limited_url)
    publish(
        settings, [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(50)]
    )

    async def pull() -> tuple[int, int | None, float | None, int, str]:
        nc = await bus.connect(settings)
        try:
            js = bus.jetstream(nc, settings)
            # Limits nats-py's ConsumerConfig has no fields for: the JetStream API directly.
            config = {
                "durable_name": "limited",
                "ack_policy": "explicit",
                "max_bytes": 64 * 1024,
                "max_expires": 500_000_000,
            }
            request = json.dumps({"stream_name": "MARKET", "config": config}).encode()
            made = await nc.request("$JS.API.CONSUMER.DURABLE.CREATE.MARKET.limited", request)
            assert "error" not in json.loads(made.data), made.data
            puller = BatchPuller(nc, "$JS.API", "MARKET", "limited")
            await puller.start()
            # Above every limit: refused for the batch, then the bytes; asked again capped.
            got = await puller.fetch(1_000, 1.0, 8 * 1024 * 1024)
            for msg in got:
                await msg.ack()
            # Nothing left: the long poll asks for longer than max_expires, then under it.
            empty = await puller.fetch(1_000, 2.0, 8 * 1024 * 1024)
            # A 409 this module does not know ends the fetch with an error, not silence.
            await js.delete_consumer("MARKET", "limited")
            await js.add_consumer(
                "MARKET", ConsumerConfig(durable_name="limited", deliver_subject="push.here")
            )
            try:
                await puller.fetch(10, 1.0, 1024 * 1024)
                refusal = ""
            except BusUnavailableError as exc:
                refusal = str(exc)
            await puller.close()
            return len(got), puller.limits.max_bytes, puller.limits.expires, len(empty), refusal
        finally:
            await nc.close()

    got, bytes_limit, expires_limit, empty, refusal = asyncio.run(pull())
    assert got == 50 and bytes_limit == 64 * 1024 and expires_limit == 0.5 and empty == 0
    assert "push based" in refusal


def test_the_learnt_limit_outlives_a_server_restart_mid_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The limited server restarted (same store) while a writer drains a backlog: the writer
    re-reads from its committed position on a new puller, which keeps the limit learnt by the
    first (one `PullLimits` per writer; a copy per puller asked for 5,000 again and was refused
    again after every reset). Everything is stored once."""
    (port,) = free_ports(1)
    config = (
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}", limits {{ max_request_batch: 100 }} }}\n'
    )
    server = _serve(tmp_path, "limited", config)
    _wait_port(server, port)
    settings = settings_for(tmp_path, f"nats://127.0.0.1:{port}")
    n = 4_000
    events = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(n)]
    publish(settings, events[: n // 2], acked=True)
    service = LakeService(settings, [TABLE])

    async def drain() -> None:
        nonlocal server
        runner = asyncio.create_task(service.run())
        try:
            await await_until(lambda: service.committed_events > 0, 60, "a first commit")
            server.stop()
            server = _serve(tmp_path, "limited-again", config)
            await asyncio.to_thread(_wait_port, server, port)
            await publish_async(settings, events[n // 2 :], acked=True)
            await await_until(
                lambda: service.committed_events >= n, 90, "every event", alive=runner
            )
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(drain())
        (writer,) = [w for w in service.writers if w.target == TABLE]
    finally:
        server.stop()
    assert service.committed_events == n
    rows = LakeCatalog(settings).load_table(TABLE).scan().to_arrow()
    assert rows.num_rows == n and len(set(rows.column("seq").to_pylist())) == n
    resets = [r for r in caplog.records if "re-reading from the committed position" in r.message]
    refused = [r for r in caplog.records if "Exceeded MaxRequestBatch of 100" in r.getMessage()]
    assert resets and len(refused) == 1, [r.getMessage() for r in refused]
    assert writer._pull_limits.batch == 100
