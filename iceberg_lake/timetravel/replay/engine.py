"""Deterministic, snapshot-pinned replay of several tables merged by event time.

`ReplayEngine` resolves one snapshot per table when it is created (the pins, in
`ReplayEngine._resolve_pins`), then streams the events of `[start_ns, end_ns)` from those
snapshots, merged across tables by `ts_event_ns`, as Python events (`events()`, iteration, async
iteration), as Arrow record batches (`batches()`), or to NATS (`publish()`).

Order (the documented tie-break). Events are ordered by the key

    (ts_event_ns, table position in `tables`, row order within the table)

where the row order within a table is `ts_event_ns`, then the table's declared sort order
(Silver's sort key, e.g. `level_id` for Gold), then the partition key (`symbol`/`underlying`),
then `ts_recv_ns`, `source`, `seq`, then every remaining column in schema order (nulls first;
`iceberg_lake.timetravel.order`, the one definition bars and as-of joins use too; a manifest
names its rule, `tie_break`, and `from_manifest` replays in that rule). That is a total order
over distinct rows, defined by the data alone, so it does not depend on how the rows are split
into files: recompacting Silver, or appending newer data the pins do not see, leaves the sequence
unchanged.

How it runs: one pipeline behind every output (`replay.window.WindowPipeline`), reading each
table window by window from its pinned files (`replay.source.PinnedSource`).

Outputs.

* `batches()` yields `pyarrow.RecordBatch`es in replay order (`verify=False`: without building
  the canonical encoding and hash, about a third of the CPU); `table_batches()` one table's rows
  at a time with a `replay_seq` merge key (`replay.arrow`).
* `events()` yields `ReplayEvent`s (table, subject, canonical payload bytes, `ts_event_ns`); the
  row dict is decoded from the payload only when `event.row` is read. Iterating the engine
  yields dicts (`table` + row) as before (`replay.events`).
* `publish()` sends the payloads to NATS in batches (core publish, flush per batch), paced by
  event time with `speed` (`replay.publish`).

Reproducibility: `manifest()` records the pins, the range, the event count and the sequence
hash; `ReplayEngine.from_manifest()` replays exactly the same pins (`replay.manifest`).

Example::

    engine = ReplayEngine(settings, ["silver.stocks_trades", "silver.futures_mbp10"],
                          start_ns, end_ns, as_of="bt-2025-12-16")
    for batch in engine.batches():          # Arrow, ~10x faster than per-event Python
        strategy.on_batch(batch)
    for event in engine:
        strategy.on_event(event)            # {"table": "silver.stocks_trades", "ts_event_ns": ...}
    engine.write_manifest("replay.json")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from iceberg_lake.catalog import CatalogSource, as_catalog
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import require_int_ns, seconds_ns
from iceberg_lake.timetravel.order import TIE_BREAK_RULE, TIE_BREAKS, rule_of
from iceberg_lake.timetravel.replay.arrow import merged_batches, table_batches, union_schema
from iceberg_lake.timetravel.replay.events import (
    EventSink,
    Progress,
    ReplayEvent,
    window_dicts,
    window_events,
)
from iceberg_lake.timetravel.replay.manifest import MANIFEST_FORMAT, describe_as_of, iso_utc
from iceberg_lake.timetravel.replay.pacing import Pacer
from iceberg_lake.timetravel.replay.publish import (
    NatsSink,
    check_publishable,
    frame_headers,
    publish_windows,
)
from iceberg_lake.timetravel.replay.source import PinnedSource
from iceberg_lake.timetravel.replay.window import WindowPipeline
from iceberg_lake.timetravel.snapshots import (
    AsOfSpec,
    RecordedSnapshotId,
    check_pinned_tables,
    pin_for,
    pin_snapshots,
    replay_pin_name,
    resolve_as_of,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["ReplayEngine"]

#: How long (wall clock) after the window's end a following live replay still waits for events
#: stamped inside the window: a feed's publish lag (batching publishers, a reconnect). Events
#: that arrive later are not in that replay (a replay of the committed window holds them).
DEFAULT_LATENESS_SECONDS = 5.0
MAX_LATENESS_SECONDS = 3600.0


class ReplayEngine:
    """Snapshot-pinned, deterministic replay of several tables merged by event time.

    Creating the engine resolves the pins; iterating it reads nothing but those snapshots, so a
    replay is unaffected by later appends, compactions or schema changes. Each iteration starts
    from the beginning and recomputes the manifest's count and hash.

    Args:
        settings: lake settings, or an open `LakeCatalog`.
        tables: table identifiers; their order is the tie-break for equal `ts_event_ns`.
        start_ns: inclusive start of the event-time window (Unix ns).
        end_ns: exclusive end of the window.
        as_of: one pin for all tables or a mapping per table (snapshot id, tag, timestamp);
            None pins each table's current snapshot.
        speed: None or 0 = as fast as possible; N = N× real time.
        batch_rows: largest record batch `batches()` yields.
        window_rows: rows (estimated from file statistics, all tables) per read window; hours
            are grouped up to it, denser hours split. Bounds memory: ~1.3 KB per row per window.
        prefetch: prepare the next window on a background thread.
        pin: tag the snapshots read (`replay-<hash>`) so they survive expiry (`_pin`).
        live: continue past the pinned (current) snapshots into the JetStream tail after their
            watermarks (`iceberg_lake.timetravel.live.LiveTail`); `follow` keeps reading as
            events arrive until the window's end has passed, plus `lateness_seconds` (wall
            clock; None: `DEFAULT_LATENESS_SECONDS`) for events stamped inside the window that
            arrive after it.
        tie_break: the tie-break rule (`order.TIE_BREAKS`); `from_manifest` sets the one its
            manifest was recorded with.

    Raises:
        TimeTravelError: empty table list, bad window, unknown pin, table without event time.
        TypeError: `start_ns` or `end_ns` is not an int (a float would lose nanoseconds).
        UnknownTableError: a table does not exist.
    """

    def __init__(
        self,
        settings: CatalogSource,
        tables: Sequence[str],
        start_ns: int,
        end_ns: int,
        as_of: AsOfSpec = None,
        *,
        speed: float | None = None,
        batch_rows: int = 65_536,
        window_rows: int = 400_000,
        prefetch: bool = True,
        pin: bool = True,
        live: bool = False,
        follow: bool = False,
        lateness_seconds: float | None = None,
        tie_break: int = TIE_BREAK_RULE,
    ) -> None:
        self.catalog = as_catalog(settings)
        if tie_break not in TIE_BREAKS:
            raise TimeTravelError(f"no tie-break rule {tie_break} (rules: {sorted(TIE_BREAKS)})")
        self.tie_break = tie_break
        tables = list(tables)
        if not tables:
            raise TimeTravelError("replay needs at least one table")
        if len(set(tables)) != len(tables):
            raise TimeTravelError(f"a table is listed twice: {', '.join(tables)}")
        require_int_ns(start_ns, "start_ns")
        require_int_ns(end_ns, "end_ns")
        if start_ns >= end_ns:
            raise TimeTravelError(
                f"replay start ({iso_utc(start_ns)}) must be before end ({iso_utc(end_ns)})"
            )
        # NaN passed `speed < 0`, replayed unpaced and wrote `"speed": NaN`, which is not JSON.
        if speed is not None and not (math.isfinite(speed) and speed >= 0):
            raise TimeTravelError(
                f"speed must be a finite number >= 0 (0: as fast as possible), got {speed}"
            )
        if lateness_seconds is None:
            lateness_seconds = DEFAULT_LATENESS_SECONDS
        if not 0 <= lateness_seconds <= MAX_LATENESS_SECONDS:
            raise TimeTravelError(
                f"lateness must be 0-{MAX_LATENESS_SECONDS:g} seconds, got {lateness_seconds:g}"
            )
        seconds_ns(lateness_seconds)  # finer than a nanosecond: refused here, not mid-replay
        self.tables = tables
        self.start_ns, self.end_ns = int(start_ns), int(end_ns)
        self.as_of = as_of
        self.speed = speed or None
        self.batch_rows = batch_rows
        inference: Any = None
        if live and as_of is None:
            from iceberg_lake.timetravel.live.inferred import inference_start
            from iceberg_lake.timetravel.live.source import require_tails

            require_tails(self.catalog, tables)
            # Before the tables are loaded: rows schema inference acked by then are in them.
            inference = inference_start(self.catalog, tables)
        self._sources = self._resolve_pins()
        self.pins: dict[str, int | None] = {s.identifier: s.snapshot_id for s in self._sources}
        #: The windows of every output, with the manifest's count and hash.
        self._pipeline = WindowPipeline(
            self.catalog,
            self._sources,
            self.start_ns,
            self.end_ns,
            window_rows=window_rows,
            prefetch=prefetch,
        )
        self._live: Any = None
        if live:
            from iceberg_lake.timetravel.live.continuation import LiveTail

            self._live = LiveTail(
                self, follow=follow, lateness_seconds=lateness_seconds, inference=inference
            )
        #: Called before the replay waits (pacing by `speed`, or the live tail waiting for
        #: arrivals): a consumer that buffers its output flushes it here, so what was
        #: delivered is readable while the replay waits (`lake replay` to a pipe or a file).
        self.before_wait: Callable[[], None] | None = None
        #: Events handed to NATS by the last `publish()` so far (an interrupted one included;
        #: counted when queued, so a batch the lost connection refused counts too).
        self.published = 0
        #: The tag protecting the snapshots read (None: `pin=False`); see `_pin`.
        self.pin_tag: str | None = None
        #: Recorded in the manifest as they are (how the window was chosen, e.g. the trading
        #: session and calendar version `lake replay --session` took); never read back.
        self.window_origin: dict[str, Any] = {}
        if pin:
            self._pin()
        self._schema: pa.Schema | None = None

    @property
    def window_rows(self) -> int:
        """Rows (estimated) per read window."""
        return self._pipeline.window_rows

    @window_rows.setter
    def window_rows(self, value: int) -> None:
        self._pipeline.window_rows = value

    @property
    def prefetch(self) -> bool:
        """Whether the next window is prepared on a background thread."""
        return self._pipeline.prefetch

    @prefetch.setter
    def prefetch(self, value: bool) -> None:
        self._pipeline.prefetch = value

    @property
    def partition_reads(self) -> int:
        """Reads of the current iteration (one per table and read window or day): evidence
        of bounded memory, with `max_partition_rows`."""
        return self._pipeline.partition_reads

    @property
    def max_partition_rows(self) -> int:
        """Rows of the largest read of the current iteration."""
        return self._pipeline.max_partition_rows

    def _resolve_pins(self) -> list[PinnedSource]:
        """The one place pins are resolved: one `PinnedSource` (table + snapshot id) per
        table."""
        check_pinned_tables(self.as_of, self.tables)
        sources = []
        for ident in self.tables:
            definition = self.catalog.definition(ident)
            table = self.catalog.load_table(ident)
            sid = resolve_as_of(table, pin_for(self.as_of, ident))
            sources.append(PinnedSource(definition, table, sid, self.tie_break))
        return sources

    @classmethod
    def from_manifest(
        cls, settings: CatalogSource, manifest: Mapping[str, Any], **kwargs: Any
    ) -> ReplayEngine:
        """An engine that replays exactly the pins and window of `manifest`.

        A table whose pin is null (empty at the time) is read as empty; events tied in one
        nanosecond are ordered by the tie-break rule the manifest names (`tie_break`), so a
        manifest recorded before a rule change reproduces its hash. Compare the manifest of
        the replay with `manifest` (`compare_manifests`) to check it reproduced the recorded
        sequence; `lake replay --from-manifest` does, and exits 1 when it did not.

        Raises:
            TimeTravelError: a tie-break rule this version does not know; or `manifest` was
                recorded by a live replay (`live=True`) that
                delivered events from the JetStream tail: no snapshot it names holds those, so
                it cannot be reproduced (replay its window again from the snapshots committed
                since). A live manifest without tail events is an ordinary one.
        """
        live = manifest.get("live")
        if isinstance(live, Mapping) and live.get("tail_events") != 0:
            tail = live.get("tail_events")
            raise TimeTravelError(
                f"the manifest was recorded by a live replay: {tail} of its "
                f"{manifest.get('event_count')} events came from the JetStream tail, which no "
                "pinned snapshot holds, so it cannot be reproduced; replay the window again from "
                "the snapshots committed since: lake replay --tables "
                f"{','.join(manifest.get('tables', []))} --start {manifest.get('start_ns')} "
                f"--end {manifest.get('end_ns')}"
            )
        snapshots = dict(manifest["snapshots"])
        pin = kwargs.pop("pin", True)
        engine = cls(
            settings,
            list(manifest["tables"]),
            int(manifest["start_ns"]),
            int(manifest["end_ns"]),
            as_of={t: RecordedSnapshotId(sid) for t, sid in snapshots.items() if sid is not None},
            pin=False,
            tie_break=rule_of(manifest.get("tie_break", TIE_BREAKS[1])),
            **kwargs,
        )
        for source in engine._sources:
            if snapshots.get(source.identifier) is None:
                source.snapshot_id = None
        engine.pins = {s.identifier: s.snapshot_id for s in engine._sources}
        if pin:
            engine._pin()
        return engine

    def _pin(self) -> None:
        """Protect every snapshot this replay reads with one tag named from its manifest.

        `replay-<hash of tables, pins and window>`, kept `LAKE_REPLAY_PIN_MAX_AGE_DAYS`: writer
        expiry, `lake maintain expire-snapshots` and other engines' expiry keep the snapshots,
        so `--from-manifest` reproduces the run later (`snapshots.pin_snapshots`).
        """
        self.pin_tag = replay_pin_name(self.tables, self.pins, self.start_ns, self.end_ns)
        days = self.catalog.settings.replay_pin_max_age_days
        pin_snapshots(self.catalog, self.pins, self.pin_tag, days)

    # ---- seam for the live tail (`timetravel.live.LiveTail`) ----------------------------------
    # What an extension delivering events past the pinned snapshots may use; the window
    # pipeline stays private.

    @property
    def pinned_sources(self) -> tuple[PinnedSource, ...]:
        """The tables in tie-break order, each with its pinned snapshot (read-only use:
        `definition`, `table`, `identifier`, `columns`, `order`)."""
        return tuple(self._sources)

    def set_complete(self, complete: bool) -> None:
        """Set the manifest's `complete` flag for the current iteration (the live tail clears
        it while it reads past the pinned snapshots and sets it when it has read its range)."""
        self._pipeline.complete = complete

    def record_event(self, event: ReplayEvent) -> None:
        """Count and hash `event`, delivered after the pinned windows, exactly as the window
        pipeline counts and hashes its own events, so the manifest covers it."""
        self._pipeline.record(event.table, event.payload)

    # ---- Arrow output (`replay.arrow`) --------------------------------------------------------

    def schema(self) -> pa.Schema:
        """The schema of `batches()`: `table`, then the union of the tables' columns."""
        if self._schema is None:
            self._schema = union_schema(self.catalog, self._sources, self.start_ns)
        return self._schema

    def batches(self, verify: bool = True) -> Iterator[pa.RecordBatch]:
        """Every event of the window as Arrow record batches in replay order (no pacing).

        Same order, count and sequence hash as `events()`; the manifest is updated as windows are
        consumed. See `iceberg_lake.timetravel.replay.arrow` for the batch layout.

        Args:
            verify: compute the canonical encoding and the sequence hash (about half the CPU of
                an Arrow replay). False skips both: same batches, the manifest's
                `sequence_hash` is None (use it when the pins alone identify the run).

        Yields:
            Record batches of at most `batch_rows` rows with `schema()`.
        """
        yield from merged_batches(self._pipeline, self.schema(), self.batch_rows, verify)

    def table_batches(self, verify: bool = True) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Every event of the window as per-table Arrow record batches with a global merge key.

        The other Arrow layout (`batches()` interleaves the tables into one union schema): each
        batch holds one table's rows in that table's own columns, in replay order within the
        table, after a `replay_seq` column (int64), the event's position in the replay's merged
        sequence (0-based, the order of `batches()` and `events()`). Merging every batch by
        `replay_seq` gives exactly that sequence; a vectorised backtest that works table by
        table (and aligns by time or `replay_seq`) skips building the union. Windows come in
        order, tables in `tables` order within a window. Same count and sequence hash as
        `batches()`.

        Args:
            verify: compute the canonical encoding and the sequence hash (False: the manifest's
                `sequence_hash` is None).

        Yields:
            `(table identifier, record batch)`, batches of at most `batch_rows` rows.
        """
        yield from table_batches(self._pipeline, self.batch_rows, verify)

    # ---- the event stream (`replay.events`) ---------------------------------------------------

    def events(self) -> Generator[ReplayEvent, None, None]:
        """Every event of the window in replay order (no pacing), updating the manifest."""
        for window in self._pipeline.windows():
            yield from window_events(window, self._sources)

    def all_events(self) -> Iterator[ReplayEvent]:
        """`events()`, continued into the live tail when the engine is live."""
        if self._live is None:
            return self.events()
        return self._live.events(self.events())

    def paced_events(self) -> Iterator[ReplayEvent]:
        """`events()` paced by `speed` (sleeps between events when replaying in real time)."""
        if not self.speed:
            yield from self.all_events()
            return
        pacer = Pacer(self.speed)
        for event in self.all_events():
            delay = pacer.delay(event.ts_event_ns)
            if delay > 0:
                self.waiting()
                time.sleep(delay)
            yield event

    def waiting(self) -> None:
        """Call `before_wait` (the replay is about to wait for time to pass or events to
        arrive)."""
        if self.before_wait is not None:
            self.before_wait()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events as dicts (`table` plus the row's columns), paced by `speed`."""
        if self.speed or self._live is not None:
            # One at a time: a paced or live event is due when it is due, not when a chunk fills.
            for event in self.paced_events():
                yield event.as_dict()
            return
        for window in self._pipeline.windows():
            yield from window_dicts(window, self._sources)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Async iteration: windows are prepared on a worker thread, paced by `speed`."""
        async for event in self.aevents():
            yield event.as_dict()

    async def aevents(self) -> AsyncIterator[ReplayEvent]:
        """`events()` for asyncio code: DuckDB reads run off the event loop, pacing awaits."""
        pacer = Pacer(self.speed)
        if self._live is not None:
            # Live: history and tail from one iterator on a worker thread (the tail waits for
            # arrivals), one event at a time so nothing that arrived waits for a chunk to fill.
            source, done = self.all_events(), object()
            pending: asyncio.Future[Any] | None = None
            loop = asyncio.get_running_loop()
            try:
                while True:
                    # A future, not a task (a runner shutting down cancels every task), and
                    # shielded: cancelled here, the thread still runs `next` (see below).
                    pending = loop.run_in_executor(None, next, source, done)
                    event = await asyncio.shield(pending)
                    pending = None
                    if event is done:
                        break
                    assert isinstance(event, ReplayEvent)
                    if self.speed and (delay := pacer.delay(event.ts_event_ns)) > 0:
                        await asyncio.sleep(delay)
                    yield event
            finally:
                # Interrupted (a signal, a cancelled task): the tail may be waiting for
                # arrivals until the window's end; it stops at its next round, the thread's
                # `next` returns, and the generator can be closed (review16: the runner waited
                # for that thread until --end, then the close failed, "already executing").
                self._live.stop()
                if pending is not None:
                    await _finish(pending)
                close = getattr(source, "close", None)  # a generator: stop it
                if close is not None:
                    await _finish(loop.run_in_executor(None, close))
            return
        async for window in self._pipeline.awindows():
            for event in window_events(window, self._sources):
                if self.speed:
                    delay = pacer.delay(event.ts_event_ns)
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield event

    # ---- sinks (`replay.publish`) ---------------------------------------------------------------

    async def run(self, sink: EventSink, progress: Progress | None = None) -> dict[str, Any]:
        """Send every event to `sink` (paced), close it, and return the manifest."""
        sent = 0
        try:
            async for event in self.aevents():
                # Counted first: a sink queues the event before its first await (see
                # `publish_windows`), where an interrupt lands.
                sent += 1
                self.published = sent
                await sink.send(event)
                if progress is not None and sent % 1_000 == 0:
                    progress(sent, event.ts_event_ns)
        finally:
            await sink.close()
        if progress is not None:
            progress(sent, self.end_ns)
        return self.manifest()

    async def publish(
        self,
        nc: Client | None = None,
        *,
        prefix: str | None = None,
        progress: Progress | None = None,
        batch: int = 4_096,
    ) -> dict[str, Any]:
        """Publish every event to NATS (core publish, one flush per batch), return the manifest.

        Each event is published as its canonical JSON row (the flat form the writers accept) on
        the table's subject, or under `prefix` (`replay` → `replay.market.stocks.trades`). With
        no prefix on a live system, the Bronze writers store the replayed events again. With
        `speed`, each batch is cut where the next event is due later than now, so pacing follows
        event time (to the millisecond) while publishing stays batched.

        Args:
            nc: a connected client (default: connect with the lake's settings, close after).
            prefix: subject prefix; None publishes on the original subjects.
            progress: called once per batch and at the end.
            batch: events between flushes (bounds the client's pending buffer).

        Raises:
            TimeTravelError: Gold tables without a prefix (their rows are flattened payloads).
        """
        check_publishable(self._sources, prefix)
        from iceberg_lake.engine import nats as bus

        self.published = 0

        def counted(sent: int, ts_ns: int) -> None:
            self.published = sent
            if progress is not None:
                progress(sent, ts_ns)

        if self._live is not None:
            # The tail arrives event by event: the generic sink path (one publish each).
            own = nc is None
            if nc is None:
                nc = await bus.connect(self.catalog.settings, name="iceberg_lake-replay")
            return await self.run(NatsSink(nc, prefix=prefix, close_client=own), progress)
        headers = frame_headers(self._sources, prefix)
        own = nc is None
        if nc is None:
            nc = await bus.connect(self.catalog.settings, name="iceberg_lake-replay")
        try:
            sent = await publish_windows(
                nc,
                self._pipeline.awindows(),
                headers,
                speed=self.speed,
                batch=batch,
                progress=counted,
            )
        finally:
            if own:
                await nc.drain()
        if progress is not None:
            progress(sent, self.end_ns)
        return self.manifest()

    # ---- manifest (`replay.manifest`) -----------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """What this replay read and produced; `complete` is False until a full iteration.

        An iteration interrupted in the pinned windows has an inexact `event_count` (the
        windows it finished) and no `sequence_hash`: the hash thread runs ahead of the
        consumer, so the hash so far covered windows never handed out (quant8). One
        interrupted in the live tail (Ctrl-C of `--follow`) has both, exact for what it
        delivered.
        """
        extra = self._live.manifest_extra() if self._live is not None else {}
        extra = extra | self.window_origin
        pipeline = self._pipeline
        return extra | {
            "format": MANIFEST_FORMAT,
            "tables": list(self.tables),
            "snapshots": dict(self.pins),
            "pin_tag": self.pin_tag,
            "as_of": describe_as_of(self.as_of),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": iso_utc(self.start_ns),
            "end": iso_utc(self.end_ns),
            "event_count": pipeline.count,
            "events_per_table": dict(pipeline.per_table),
            "sequence_hash": pipeline.sequence_hash() if pipeline.windows_done else None,
            "tie_break": TIE_BREAKS[self.tie_break],
            "speed": self.speed,
            "complete": pipeline.complete,
            "created_at": datetime.now(tz=UTC).isoformat(),
        }

    def write_manifest(self, path: str | Path) -> dict[str, Any]:
        """Write `manifest()` as JSON to `path` and return it."""
        manifest = self.manifest()
        Path(path).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


async def _finish(future: asyncio.Future[Any]) -> None:
    """Wait until `future` (a worker thread's call) is done, through any further cancellation
    of the waiting task (a second Ctrl-C): the thread runs on regardless, and what comes next
    (closing the generator it runs) must not start before it ends. Its result is dropped."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})
    if not future.cancelled():
        future.exception()  # retrieved: not logged as never retrieved
