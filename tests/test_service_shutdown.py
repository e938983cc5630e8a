"""SIGTERM while every commit fails (object store down): bounded grace, exit non-zero, no ack;
the next `lake serve` stores everything once. Budget: about 40 s (SeaweedFS restart included)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from ingest_support import duck_for, encode, make_event, publish, scan_sql, settings_for
from test_service_process import start_serve, wait_for, watermark

from iceberg_lake.testing import NatsServer, S3Server

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
GRACE = 3.0


def test_sigterm_during_failing_commit_exits_after_grace_without_ack(
    tmp_path: Path, nats: NatsServer, s3_server: S3Server, duck
) -> None:
    settings = settings_for(
        tmp_path,
        nats.url,
        s3=s3_server,
        LAKE_BRONZE_BATCH_SIZE="100",
        LAKE_BRONZE_BATCH_SECONDS="0.3",
        LAKE_SHUTDOWN_GRACE_SECONDS=str(GRACE),
    )
    n = 600
    items = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(n)]
    log = tmp_path / "serve.log"
    publish(settings, items[:200])
    proc = start_serve(settings, log, "--tables", "stocks_trades")
    try:
        wait_for(lambda: watermark(settings, TABLE) > 0, 60, "a first commit", proc)
        s3_server.stop()
        try:
            publish(settings, items[200:])
            wait_for(lambda: "failed (attempt" in log.read_text(), 60, "a failing commit", proc)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=GRACE + 20)
            elapsed = time.monotonic() - t0
        finally:
            s3_server.start()
        text = log.read_text()
        assert code != 0, text[-2000:]
        assert elapsed < GRACE + 15, f"exit took {elapsed:.1f} s"
        assert "shutdown grace period" in text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    again = start_serve(settings, log, "--tables", "stocks_trades", "--until-idle")
    assert again.wait(timeout=120) == 0, log.read_text()[-3000:]
    con = duck_for(duck, settings)
    count, distinct = con.sql(
        f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, TABLE)}"
    ).fetchone()
    assert (count, distinct) == (n, n)
