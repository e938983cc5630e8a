"""REFERENCE COPY of `iceberg_lake/timetravel/replay.py` as it was on main before issue 16
(commit cb52186), kept only so `tests/test_replay_compat.py` can prove the new pipeline gives
the identical sequence and hash. Do not use or change it.

Deterministic, snapshot-pinned replay of several tables merged by event time.

`ReplayEngine` resolves one snapshot per table when it is created (the pins), then streams the
events of `[start_ns, end_ns)` from those snapshots, merged across tables by `ts_event_ns`.

Order (the documented tie-break). Events are ordered by the key

    (ts_event_ns, table position in `tables`, row order within the table)

where the row order within a table is `ts_event_ns`, then the table's declared sort order
(Silver's sort key, e.g. `level_id` for Gold), then the partition key (`symbol`/`underlying`),
then every remaining column in schema order (nulls first). That is a total order over distinct
rows, defined by the data alone, so it does not depend on how the rows are split into files:
recompacting Silver, or appending newer data the pins do not see, leaves the sequence unchanged.

Bounded memory. Each table is read one time partition at a time (hour; day for greeks), in time
order, through DuckDB's `iceberg_scan` of the pinned snapshot with partition pruning, and fetched
in record batches; the tables' streams are merged with `heapq.merge`. At most one partition per
table is held (by DuckDB's sort) at any time, never a whole day.

Reproducibility. `manifest()` records the tables, the snapshot ids, the range, the event count
and a SHA-256 over the canonical encoding of every event in order (`table`, then the row as JSON
with sorted keys). `ReplayEngine.from_manifest()` replays exactly the same pins; the same hash
proves the same sequence.

Sinks: iterate (`for event in engine`), async-iterate (`async for event in engine`), or publish
to NATS (`await engine.publish(...)`) on the tables' original subjects (`market.stocks.trades`)
or under a prefix (`replay.market.stocks.trades`). Pace: as fast as possible, or `speed`× real
time (event-time gaps divided by `speed`).

Example::

    engine = ReplayEngine(settings, ["silver.stocks_trades", "silver.futures_mbp10"],
                          start_ns, end_ns, as_of="bt-2025-12-16")
    for event in engine:
        strategy.on_event(event)            # {"table": "silver.stocks_trades", "ts_event_ns": ...}
    engine.write_manifest("replay.json")
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import msgspec
from pyiceberg.table import Table

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.config import Settings
from iceberg_lake.engine.duck import quote_ident, quote_str
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.tables import GOLD, TableDefinition
from iceberg_lake.timetravel.query import Lake, duckdb_path
from iceberg_lake.timetravel.readers import window_filter
from iceberg_lake.timetravel.snapshots import AsOfSpec, pin_for, resolve_as_of

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FORMAT",
    "TIE_BREAK",
    "EventSink",
    "ReplayEngine",
    "ReplayEvent",
    "read_manifest",
    "replay_subject",
]

MANIFEST_FORMAT = "iceberg-lake-replay/1"
TIE_BREAK = (
    "ts_event_ns, table position, then per table: declared sort order, partition key, "
    "remaining columns in schema order (nulls first)"
)
_NS_PER_HOUR = 3_600 * 1_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR
_encoder = msgspec.json.Encoder(order="sorted")

#: Called with (events so far, ts_event_ns of the last event).
Progress = Callable[[int, int], None]


class ReplayEvent(msgspec.Struct, frozen=True):
    """One replayed event: its table, subject, row (spec columns) and canonical encoding."""

    table: str
    subject: str
    row: dict[str, Any]
    payload: bytes

    def as_dict(self) -> dict[str, Any]:
        """The event as a dict: `table` plus the row's columns."""
        return {"table": self.table, **self.row}


class EventSink(Protocol):
    """Where replayed events go (a `Protocol`: any object with `send` and `close`)."""

    async def send(self, event: ReplayEvent) -> None:
        """Deliver one event."""

    async def close(self) -> None:
        """Flush and release resources."""


def replay_subject(subject: str, prefix: str | None) -> str:
    """The subject a replayed event is published on (`replay` + `market.x` → `replay.market.x`)."""
    if not prefix:
        return subject
    return f"{prefix.rstrip('.')}.{subject}"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a manifest written by `ReplayEngine.write_manifest`.

    Raises:
        TimeTravelError: not a readable replay manifest.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TimeTravelError(f"cannot read replay manifest {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise TimeTravelError(f"{path} is not a replay manifest ({MANIFEST_FORMAT})")
    return data


class _Source:
    """One table's pinned snapshot and how to stream it partition by partition."""

    def __init__(self, definition: TableDefinition, table: Table, snapshot_id: int | None) -> None:
        self.definition = definition
        self.table = table
        self.snapshot_id = snapshot_id
        schema = table.schema()
        if snapshot_id is not None:
            snap = table.snapshot_by_id(snapshot_id)
            if snap is not None and snap.schema_id is not None:
                schema = table.schemas().get(snap.schema_id, schema)
        derived = {c.name for c in definition.columns if c.derived_from}
        self.columns = [f.name for f in schema.fields if f.name not in derived]
        if "ts_event_ns" not in self.columns:
            raise TimeTravelError(f"{definition.identifier} has no ts_event_ns: cannot replay it")
        self.order = self._order_by()
        transform = definition.time_partition.transform if definition.time_partition else "day"
        self.bucket_ns = _NS_PER_DAY if transform == "day" else _NS_PER_HOUR

    def _order_by(self) -> list[str]:
        keys = ["ts_event_ns", *self.definition.sort_order]
        if self.definition.partition_key:
            keys.append(self.definition.partition_key)
        keys.extend(self.columns)
        return [k for k in dict.fromkeys(keys) if k in self.columns]

    def buckets(self, start_ns: int, end_ns: int) -> list[int]:
        """Start (ns) of every time partition in the window that holds data, ascending."""
        if self.snapshot_id is None:
            return []
        field_id = self.table.schema().find_field("ts_event_ns").field_id
        found: set[int] = set()
        scan = self.table.scan(
            row_filter=window_filter(start_ns, end_ns), snapshot_id=self.snapshot_id
        )
        with catalog_errors(f"planning {self.definition.identifier}"):
            for task in scan.plan_files():
                lower, upper = task.file.lower_bounds or {}, task.file.upper_bounds or {}
                if field_id not in lower or field_id not in upper:
                    lo, hi = start_ns, end_ns - 1  # no stats: consider the whole window
                else:
                    lo = max(start_ns, int.from_bytes(lower[field_id], "little", signed=True))
                    hi = min(end_ns - 1, int.from_bytes(upper[field_id], "little", signed=True))
                b = lo - lo % self.bucket_ns
                while b <= hi:
                    found.add(b)
                    b += self.bucket_ns
        return sorted(found)

    def partition_sql(self, lo_ns: int, hi_ns: int) -> str:
        """SQL for the rows of `[lo_ns, hi_ns)` in replay order."""
        location = quote_str(duckdb_path(self.table.metadata_location))
        cols = ", ".join(quote_ident(c) for c in self.columns)
        order = ", ".join(f"{quote_ident(c)} ASC NULLS FIRST" for c in self.order)
        lo_ts, hi_ts = _timestamptz(lo_ns // 1_000), _timestamptz(-(-hi_ns // 1_000))
        return (
            f"SELECT {cols} FROM iceberg_scan({location}, snapshot_from_id={self.snapshot_id}) "
            f"WHERE ts_event >= {lo_ts} AND ts_event < {hi_ts} "
            f"AND ts_event_ns >= {lo_ns} AND ts_event_ns < {hi_ns} ORDER BY {order}"
        )


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
        batch_rows: rows fetched from DuckDB at a time.

    Raises:
        TimeTravelError: empty table list, bad window, unknown pin, table without event time.
        UnknownTableError: a table does not exist.
    """

    def __init__(
        self,
        settings: Settings | LakeCatalog,
        tables: Sequence[str],
        start_ns: int,
        end_ns: int,
        as_of: AsOfSpec = None,
        *,
        speed: float | None = None,
        batch_rows: int = 10_000,
    ) -> None:
        self.catalog = settings if isinstance(settings, LakeCatalog) else LakeCatalog(settings)
        tables = list(tables)
        if not tables:
            raise TimeTravelError("replay needs at least one table")
        if len(set(tables)) != len(tables):
            raise TimeTravelError(f"a table is listed twice: {', '.join(tables)}")
        if start_ns >= end_ns:
            raise TimeTravelError(f"replay start ({start_ns}) must be before end ({end_ns})")
        if speed is not None and speed < 0:
            raise TimeTravelError(f"speed must be positive, got {speed}")
        self.tables = tables
        self.start_ns, self.end_ns = int(start_ns), int(end_ns)
        self.as_of = as_of
        self.speed = speed or None
        self.batch_rows = batch_rows
        self._sources: list[_Source] = []
        for ident in tables:
            definition = self.catalog.definition(ident)
            table = self.catalog.load_table(ident)
            sid = resolve_as_of(table, pin_for(as_of, ident))
            self._sources.append(_Source(definition, table, sid))
        self.pins: dict[str, int | None] = {
            s.definition.identifier: s.snapshot_id for s in self._sources
        }
        self._count = 0
        self._per_table: dict[str, int] = {}
        self._hash = hashlib.sha256()
        self._complete = False
        #: Partitions read and the largest partition (rows): evidence of bounded memory.
        self.partition_reads = 0
        self.max_partition_rows = 0

    @classmethod
    def from_manifest(
        cls, settings: Settings | LakeCatalog, manifest: Mapping[str, Any], **kwargs: Any
    ) -> ReplayEngine:
        """An engine that replays exactly the pins and window of `manifest`.

        A table whose pin is null (empty at the time) is pinned to its first snapshot's parent,
        i.e. read as empty.
        """
        snapshots = dict(manifest["snapshots"])
        engine = cls(
            settings,
            list(manifest["tables"]),
            int(manifest["start_ns"]),
            int(manifest["end_ns"]),
            as_of={t: sid for t, sid in snapshots.items() if sid is not None},
            **kwargs,
        )
        for source in engine._sources:
            if snapshots.get(source.definition.identifier) is None:
                source.snapshot_id = None
        engine.pins = {s.definition.identifier: s.snapshot_id for s in engine._sources}
        return engine

    # ---- the event stream ---------------------------------------------------------------------

    def events(self) -> Iterator[ReplayEvent]:
        """Every event of the window in replay order (no pacing), updating the manifest."""
        self._count, self._complete = 0, False
        self._per_table = dict.fromkeys(self.tables, 0)
        self._hash = hashlib.sha256()
        self.partition_reads = self.max_partition_rows = 0
        con = Lake(self.catalog).connect()
        try:
            prefixes = {t: t.encode() + b"\x1f" for t in self.tables}
            streams = [self._stream(i, src, con.cursor()) for i, src in enumerate(self._sources)]
            for _key, event in heapq.merge(*streams, key=lambda item: item[0]):
                self._count += 1
                self._per_table[event.table] += 1
                self._hash.update(b"".join((prefixes[event.table], event.payload, b"\n")))
                yield event
            self._complete = True
        finally:
            con.close()

    def _stream(
        self, index: int, source: _Source, con: duckdb.DuckDBPyConnection
    ) -> Iterator[tuple[tuple[int, int, int], ReplayEvent]]:
        ident = source.definition.identifier
        subject = source.definition.subject or ident
        counter = itertools.count()
        for bucket in source.buckets(self.start_ns, self.end_ns):
            lo = max(self.start_ns, bucket)
            hi = min(self.end_ns, bucket + source.bucket_ns)
            with catalog_errors(f"replaying {ident}"):
                reader = con.execute(source.partition_sql(lo, hi)).to_arrow_reader(self.batch_rows)
            self.partition_reads += 1
            rows_in_partition = 0
            for batch in reader:
                rows_in_partition += batch.num_rows
                for row in batch.to_pylist():
                    event = ReplayEvent(ident, subject, row, _encoder.encode(row))
                    yield (row["ts_event_ns"], index, next(counter)), event
            self.max_partition_rows = max(self.max_partition_rows, rows_in_partition)

    def paced_events(self) -> Iterator[ReplayEvent]:
        """`events()` paced by `speed` (sleeps between events when replaying in real time)."""
        pacer = _Pacer(self.speed)
        for event in self.events():
            delay = pacer.delay(event.row["ts_event_ns"])
            if delay > 0:
                time.sleep(delay)
            yield event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events as dicts (`table` plus the row's columns), paced by `speed`."""
        for event in self.paced_events():
            yield event.as_dict()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Async iteration: events are read in chunks on a worker thread, paced by `speed`."""
        async for event in self.aevents():
            yield event.as_dict()

    async def aevents(self, chunk: int = 2_000) -> AsyncIterator[ReplayEvent]:
        """`events()` for asyncio code: DuckDB reads run off the event loop, pacing awaits."""
        source = self.events()
        pacer = _Pacer(self.speed)
        try:
            while True:
                items = await asyncio.to_thread(lambda: list(itertools.islice(source, chunk)))
                if not items:
                    return
                for event in items:
                    delay = pacer.delay(event.row["ts_event_ns"])
                    if delay > 0:
                        await asyncio.sleep(delay)
                    yield event
        finally:
            source.close()

    # ---- sinks ----------------------------------------------------------------------------------

    async def run(self, sink: EventSink, progress: Progress | None = None) -> dict[str, Any]:
        """Send every event to `sink` (paced), close it, and return the manifest."""
        try:
            async for event in self.aevents():
                await sink.send(event)
                if progress is not None and self._count % 1_000 == 0:
                    progress(self._count, event.row["ts_event_ns"])
        finally:
            await sink.close()
        if progress is not None:
            progress(self._count, self.end_ns)
        return self.manifest()

    async def publish(
        self,
        nc: Client | None = None,
        *,
        prefix: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Publish every event to NATS and return the manifest.

        Each event is published as its canonical JSON row (the flat form the writers accept) on
        the table's subject, or under `prefix` (`replay` → `replay.market.stocks.trades`). With
        no prefix on a live system, the Bronze writers store the replayed events again.

        Args:
            nc: a connected client (default: connect with the lake's settings, close after).
            prefix: subject prefix; None publishes on the original subjects.
            progress: called every 1,000 events and at the end.

        Raises:
            TimeTravelError: Gold tables without a prefix (their rows are flattened payloads).
        """
        flat = [s.definition.identifier for s in self._sources if s.definition.namespace == GOLD]
        if flat and not prefix:
            raise TimeTravelError(
                f"{', '.join(flat)} rows are flattened (one per level); the Gold writer would "
                "dead-letter them on their original subject: replay them under a prefix"
            )
        own = nc is None
        if nc is None:
            from iceberg_lake.engine.nats import connect

            nc = await connect(self.catalog.settings, name="iceberg_lake-replay")
        sink = NatsSink(nc, prefix=prefix, close_client=own)
        return await self.run(sink, progress)

    # ---- manifest -------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """What this replay read and produced; `complete` is False until a full iteration."""
        return {
            "format": MANIFEST_FORMAT,
            "tables": list(self.tables),
            "snapshots": dict(self.pins),
            "as_of": _describe_as_of(self.as_of),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
            "event_count": self._count,
            "events_per_table": dict(self._per_table),
            "sequence_hash": "sha256:" + self._hash.hexdigest(),
            "tie_break": TIE_BREAK,
            "speed": self.speed,
            "complete": self._complete,
            "created_at": datetime.now(tz=UTC).isoformat(),
        }

    def write_manifest(self, path: str | Path) -> dict[str, Any]:
        """Write `manifest()` as JSON to `path` and return it."""
        manifest = self.manifest()
        Path(path).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


class NatsSink:
    """Publishes replayed events on core NATS, flushing every `flush_every` messages.

    Args:
        nc: connected client.
        prefix: subject prefix (None: original subjects).
        flush_every: messages between flushes (bounds the client's buffer).
        close_client: drain and close `nc` in `close()`.
    """

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str | None = None,
        flush_every: int = 2_000,
        close_client: bool = False,
    ) -> None:
        self.nc = nc
        self.prefix = prefix
        self.flush_every = flush_every
        self.close_client = close_client
        self.published = 0

    async def send(self, event: ReplayEvent) -> None:
        """Publish one event on its (prefixed) subject."""
        await self.nc.publish(replay_subject(event.subject, self.prefix), event.payload)
        self.published += 1
        if self.published % self.flush_every == 0:
            await self.nc.flush()

    async def close(self) -> None:
        """Flush what is pending (and close the client if we own it)."""
        await self.nc.flush()
        if self.close_client:
            await self.nc.drain()


class _Pacer:
    """Maps event time to wall time: `speed`× real time from the first event."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.t0_event: int | None = None
        self.t0_wall = 0.0

    def delay(self, ts_event_ns: int) -> float:
        if not self.speed:
            return 0.0
        if self.t0_event is None:
            self.t0_event, self.t0_wall = ts_event_ns, time.monotonic()
            return 0.0
        due = self.t0_wall + (ts_event_ns - self.t0_event) / 1e9 / self.speed
        return due - time.monotonic()


def _timestamptz(us: int) -> str:
    """A DuckDB TIMESTAMPTZ literal for Unix microseconds (exact, no float rounding)."""
    value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def _describe_as_of(as_of: AsOfSpec) -> Any:
    if isinstance(as_of, Mapping):
        return {k: _describe_as_of(v) for k, v in as_of.items()}
    if isinstance(as_of, datetime):
        return as_of.isoformat()
    return as_of
