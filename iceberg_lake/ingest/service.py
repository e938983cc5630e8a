"""`LakeService`: the writers of every Bronze/Gold table in one asyncio process.

Start: connect to NATS, create the streams, create missing tables, start one `ConsumerWriter`
per consumer. Each writer takes its consumer's lease (or waits as a hot standby while another
process holds it) and then recreates the consumer at its committed position. Run until `stop()`,
a SIGTERM/SIGINT, or — with `stop_when_idle` — until every consumer is drained and everything is
committed. Stop: each writer flushes, commits and acks what it buffered (a commit that keeps
failing gets `shutdown_grace_seconds`, then `run` raises `ShutdownTimeoutError` with nothing
acked), releases its lease, then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, redact_url
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import (
    BusClosedError,
    LakeError,
    ShutdownTimeoutError,
    TransientError,
)
from iceberg_lake.ingest.retry_log import RetryLog
from iceberg_lake.ingest.writer import ConsumerWriter, cancel_until_done
from iceberg_lake.tables import registry

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

#: How often the service polls consumer lag (metrics, idle detection).
LAG_POLL_SECONDS = 0.25
#: How often each active writer checks that its stream is still the one its committed position
#: counts in (`ConsumerWriter.check_stream`; one STREAM.INFO request each).
STREAM_CHECK_SECONDS = 2.0
#: At shutdown, the least time given to the lease releases, the ack flush and the close.
CLOSE_FLOOR_SECONDS = 1.0


def default_targets() -> list[str]:
    """Every table fed from the bus, plus the schema-inference consumer."""
    return [d.identifier for d in registry().ingest_tables()] + [bus.INFERRED_TARGET]


def resolve_targets(tables: list[str] | None) -> list[str]:
    """Validate `--tables` (identifiers, bare names, or `inferred`).

    Raises:
        LakeError: a name that is not fed from the bus.
    """
    if not tables:
        return default_targets()
    known = {d.identifier: d for d in registry().ingest_tables()}
    out: list[str] = []
    for name in tables:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            if part == bus.INFERRED_TARGET:
                out.append(part)
                continue
            matches = [t for t in known if t == part or t.split(".", 1)[1] == part]
            if not matches:
                choices = ", ".join([*sorted(known), bus.INFERRED_TARGET])
                raise LakeError(f"'{part}' is not a table the writers fill (choose from {choices})")
            out.append(matches[0])
    return list(dict.fromkeys(out))


class LakeService:
    """The writers of the chosen tables in one process.

    Args:
        settings: the lake's settings.
        tables: table identifiers (default: every Bronze/Gold table fed from the bus plus the
            schema-inference consumer).
    """

    def __init__(self, settings: Settings, tables: list[str] | None = None) -> None:
        self.settings = settings
        self.targets = resolve_targets(tables)
        self.writers: list[ConsumerWriter] = []
        self._stop = asyncio.Event()
        self._nc: Client | None = None
        self._closing = False
        #: The lease bucket's TTL in effect (it may be longer than the setting).
        self._lease_ttl = settings.writer_lease_seconds

    async def stop(self) -> None:
        """Ask the service to stop: writers flush, commit and ack, then `run` returns."""
        self._stop.set()

    async def _on_disconnect(self) -> None:
        if self._closing:
            return
        for w in self.writers:
            w.request_reset()

    async def run(
        self,
        stop_when_idle: bool = False,
        idle_seconds: float = 1.0,
        *,
        ignore_sigterm_after: bool = False,
    ) -> None:
        """Run the writers.

        SIGTERM and SIGINT (in the main thread) stop the service as `stop` does. SIGTERM stays
        handled through the whole shutdown, and its handler is then swapped in one step for
        the one before, or for "ignore" (`ignore_sigterm_after`: `lake serve`, which has
        nothing left to stop): never the default action in between, which a SIGTERM repeated
        every 2 ms hit (CI, `test_sigterm_repeated_through_the_shutdown_still_flushes_and_exits_0`).

        Args:
            stop_when_idle: return once every consumer has no pending messages, nothing is
                buffered and everything is committed, for `idle_seconds` in a row.
            idle_seconds: how long the idle state must last.
            ignore_sigterm_after: leave SIGTERM ignored when the service has stopped.

        Raises:
            LakeError: NATS or the catalog cannot be reached at start.
        """
        self._stop = asyncio.Event()
        self._closing = False
        # serve never creates the bucket: a mistyped LAKE_WAREHOUSE must fail, not be created
        await asyncio.to_thread(LakeCatalog(self.settings).init, create_bucket=False)
        nc = await bus.connect(self.settings, name="lake-serve", on_disconnect=self._on_disconnect)
        self._nc = nc
        js = bus.jetstream(nc, self.settings)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            installed.append(signal.SIGINT)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to stop
                loop.call_soon_threadsafe(self._stop.set)

        # Not the loop's own handler for SIGTERM: removing that one restores the default
        # action first, and a SIGTERM in between killed the process after its last line.
        previous_sigterm: Any = None
        sigterm_handled = False
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
            sigterm_handled = True
        deadline: float | None = None
        stopped = False
        try:
            with bus.bus_errors("setting up the JetStream streams and the lease bucket"):
                await bus.ensure_streams(js, self.settings)
                leases = await bus.lease_bucket(js, self.settings)
                self._lease_ttl = leases.ttl
            holder = bus.lease_holder_id()
            # All pull requests of this connection together stay within the byte budget, but
            # each may hold at least the largest message the server accepts.
            share = max(
                self.settings.fetch_max_bytes // max(1, len(self.targets)),
                int(nc.max_payload) + 4096,
            )
            self.writers = [
                ConsumerWriter(
                    self.settings,
                    t,
                    js,
                    nc=nc,
                    leases=leases,
                    holder=holder,
                    fetch_max_bytes=share,
                    flush_when_drained=stop_when_idle,
                )
                for t in self.targets
            ]
            log.info(
                "lake serve: %d writers (%s), NATS %s, holder %s",
                len(self.writers),
                ", ".join(self.targets),
                redact_url(self.settings.nats_url),
                holder,
            )
            tasks = [asyncio.create_task(w.run(self._stop)) for w in self.writers]
            watcher = asyncio.create_task(self._watch(stop_when_idle, idle_seconds))
            stopper = asyncio.create_task(self._stop.wait())
            # A stop, or a task that fails (a bug, a shutdown timeout), stops the others: they
            # flush, commit and ack what they hold, and `run` raises the first error.
            await asyncio.wait([*tasks, watcher, stopper], return_when=asyncio.FIRST_COMPLETED)
            self._stop.set()
            stopper.cancel()
            # The whole shutdown is bounded by the grace period: the writers' commits by their
            # own grace deadline (they raise `ShutdownTimeoutError`), anything else (a NATS
            # call waiting out its timeout) is cancelled here, a moment later; nothing acked.
            deadline = time.monotonic() + self.settings.shutdown_grace_seconds
            if not watcher.done():
                watcher.cancel()
            _, late = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_seconds + 1)
            await asyncio.gather(*(cancel_until_done(t) for t in late))
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            errors: list[BaseException] = []
            if late:
                errors.append(
                    ShutdownTimeoutError(
                        f"lake serve: {len(late)} writer(s) still stopping after the "
                        f"{self.settings.shutdown_grace_seconds:g} s shutdown grace period; "
                        "exiting without acking (the messages stay in the stream)"
                    )
                )
            for t, what in [*zip(tasks, self.targets, strict=True), (watcher, "lag watcher")]:
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    log.error("%s failed: %s", what, _describe(exc))
                    errors.append(exc)
            if errors:
                raise errors[0]
            stopped = True
        finally:
            self._closing = True
            # Ctrl-C again (a person) cuts the bounded shutdown short, as before; SIGTERM stays
            # handled to the end (see below).
            if signal.SIGINT in installed:
                loop.remove_signal_handler(signal.SIGINT)
                installed.remove(signal.SIGINT)
            try:
                await self._disconnect(nc, deadline)
                if stopped:
                    log.info(
                        "lake serve stopped: %d events committed",
                        sum(w.committed_events for w in self.writers),
                    )
            finally:
                # Only now: a SIGTERM repeated during the shutdown (a dying parent's threads
                # each send its parent-death signal) must not end the process half-way.
                if sigterm_handled:
                    before = signal.SIG_DFL if previous_sigterm is None else previous_sigterm
                    signal.signal(
                        signal.SIGTERM, signal.SIG_IGN if ignore_sigterm_after else before
                    )
                for sig in installed:
                    loop.remove_signal_handler(sig)

    async def _disconnect(self, nc: Client, deadline: float | None) -> None:
        """Release the leases, flush the acks and close, within the shutdown deadline.

        NATS unreachable: each of these would wait out its own timeout (10 s per lease, 5 s
        for the flush), so they are skipped: the acks are lost (the next writer starts after
        the watermark, past what was committed) and the leases expire after their TTL.
        """
        # A floor for a stop that used up the grace (or a grace of 0): a healthy NATS still
        # takes the releases and the acks.
        budget = max(CLOSE_FLOOR_SECONDS, (deadline or time.monotonic()) - time.monotonic())
        end = time.monotonic() + budget
        if not nc.is_connected:
            log.warning(
                "lake serve: NATS unreachable at shutdown: acks and lease releases skipped "
                "(committed messages are skipped by the watermark; the leases expire in %g s)",
                self._lease_ttl,
            )
            for w in self.writers:
                await w.close(timeout=0)
        else:
            for w in self.writers:
                await w.close(timeout=max(0.0, end - time.monotonic()))
            # Acks are plain publishes: flush them to the server before closing.
            try:
                await nc.flush(timeout=max(1, min(5, int(end - time.monotonic()))))
            except Exception as exc:  # noqa: BLE001 - reported, the close goes on
                log.warning(
                    "lake serve: NATS did not answer the final flush at shutdown (%s): acks it "
                    "did not get are delivered again and skipped by the watermark",
                    type(exc).__name__,
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), max(0.1, end - time.monotonic()))

    async def _watch(self, stop_when_idle: bool, idle_seconds: float) -> None:
        """Poll consumer lag (metric) and, when asked, stop once everything is stored; every
        `STREAM_CHECK_SECONDS`, check each active writer's stream.

        NATS not answering counts as not idle (warned once, then rate-limited); any other
        error ends the service.

        Raises:
            StreamMismatchError: a stream was deleted and created again (or NATS lost its
                storage) under a running writer: the service stops.
            BusClosedError: the NATS client closed the connection for good.
        """
        idle_since: float | None = None
        retry = RetryLog(log, "lake serve: reading consumer lag")
        checked = time.monotonic()
        while not self._stop.is_set():
            closed = bus.closed_for_good(self._nc) if self._nc is not None else None
            if closed is not None:
                # Every later call fails on a dead client (ingest17: serve retried forever,
                # ingesting nothing): stop, so that the process is started again.
                raise BusClosedError(
                    f"NATS closed the connection for good ({closed}); lake serve stops so "
                    "that it can be started again (nothing uncommitted was acked)"
                )
            if time.monotonic() - checked >= STREAM_CHECK_SECONDS:
                checked = time.monotonic()
                for w in self.writers:
                    if not w.active:
                        continue
                    try:
                        await w.check_stream()  # StreamMismatchError ends the service
                    except TransientError as exc:  # NATS unreachable: the next round checks
                        log.debug("stream check of %s failed: %s", w.target, exc)
            all_idle = answered = True
            for w in self.writers:
                try:
                    state = await w.consumer_state()
                except TransientError as exc:  # NATS reconnecting or restarting
                    retry.failed(str(exc))
                    all_idle = answered = False
                    continue
                if state is None:  # the writer has not created its consumer yet
                    all_idle = False
                    continue
                pending, ack_pending = state
                if pending or ack_pending or not w.idle():
                    all_idle = False
            if answered:
                retry.succeeded()
            if stop_when_idle:
                now = time.monotonic()
                if all_idle:
                    idle_since = idle_since or now
                    if now - idle_since >= idle_seconds:
                        log.info("all consumers drained and committed; stopping")
                        self._stop.set()
                        return
                else:
                    idle_since = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), LAG_POLL_SECONDS)

    @property
    def committed_events(self) -> int:
        """Rows committed by all writers since `run` started."""
        return sum(w.committed_events for w in self.writers)


def _describe(exc: BaseException) -> str:
    """One line for a task's error: the message of a `LakeError`, else its type too."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, LakeError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
