"""Publishing a simulated session to a real nats-server: ids, duplicates, the streams' contents."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from iceberg_lake.config import load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.simulate import LEVELS_SIGNALS, SimulationConfig, build_messages, simulate
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration


async def _stream_counts(url: str) -> dict[str, int]:
    nc = await bus.connect(load_settings({"LAKE_NATS_URL": url}))
    try:
        js = nc.jetstream()
        counts = {}
        for stream in (bus.MARKET_STREAM, bus.SIGNALS_STREAM):
            try:
                counts[stream] = (await js.stream_info(stream)).state.messages
            except Exception:  # not created yet
                counts[stream] = 0
        return counts
    finally:
        await nc.close()


def test_publish_stores_every_message_once_and_republish_is_deduplicated(
    nats_server: NatsServer,
) -> None:
    settings = load_settings({"LAKE_NATS_URL": nats_server.url})
    config = SimulationConfig(
        seed=11, start=datetime(2024, 6, 3, 14, 0, tzinfo=UTC), duration_s=5.0, rate=200.0,
        duplicates=0.1, bad=0.05, batch=4,
    )  # fmt: skip
    messages, _ = build_messages(config)
    before = asyncio.run(_stream_counts(nats_server.url))

    stats, report = simulate(settings, config, speed=None)

    after = asyncio.run(_stream_counts(nats_server.url))
    signals = sum(1 for m in messages if m.subject == LEVELS_SIGNALS)
    assert report.server_duplicates == 0
    assert report.messages == stats.messages == len(messages)
    assert report.by_kind["duplicate"] == stats.duplicate_messages > 0
    assert report.by_kind["bad"] == stats.total_bad > 0
    assert after[bus.SIGNALS_STREAM] - before[bus.SIGNALS_STREAM] == signals
    assert after[bus.MARKET_STREAM] - before[bus.MARKET_STREAM] == len(messages) - signals

    # The same session again: every Nats-Msg-Id repeats, the server stores nothing new.
    _, again = simulate(settings, config, speed=None)
    assert again.messages == 0 and again.server_duplicates == len(messages)
    assert asyncio.run(_stream_counts(nats_server.url)) == after


def test_paced_publish_follows_event_time(nats_server: NatsServer) -> None:
    settings = load_settings({"LAKE_NATS_URL": nats_server.url})
    config = SimulationConfig(
        seed=12, start=datetime(2024, 6, 3, 15, 0, tzinfo=UTC), duration_s=1.0, rate=100.0
    )
    _, report = simulate(settings, config, speed=2.0)  # 1 s of session in about 0.5 s
    assert report.messages > 50
    assert report.seconds >= 0.4


def test_lake_simulate_cli_publishes_and_reports(nats_server: NatsServer) -> None:
    import json

    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app

    args = ["simulate", "--rate", "100", "--duration", "2", "--seed", "5", "--speed", "0"]
    args += ["--duplicates", "0.1", "--bad", "0.05", "--batch", "2", "--start", "2024-06-04T14:00Z"]
    result = CliRunner().invoke(
        app, [*args, "--output", "json"], env={"LAKE_NATS_URL": nats_server.url}
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    expected, stats = build_messages(
        SimulationConfig(
            seed=5,
            start=datetime(2024, 6, 4, 14, 0, tzinfo=UTC),
            duration_s=2.0,
            rate=100.0,
            duplicates=0.1,
            bad=0.05,
            batch=2,
        )  # fmt: skip
    )
    assert report["messages_stored"] == len(expected)
    assert report["events"] == stats.total_events
    assert report["bad_messages"] == stats.total_bad


def test_lake_simulate_cli_refuses_bad_arguments() -> None:
    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app

    result = CliRunner().invoke(app, ["simulate", "--bad", "2"])
    assert result.exit_code == 1
    assert "--bad must be a probability" in result.output
    result = CliRunner().invoke(app, ["simulate", "--start", "yesterday"])
    assert result.exit_code == 1
    assert "--start must be an ISO time" in result.output
