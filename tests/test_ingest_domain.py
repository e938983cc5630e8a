"""JetStream domains: the writers reach the streams of a hub through a leaf node.

The client connects to a leaf server that has its own JetStream (domain `leaf`); the lake's
streams live in the hub (domain `hub`), addressed with `LAKE_NATS_DOMAIN=hub`. A hard-coded
`$JS.API` prefix would talk to the leaf's JetStream and find no streams. Budget: about 10 s.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import count_rows, encode, make_event, publish, run_until_idle, settings_for
from nats.js.errors import NotFoundError
from support.wait import wait_until

from iceberg_lake.engine import nats as bus
from iceberg_lake.testing import ManagedProcess, find_binary, free_ports

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


def _serve(tmp: Path, name: str, config: str) -> ManagedProcess:
    conf = tmp / f"{name}.conf"
    conf.write_text(config)
    return ManagedProcess(
        [find_binary("nats-server"), "-c", str(conf)], tmp / f"{name}.log", cwd=tmp, name=name
    ).start()


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(server: ManagedProcess, port: int, timeout: float = 15.0) -> None:
    wait_until(lambda: _answers(port), timeout, f"port {port} to answer", alive=server.is_running)


@pytest.fixture
def leaf_url(tmp_path: Path) -> Iterator[str]:
    """A hub (JetStream domain `hub`) and a leaf (domain `leaf`); yields the leaf's URL."""
    hub_port, leaf_listen, leaf_port = free_ports(3)
    hub = _serve(
        tmp_path,
        "hub",
        f"listen: 127.0.0.1:{hub_port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "hub-js"}", domain: hub }}\n'
        f"leafnodes {{ listen: 127.0.0.1:{leaf_listen} }}\n",
    )
    leaf = None
    try:
        _wait_port(hub, hub_port)
        _wait_port(hub, leaf_listen)
        leaf = _serve(
            tmp_path,
            "leaf",
            f"listen: 127.0.0.1:{leaf_port}\n"
            f'jetstream {{ store_dir: "{tmp_path / "leaf-js"}", domain: leaf }}\n'
            f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{leaf_listen}" }} ] }}\n',
        )
        _wait_port(leaf, leaf_port)
        wait_until(
            lambda: "Leafnode connection created" in (tmp_path / "leaf.log").read_text(),
            15,
            "the leaf node to connect to the hub",
            alive=leaf.is_running,
        )
        yield f"nats://127.0.0.1:{leaf_port}"
    finally:
        if leaf is not None:
            leaf.stop()
        hub.stop()


def test_writers_use_the_configured_jetstream_domain(tmp_path: Path, leaf_url: str, duck) -> None:
    settings = settings_for(tmp_path, leaf_url, LAKE_NATS_DOMAIN="hub")
    n = 300
    items = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(n)]

    async def create_streams_in_hub() -> list[str]:
        nc = await bus.connect(settings)
        try:
            js = bus.jetstream(nc, settings)
            await bus.ensure_streams(js, settings)
            return [s.config.name for s in await js.streams_info()]
        finally:
            await nc.close()

    assert "MARKET" in asyncio.run(create_streams_in_hub())
    publish(settings, items, acked=True)  # through the leaf, stored by the hub's stream
    service = run_until_idle(settings, [TABLE])
    assert service.committed_events == n
    assert count_rows(duck, settings, TABLE) == n

    async def consumer_in_hub_only() -> tuple[int, bool]:
        nc = await bus.connect(settings)
        try:
            hub = await bus.jetstream(nc, settings).consumer_info(
                "MARKET", "lake_bronze_stocks_trades"
            )
            try:
                await nc.jetstream(domain="leaf").stream_info("MARKET")
                leaf_has_stream = True
            except NotFoundError:
                leaf_has_stream = False
            return int(hub.ack_floor.stream_seq), leaf_has_stream
        finally:
            await nc.close()

    acked, leaf_has_stream = asyncio.run(consumer_in_hub_only())
    assert acked == n and not leaf_has_stream
