"""One active writer per consumer: two `lake serve` processes, the active one SIGKILLed.

Budget: about 30 s (two processes, 2 s lease, 6,000 events).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from ingest_support import (
    encode,
    make_event,
    publish,
    scan_sql,
    serving,
    settings_for,
    wait_stream,
)
from test_service_process import start_serve, wait_for, watermark

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


def test_two_serve_processes_one_killed_every_event_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_BRONZE_BATCH_SIZE="300",
        LAKE_BRONZE_BATCH_SECONDS="0.3",
        LAKE_WRITER_LEASE_SECONDS="2",
    )
    n = 6000
    items = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(n)]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_serve(settings, log_a, "--tables", "stocks_trades")
    b = None
    try:
        wait_for(lambda: "active on consumer" in log_a.read_text(), 60, "A active", a)
        b = start_serve(settings, log_b, "--tables", "stocks_trades")
        wait_for(lambda: "standby" in log_b.read_text(), 60, "B standby", b)
        publisher = threading.Thread(target=publish, args=(settings, items), kwargs={"pace": 1500})
        publisher.start()
        wait_for(lambda: watermark(settings, TABLE) > 0, 60, "a commit by A", a)
        time.sleep(1.0)
        assert "active on consumer" not in log_b.read_text()  # B waited while A held it
        a.send_signal(signal.SIGKILL)
        assert a.wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        wait_for(lambda: "active on consumer" in log_b.read_text(), 30, "B takes over", b)
        takeover = time.monotonic() - killed
        assert takeover < 6, f"took {takeover:.1f} s: {log_b.read_text()[-3000:]}"
        publisher.join()
        wait_stream(settings, "MARKET", n)

        def all_stored() -> bool:
            try:
                sql = f"SELECT count(*) FROM {scan_sql(settings, TABLE)}"
                return duck.sql(sql).fetchone()[0] >= n
            except Exception:
                return False

        wait_for(all_stored, 60, "every event stored", b)
        time.sleep(1.0)  # a duplicate commit, if any, would land now
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0, log_b.read_text()[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    count, distinct = duck.sql(
        f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, TABLE)}"
    ).fetchone()
    assert (count, distinct) == (n, n)


def test_a_writer_of_another_lake_holding_the_lease_ends_serve_with_one_line(
    tmp_path: Path, nats: NatsServer
) -> None:
    """review14: consumer names and leases depend only on the table, so a staging lake on the
    production NATS account took production's lease, and production stood by for good with an
    INFO line. A lease held by another lake's writer now ends `lake serve` with one line; a
    second process of the same lake still stands by (the test above)."""
    prod = settings_for(tmp_path / "prod", nats.url, LAKE_WRITER_LEASE_SECONDS="2")
    staging = settings_for(tmp_path / "staging", nats.url, LAKE_WRITER_LEASE_SECONDS="2")
    for settings in (prod, staging):
        LakeCatalog(settings).init()
    log_prod, log_staging = tmp_path / "prod.log", tmp_path / "staging.log"
    with serving(prod, log_prod, "--tables", "stocks_trades") as a:
        wait_for(lambda: "active on consumer" in log_prod.read_text(), 60, "prod active", a)
        with serving(staging, log_staging, "--tables", "stocks_trades") as b:
            assert b.wait(timeout=60) != 0
        out = log_staging.read_text()
        assert "a writer of another lake" in out and "own NATS account" in out, out
        assert "Traceback" not in out and "active on consumer" not in out
        assert a.poll() is None  # production keeps its lease and runs on
