"""`lake serve --workers 2` as a process supervisor, with a real nats-server.

A worker killed with SIGKILL is restarted and every event is still stored once (counted by
DuckDB's `iceberg_scan`, not by lake code); a SIGKILL of the parent ends its workers (gracefully:
they flush and release their leases); a worker that keeps failing stops everything with one line.
Budget: 30 s together on a quiet machine; measured 47-62 s at load average 12-17 on the shared
2 cores, where the workers' Python start-ups (2-12 s each) dominate.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from pathlib import Path

import pytest
from ingest_support import encode, make_event, publish, scan_sql, settings_for, start_serve
from support.wait import wait_until

from iceberg_lake.config import Settings
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TRADES, QUOTES = "bronze.stocks_trades", "bronze.stocks_quotes"
TABLES = ["--tables", "stocks_trades,stocks_quotes"]
# "worker 1 (bronze.stocks_trades): pid 123", logged by the supervisor as each worker starts.
STARTED = re.compile(r"supervisor: worker (\d+) \(([^)]*)\): pid (\d+)")


def started(log: Path) -> list[tuple[int, str, int]]:
    """(worker number, its tables, pid) of every worker start so far, in order."""
    return [(int(n), t, int(p)) for n, t, p in STARTED.findall(log.read_text())]


def alive(pid: int) -> bool:
    """Whether `pid` runs (an orphan's zombie, left for init to reap, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def counts(duck, settings: Settings, table: str) -> tuple[int, int]:  # noqa: ANN001
    """(rows, distinct (source, seq)) of `table`, read by DuckDB's iceberg_scan."""
    return duck.sql(
        f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, table)}"
    ).fetchone()


def test_a_killed_worker_is_restarted_and_every_event_is_stored_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    # A 2 s lease: the restarted worker waits as a standby until the killed one's lease expires.
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_BRONZE_BATCH_SIZE="200",
        LAKE_BRONZE_BATCH_SECONDS="0.2",
        LAKE_WRITER_LEASE_SECONDS="2",
    )
    trades, quotes = 3000, 1000
    items = [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(trades)]
    q_events = [make_event(QUOTES, i) for i in range(quotes)]
    items += [
        ("market.stocks.quotes", encode(q_events[j : j + 20]), None) for j in range(0, quotes, 20)
    ]
    half = len(items) // 2
    publish(settings, items[:half])
    log = tmp_path / "serve.log"
    proc = start_serve(settings, log, "--workers", "2", *TABLES)
    try:

        def rows(table: str) -> int:
            try:
                return counts(duck, settings, table)[0]
            except Exception:  # noqa: BLE001 - no snapshot yet
                return 0

        wait_until(lambda: rows(TRADES) > 0, 60, "a first trades commit", alive=proc)
        ((number, tables, victim),) = [s for s in started(log) if TRADES in s[1]]
        # Kill it while messages flow and its commits are in flight.
        publisher = threading.Thread(
            target=publish, args=(settings, items[half:]), kwargs={"pace": 3000}
        )
        publisher.start()
        wait_until(lambda: rows(TRADES) > 400, 60, "more trades commits", alive=proc)
        os.kill(victim, signal.SIGKILL)
        publisher.join()

        def restarted() -> bool:
            return any(n == number and p != victim for n, _, p in started(log))

        wait_until(restarted, 30, "the worker's restart", alive=proc)
        wait_until(
            lambda: rows(TRADES) >= trades and rows(QUOTES) >= quotes,
            60,
            "every event committed",
            alive=proc,
        )
        text = log.read_text()
        assert f"pid {victim}, was killed by SIGKILL (code -9): restarting it in" in text
        assert "WARNING iceberg_lake.ingest.supervisor" in text
        assert proc.poll() is None  # the parent still runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert counts(duck, settings, TRADES) == (trades, trades)
    assert counts(duck, settings, QUOTES) == (quotes, quotes)
    assert not [p for _, _, p in started(log) if alive(p)]


def test_sigkill_of_the_parent_ends_its_workers(tmp_path: Path, nats: NatsServer) -> None:
    settings = settings_for(tmp_path, nats.url)
    publish(settings, [("market.stocks.trades", encode(make_event(TRADES, 0)), None)])
    log = tmp_path / "serve.log"
    proc = start_serve(settings, log, "--workers", "2", *TABLES)
    pids: list[int] = []
    try:
        # Both workers up: each has logged its start-up line, so holds its leases.
        wait_until(lambda: log.read_text().count("lake serve:") == 2, 60, "2 workers", alive=proc)
        pids = [p for _, _, p in started(log)]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: not any(alive(p) for p in pids), 30, "the workers to end")
        # They ended through their SIGTERM path: flushed, committed, released their leases.
        assert log.read_text().count("lake serve stopped:") == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_restart_limit_stops_every_worker_with_one_line(tmp_path: Path, nats: NatsServer) -> None:
    settings = settings_for(tmp_path, nats.url)
    log = tmp_path / "serve.log"
    # Worker 1 cannot serve its metrics port (held here): it exits 1 at every start (worker 2
    # too, should the next port be taken).
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        args = ["--workers", "2", *TABLES, "--metrics-port", str(port)]
        proc = start_serve(settings, log, *args, "--max-restarts", "1", "--restart-window", "60")
        try:
            assert proc.wait(timeout=90) == 1, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("error: worker")]
    assert len(lines) == 1, text[-3000:]
    assert re.fullmatch(
        r"error: worker \d \(bronze\.\w+\), pid \d+, exited with code 1; restarted once "
        r"within 60 s \(limit 1\): stopped lake serve",
        lines[0],
    ), lines[0]
    assert text.rstrip().endswith(lines[0])  # the last word, after the workers' own lines
    assert text.count("restarting it in") >= 1
    assert "Traceback" not in text
    # The other worker was stopped before the parent exited.
    assert not [p for _, _, p in started(log) if alive(p)]


@pytest.mark.parametrize("mistake", ["url", "domain"])
def test_workers_with_an_unreachable_nats_fail_in_the_parent_with_one_line(
    tmp_path: Path, request: pytest.FixtureRequest, mistake: str
) -> None:
    """prod17: a mistyped LAKE_NATS_URL under `--workers 2` started workers that failed and
    were restarted until the limit, 49 lines over 50 s, the last naming the limit; review17c:
    the same with a wrong LAKE_NATS_DOMAIN once the parent only connected. Now the parent sets
    up NATS as a worker would, first: one line, exit 1, no worker."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        if mistake == "url":
            settings = settings_for(tmp_path, f"nats://127.0.0.1:{port}")
            cause = "cannot connect to NATS"
        else:
            nats: NatsServer = request.getfixturevalue("nats")
            settings = settings_for(tmp_path, nats.url, LAKE_NATS_DOMAIN="nope")
            cause = "JetStream"
        log = tmp_path / "serve.log"
        proc = start_serve(settings, log, "--workers", "2", *TABLES)
        try:
            assert proc.wait(timeout=60) == 1, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert started(log) == [], text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and cause in errors[0], text[-3000:]
    assert "Traceback" not in text
