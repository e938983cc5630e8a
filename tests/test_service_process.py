"""`lake serve` as a real process: SIGKILL at random moments, SIGTERM, Prometheus metrics."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from ingest_support import (
    count_rows,
    encode,
    make_event,
    publish,
    scan_sql,
    settings_for,
    start_serve,
    wait_stream,
)
from pyiceberg.expressions import EqualTo
from pyiceberg.io.pyarrow import schema_to_pyarrow
from support.wait import wait_until

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.engine.iceberg import PartitionReplacement
from iceberg_lake.testing import NatsServer, free_port

pytestmark = pytest.mark.integration


def watermark(settings: Settings, table: str) -> int:
    key = f"{properties.WATERMARK_PREFIX}MARKET.lake_{table.replace('.', '_')}"
    try:
        return int(LakeCatalog(settings).load_table(table).properties.get(key, 0))
    except Exception:
        return 0


def wait_for(predicate, timeout: float, what: str, proc=None) -> None:  # noqa: ANN001
    wait_until(predicate, timeout, what, interval=0.1, alive=proc)


def rewrite_one_partition(settings: Settings, table_id: str) -> None:
    """Another component's commit: rewrite the files of one partition with the same rows."""
    table = LakeCatalog(settings).load_table(table_id)
    predicate = EqualTo("symbol", "SPY")
    old = [t.file for t in table.scan(row_filter=predicate).plan_files()]
    rows = table.scan(row_filter=predicate).to_arrow().sort_by("ts_event_ns")
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    rows = rows.cast(pa.schema([schema.field(n) for n in rows.column_names]))
    rep = PartitionReplacement(table, {properties.LAKE_OPERATION: "compact-files"})
    rep.replace(predicate, rows, old)
    assert rep.commit() is not None


def test_sigkill_at_random_moments_stores_every_event_exactly_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    rng = random.Random(20251216)
    # A 2 s lease (as tests/test_service_fencing.py): each restart waits for the killed holder's
    # lease to expire, at the default 10 s that was 5 x ~9 s of waiting; with 2 s the new process
    # takes over while the publisher still runs, so the kills hit commits in flight.
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_BRONZE_BATCH_SIZE="400",
        LAKE_BRONZE_BATCH_SECONDS="0.3",
        LAKE_WRITER_LEASE_SECONDS="2",
    )
    trades, quotes = 12_000, 8_000  # trades one per message, quotes 20 per message
    chunks = 6
    log = tmp_path / "serve.log"
    published = 0
    kills = 0
    for chunk in range(chunks):
        t_lo, t_hi = chunk * trades // chunks, (chunk + 1) * trades // chunks
        q_lo, q_hi = chunk * quotes // chunks, (chunk + 1) * quotes // chunks
        items = [
            ("market.stocks.trades", encode(make_event("bronze.stocks_trades", i)), None)
            for i in range(t_lo, t_hi)
        ]
        q_events = [make_event("bronze.stocks_quotes", i) for i in range(q_lo, q_hi)]
        items += [
            ("market.stocks.quotes", encode(q_events[j : j + 20]), None)
            for j in range(0, len(q_events), 20)
        ]
        rng.shuffle(items)
        last = chunk == chunks - 1
        args = ["--tables", "stocks_trades,stocks_quotes"] + (["--until-idle"] if last else [])
        if last:
            published += publish(settings, items)
            wait_stream(settings, "MARKET", published)
            proc = start_serve(settings, log, *args)
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
            break
        before = watermark(settings, "bronze.stocks_trades")
        proc = start_serve(settings, log, *args)
        starts = chunk + 1
        wait_for(lambda n=starts: log.read_text().count("lake serve:") >= n, 60, "start", proc)
        # Publish while it runs (throttled) and kill at a random moment after its first commit,
        # while messages flow and commits are in flight.
        publisher = threading.Thread(target=publish, args=(settings, items), kwargs={"pace": 1500})
        publisher.start()
        wait_for(
            lambda b=before: watermark(settings, "bronze.stocks_trades") > b, 60, "a commit", proc
        )
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        kills += 1
        publisher.join()
        published += len(items)
        wait_stream(settings, "MARKET", published)
        if chunk == 2:
            # Between a kill and the restart: snapshot expiry and another component's commit.
            table = LakeCatalog(settings).load_table("bronze.stocks_trades")
            table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
            rewrite_one_partition(settings, "bronze.stocks_trades")
            table = LakeCatalog(settings).load_table("bronze.stocks_trades")
            assert len(table.metadata.snapshots) == 2
    assert kills >= 5
    for table, n in (("bronze.stocks_trades", trades), ("bronze.stocks_quotes", quotes)):
        count, distinct = duck.sql(
            f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, table)}"
        ).fetchone()
        assert (count, distinct) == (n, n), table


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _value(text: str, name: str, label: str) -> float:
    m = re.search(rf"^{name}\{{[^}}]*{re.escape(label)}[^}}]*\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def test_metrics_while_serving_and_sigterm_flushes_the_buffer(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="300"
    )
    port = free_port()
    table = "bronze.stocks_trades"
    first = [("market.stocks.trades", b"{not json", None)] + [
        ("market.stocks.trades", encode(make_event(table, i)), None) for i in range(1000)
    ]
    publish(settings, first)
    proc = start_serve(
        settings, tmp_path / "serve.log", "--tables", "stocks_trades", "--metrics-port", str(port)
    )
    try:
        consumer = 'consumer="lake_bronze_stocks_trades"'
        label = f'table="{table}"'

        def committed(n: int) -> bool:
            try:
                return _value(_metrics(port), "lake_ingest_events_committed_total", label) == n
            except OSError:
                return False

        wait_for(lambda: committed(1000), 60, "1000 committed events in /metrics", proc)
        publish(settings, [("market.stocks.trades", encode(make_event(table, i)), None)
                           for i in range(1000, 1500)])  # fmt: skip

        def buffered_and_drained() -> bool:
            text = _metrics(port)
            return (
                _value(text, "lake_ingest_buffer_events", consumer) == 500
                and _value(text, "lake_ingest_consumer_lag", consumer) == 0
            )

        # The lag gauge is polled every 0.25 s: wait for both series to settle. Dead letters
        # are committed after the rows of the same flush.
        wait_for(buffered_and_drained, 30, "500 buffered events and no lag", proc)
        wait_for(
            lambda: _value(_metrics(port), "lake_ingest_dead_letters_total", label) == 1,
            30,
            "the dead letter committed",
            proc,
        )
        text = _metrics(port)
        assert _value(text, "lake_ingest_events_consumed_total", label) == 1501  # + the bad one
        assert _value(text, "lake_ingest_dead_letters_total", label) == 1
        assert _value(text, "lake_ingest_commit_seconds_count", label) >= 1
        assert "lake_ingest_commit_seconds_bucket{" in text
        assert _value(text, "lake_ingest_consumer_lag", consumer) == 0
        assert count_rows(duck, settings, table) == 1000  # the 500 are only buffered
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert count_rows(duck, settings, table) == 1500
    assert count_rows(duck, settings, "bronze.dead_letters") == 1


def test_sigterm_repeated_through_the_shutdown_still_flushes_and_exits_0(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    # A parent-death signal comes once per ending parent thread (`end_with_parent`): a second
    # SIGTERM while the service releases its leases and flushes its acks used to end the
    # process there, unlogged and with the signal's status (CI: a worker killed with SIGKILL's
    # parent, its "stopped" line missing).
    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="300"
    )
    table = "bronze.stocks_trades"
    publish(settings, [("market.stocks.trades", encode(make_event(table, i)), None)
                       for i in range(500)])  # fmt: skip
    log, port = tmp_path / "serve.log", free_port()
    proc = start_serve(settings, log, "--tables", "stocks_trades", "--metrics-port", str(port))
    try:

        def buffered() -> bool:
            try:
                metric = _value(_metrics(port), "lake_ingest_buffer_events", "stocks_trades")
            except OSError:
                return False
            return metric == 500

        wait_for(buffered, 60, "500 buffered events", proc)
        # SIGTERMs every 2 ms until the process has ended: the first stops it, every other one
        # lands somewhere in the flush, the commit, the lease release or the exit.
        while proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "lake serve stopped: 500 events committed" in log.read_text()
    assert count_rows(duck, settings, table) == 500


def test_workers_split_the_tables_over_processes(tmp_path: Path, nats: NatsServer, duck) -> None:
    from ingest_support import gold_payload

    settings = settings_for(tmp_path, nats.url)
    items = [
        ("market.stocks.trades", encode(make_event("bronze.stocks_trades", i)), None)
        for i in range(200)
    ] + [("levels.signals", encode(gold_payload(i)), None) for i in range(20)]
    publish(settings, items)
    log = tmp_path / "serve.log"
    args = ["--workers", "2", "--tables", "stocks_trades,levels_signals", "--until-idle"]
    proc = start_serve(settings, log, *args)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert log.read_text().count("worker ") >= 2
    assert count_rows(duck, settings, "bronze.stocks_trades") == 200
    assert count_rows(duck, settings, "gold.levels_signals") == 40
