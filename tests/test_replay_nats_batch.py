"""Batched replay to NATS: pre-built PUB frames, in order, paced by event time (budget ~6 s).

Includes the guard test for the nats-py internal `engine.nats.publish_frames` relies on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from support.wait import await_until
from timetravel_data import T14, append, futures, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import LakeError
from iceberg_lake.testing import NatsServer
from iceberg_lake.timetravel.replay import ReplayEngine

pytestmark = pytest.mark.integration

STOCKS, FUTURES = "bronze.stocks_trades", "bronze.futures_trades"
SEC = 10**9


def test_guard_nats_py_send_command_queues_raw_protocol() -> None:
    """`publish_frames` hands bytes to `Client._send_command` and bumps `Client.stats`."""
    assert inspect.iscoroutinefunction(Client._send_command)
    params = list(inspect.signature(Client._send_command).parameters)
    assert params[:2] == ["self", "cmd"]
    assert {"out_msgs", "out_bytes"} <= set(Client().stats)
    assert bus.pub_frame_header("replay.market.x") == b"PUB replay.market.x "
    with pytest.raises(LakeError, match="invalid NATS subject"):
        bus.pub_frame_header("bad subject")


@pytest.fixture(scope="module")
def batch_lake(module_lake: LakeCatalog) -> Settings:
    catalog, settings = module_lake, module_lake.settings
    append(catalog.load_table(STOCKS), trades("SPY", T14, 3000, SEC // 4))
    append(catalog.load_table(FUTURES), futures("ES", T14, 2000, SEC // 2))
    return settings


async def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    await await_until(condition, timeout, what, interval=0.02)


def test_batched_publish_delivers_every_event_in_replay_order(
    batch_lake: Settings, nats_server: NatsServer
) -> None:
    settings = batch_lake.with_overrides(nats_url=nats_server.url)
    window = (T14, T14 + 600 * SEC)
    expected = ReplayEngine(settings, [FUTURES, STOCKS], *window)
    want = [(f"rb1.{e.subject}", e.payload) for e in expected.events()]

    async def scenario() -> tuple[dict, list[tuple[str, bytes]], list[int]]:
        nc = await bus.connect(settings, name="test-replay-batch")
        got: list[tuple[str, bytes]] = []
        progress: list[int] = []

        async def on_msg(msg: Any) -> None:
            got.append((msg.subject, msg.data))

        await nc.subscribe("rb1.>", cb=on_msg)
        engine = ReplayEngine(settings, [FUTURES, STOCKS], *window)
        manifest = await engine.publish(
            nc, prefix="rb1", batch=333, progress=lambda n, _ts: progress.append(n)
        )
        await _until(lambda: len(got) == len(want), "all events")
        await nc.close()
        return manifest, got, progress

    manifest, got, progress = asyncio.run(scenario())
    assert got == want  # every subject and payload, in replay order
    assert manifest["sequence_hash"] == expected.manifest()["sequence_hash"]
    assert progress[-1] == len(want) == manifest["event_count"] == 2400 + 1200
    assert len(progress) > len(want) // 333  # one call per batch


def test_speed_paces_batches_by_event_time(batch_lake: Settings, nats_server: NatsServer) -> None:
    settings = batch_lake.with_overrides(nats_url=nats_server.url)
    window = (T14, T14 + 10 * SEC)  # 10 s of events at 20x: at least 0.5 s

    async def scenario() -> tuple[int, float, list[float]]:
        nc = await bus.connect(settings, name="test-replay-paced")
        arrivals: list[float] = []

        async def on_msg(msg: Any) -> None:
            arrivals.append(time.monotonic())

        await nc.subscribe("rb2.>", cb=on_msg)
        began = time.monotonic()
        manifest = await ReplayEngine(settings, [STOCKS], *window, speed=20.0).publish(
            nc, prefix="rb2"
        )
        elapsed = time.monotonic() - began
        await _until(lambda: len(arrivals) == manifest["event_count"], "paced events")
        await nc.close()
        return manifest["event_count"], elapsed, [a - began for a in arrivals]

    count, elapsed, arrivals = asyncio.run(scenario())
    assert count == 40
    assert elapsed >= 0.45
    # Paced, not bursted: the last event (9.75 s of event time) arrives ~0.49 s after the first.
    assert arrivals[-1] - arrivals[0] >= 0.4


def test_publish_needs_an_open_connection(batch_lake: Settings, tmp_path: Path) -> None:
    async def scenario() -> None:
        nc = Client()  # never connected
        await bus.publish_frames(nc, b"PUB a 1\r\nx\r\n", 1, 1)

    with pytest.raises(LakeError, match="not open"):
        asyncio.run(scenario())
