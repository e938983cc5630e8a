"""SIGTERM while every commit fails (object store down): bounded grace, exit non-zero, no ack;
the next `lake serve` stores everything once. SIGTERM with NATS down: the buffer is committed,
acks and lease release skipped, exit 0 within the grace period. Budget: about 40 s + 15 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    count_rows,
    duck_for,
    encode,
    make_event,
    publish,
    publish_async,
    scan_sql,
    settings_for,
)
from test_service_process import _metrics, _value, start_serve, wait_for, watermark

from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.runtime import free_port
from iceberg_lake.testing import NatsServer, S3Server, run_nats_server

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
GRACE = 3.0
#: Past the grace period: the process's exit (Python teardown) on a loaded machine.
MARGIN = 4.0


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
    assert _drain_and_count(settings, log, duck, timeout=120) == (n, n)


def _drain_and_count(settings: Settings, log: Path, duck: Any, timeout: float) -> tuple[int, int]:
    """Run `lake serve --until-idle` on the trades table again; (rows, distinct events) stored."""
    again = start_serve(settings, log, "--tables", "stocks_trades", "--until-idle")
    assert again.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    count, distinct = (
        duck_for(duck, settings)
        .sql(f"SELECT count(*), count(DISTINCT (source, seq)) FROM {scan_sql(settings, TABLE)}")
        .fetchone()
    )
    return count, distinct


async def _ack_pending(settings: Settings) -> int:
    nc = await bus.connect(settings, name="test-info")
    try:
        stream, durable, _ = bus.consumer_target(TABLE)
        state = await bus.consumer_state(bus.jetstream(nc, settings), stream, durable)
        return 0 if state is None else state.ack_pending
    finally:
        await nc.close()


def _buffered(port: int) -> float:
    try:
        return _value(_metrics(port), "lake_ingest_buffer_events", "stocks_trades")
    except OSError:
        return -1.0


def _kill_nats(server: NatsServer) -> None:
    """SIGKILL by PID (no lame-duck goodbye to the clients), reaped."""
    assert server.process.pid is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.stop(5)


def _sigterm_within(proc: subprocess.Popen[bytes], log: Path, *, resume: bool = False) -> int:
    """SIGTERM `proc` (then SIGCONT if `resume`); its exit code, which must come within the grace
    period and a margin."""
    proc.send_signal(signal.SIGTERM)
    if resume:
        proc.send_signal(signal.SIGCONT)
    try:
        return proc.wait(timeout=GRACE + MARGIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"lake serve still running {GRACE + MARGIN:g} s after SIGTERM with NATS down:\n"
            + log.read_text()[-2000:]
        ) from None


def test_sigterm_with_nats_down_exits_within_grace_and_loses_nothing(tmp_path: Path, duck) -> None:
    """NATS killed (1) while a batch (a dead letter in it) is buffered, (2) while the writer
    waits to recreate its consumer: SIGTERM exits 0 within the grace period, the buffer of (1)
    committed, its acks, dead-letter publish and lease release skipped; after NATS comes back a
    writer stores every event once.
    Budget: about 15 s (three `lake serve` starts, a 2 s lease expiry)."""
    with run_nats_server(tmp_path / "nats") as server:
        settings = settings_for(
            tmp_path,
            server.url,
            LAKE_BRONZE_BATCH_SIZE="200",
            LAKE_BRONZE_BATCH_SECONDS="60",  # the second 100 stay buffered
            LAKE_SHUTDOWN_GRACE_SECONDS=str(GRACE),
            LAKE_WRITER_LEASE_SECONDS="2",  # the unreleased lease expires quickly
        )
        items = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(400)]
        items[250] = ("market.stocks.trades", b"{not json", None)  # a dead letter in the buffer
        log, port = tmp_path / "serve.log", free_port()
        publish(settings, items[:200], acked=True)
        proc = start_serve(settings, log, "--tables", "stocks_trades", "--metrics-port", str(port))
        try:
            wait_for(lambda: watermark(settings, TABLE) == 200, 30, "the first batch", proc)
            publish(settings, items[200:300], acked=True)
            wait_for(lambda: asyncio.run(_ack_pending(settings)) == 100, 10, "a delivery", proc)
            # Delivered is not yet buffered: on a loaded machine the writer may still be reading
            # them from the socket, and what it has not read is lost with the connection (to be
            # read again later). The 99 events of the 100 messages (one is the dead letter):
            wait_for(lambda: _buffered(port) == 99, 10, "a buffer of 99 events", proc)
            # Frozen, the process sees the lost connection and the SIGTERM together: NATS goes
            # down as the buffer is flushed.
            proc.send_signal(signal.SIGSTOP)
            _kill_nats(server)
            code = _sigterm_within(proc, log, resume=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert code == 0, text[-2000:]
        assert watermark(settings, TABLE) == 300, text[-2000:]  # the buffer was committed
        assert "NATS unreachable at shutdown" in text and "Traceback" not in text, text[-2000:]
        assert "dead letter publish to NATS skipped" in text, text[-2000:]

        server.start()
        publish(settings, items[300:], acked=True)
        log2 = tmp_path / "serve2.log"
        proc = start_serve(settings, log2, "--tables", "stocks_trades")
        try:
            wait_for(lambda: "active on consumer" in log2.read_text(), 30, "a new writer", proc)
            _kill_nats(server)
            wait_for(lambda: "re-reading from" in log2.read_text(), 10, "a reset", proc)
            code = _sigterm_within(proc, log2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log2.read_text()
        assert code == 0, text[-2000:]
        assert "Traceback" not in text, text[-2000:]

        server.start()
        assert _drain_and_count(settings, log, duck, timeout=60) == (399, 399)
        assert count_rows(duck_for(duck, settings), settings, "bronze.dead_letters") == 1


def test_a_lost_connection_commits_the_buffer_before_reading_again(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """The service's NATS disconnect handler makes each writer re-read from its committed
    position. The buffer held then came in order with no gap: it is committed first, not
    dropped (a SIGTERM that came with a lost connection found nothing left to flush, and
    every blip re-read the whole buffer)."""
    from support.wait import await_until

    from iceberg_lake.ingest.service import LakeService

    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="600"
    )
    items = [("market.stocks.trades", encode(make_event(TABLE, i)), None) for i in range(100)]

    async def scenario() -> None:
        service = LakeService(settings, [TABLE])
        runner = asyncio.create_task(service.run())
        try:
            await publish_async(settings, items)
            await await_until(
                lambda: [w.batch.events for w in service.writers] == [100],
                30,
                "100 events buffered",
            )
            (writer,) = service.writers
            writer.request_reset()  # what the disconnect handler does
            # No flush is due for 600 s: only the reset commits the buffer.
            await await_until(lambda: writer.committed_events == 100, 30, "the buffer committed")
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
    assert watermark(settings, TABLE) == 100


def test_a_task_that_swallows_a_cancellation_is_cancelled_until_it_ends() -> None:
    """Python 3.11's `asyncio.wait_for` (under every nats-py request) swallows a cancellation
    whose answer arrived in the same loop step: the lease keeper, cancelled once, kept renewing
    a lease no writer used, so no standby could take over (ops8)."""
    from iceberg_lake.ingest.writer import cancel_until_done

    async def keeper(swallowed: list[int]) -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if not swallowed:  # the first cancellation is lost, as in wait_for
                    swallowed.append(1)
                    continue
                raise

    async def cancel_once() -> bool:
        task = asyncio.create_task(keeper([]))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
        running = not task.done()
        task.cancel()
        return running

    async def until_done() -> bool:
        task = asyncio.create_task(keeper([]))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(cancel_until_done(task, poll=0.1), 5)
        return task.cancelled()

    assert asyncio.run(cancel_once()), "one cancel must be swallowed here, or this proves nothing"
    assert asyncio.run(until_done())

    async def caller_cancelled_meanwhile() -> tuple[bool, bool]:
        # The writer's own cleanup (`cancel_until_done(keeper)`) is cancelled in its turn by
        # the service's repeated cancel of the writer: the keeper must still end (review11).
        task = asyncio.create_task(keeper([]))
        await asyncio.sleep(0.05)
        cleanup = asyncio.create_task(cancel_until_done(task, poll=0.5))
        await asyncio.sleep(0)  # the cleanup's first cancel is swallowed by the keeper
        cleanup.cancel()
        await asyncio.wait([cleanup], timeout=5)
        return task.done(), cleanup.cancelled()

    assert asyncio.run(caller_cancelled_meanwhile()) == (True, True)


def test_ctrl_c_cuts_short_a_shutdown_stuck_on_a_frozen_nats(tmp_path: Path) -> None:
    """A shutdown waiting on a NATS that stopped answering (frozen: the connection looks up)
    is bounded by the grace period; a second Ctrl-C ends it at once, as before SIGTERM was
    kept handled to the end (review16).
    Budget: ~5 s."""
    with run_nats_server(tmp_path / "nats") as server:
        settings = settings_for(tmp_path, server.url, LAKE_SHUTDOWN_GRACE_SECONDS="30")
        log = tmp_path / "serve.log"
        publish(settings, [("market.stocks.trades", encode(make_event(TABLE, 0)), None)])
        proc = start_serve(settings, log, "--tables", "stocks_trades")
        nats_pid = server.process.pid
        try:
            wait_for(lambda: "active on consumer" in log.read_text(), 30, "the writer", proc)
            os.kill(nats_pid, signal.SIGSTOP)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # the shutdown is under way, waiting on the frozen server
            assert proc.poll() is None, log.read_text()[-2000:]
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=20)
            took = time.monotonic() - began
        finally:
            os.kill(nats_pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 130 and took < 5, (code, took, log.read_text()[-2000:])
    assert "Traceback" not in log.read_text()
