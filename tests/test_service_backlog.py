"""A writer restarting behind a large backlog of batched messages catches up.

1M events as 10,000 messages of 100 events (~15 KB each) are published while no writer runs;
then `lake serve --until-idle` must commit all of them exactly once without the server
dropping its connection as a slow consumer (a fetch of 5,000 such messages is ~75 MB, beyond
the server's 64 MB max_pending). Budget: about 60 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import encode, make_event, publish, scan_sql, settings_for, wait_stream
from test_service_process import start_serve

from iceberg_lake.testing import NatsServer, run_nats_server

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
MESSAGES = 10_000
PER_MESSAGE = 100


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server (overrides conftest's `nats`): the test reads the server's own log
    for slow-consumer warnings, which other tests' traffic must not pollute."""
    with run_nats_server(tmp_path / "nats") as server:
        yield server


def test_backlog_of_batched_messages_is_committed_once_without_reconnects(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    n = MESSAGES * PER_MESSAGE
    items = (
        (
            "market.stocks.trades",
            encode([make_event(TABLE, i) for i in range(j, j + PER_MESSAGE)]),
            None,
        )
        for j in range(0, n, PER_MESSAGE)
    )
    publish(settings, items)
    wait_stream(settings, "MARKET", MESSAGES, timeout=60)
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    proc = start_serve(settings, log, "--tables", "stocks_trades", "--until-idle")
    try:
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - t0
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "connection lost" not in text
    assert "Slow Consumer" not in nats.process.log_path.read_text()
    count, distinct = duck.sql(
        f"SELECT count(*), count(DISTINCT seq) FROM {scan_sql(settings, TABLE)}"
    ).fetchone()
    assert (count, distinct) == (n, n)
    print(f"1M batched events drained in {elapsed:.1f} s")
