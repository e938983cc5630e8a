"""Live tail: table snapshots united with what JetStream holds beyond their last commit.

Every Bronze/Gold writer commits, in ONE transaction with each append, the table property
`lake.watermark.<stream>.<consumer>` = the last stream sequence the table holds. So a loaded
table's metadata says exactly which messages its current snapshot contains: everything on its
subject up to the watermark. The rest, `(watermark, newest]`, is the *tail*. A live view is

    current snapshot (pinned through the same metadata file the watermark was read from)
    UNION ALL the tail, decoded with the writer's own codec (same validation; messages the writer
    would dead-letter are left out)

so there is no gap and no overlap at any moment, whatever the writer does meanwhile (commits,
crashes, restarts): a commit after the table was loaded is simply not seen, and its messages are
read from the stream instead.

The tail is read with an ephemeral ordered consumer (`engine.nats_tail`), never the writers'
durable consumers, up to the newest message on the subject when the read started.

Used by `Lake.query(sql, live=True)` / `lake query --live` (`create_live_views`) and by
`ReplayEngine(..., live=True)` / `lake replay --live [--follow]` (`LiveTail`).

Rows that the schema-inference consumer (`lake_inferred`, unmapped `market.*` subjects) routes
into a Bronze table are a second tail of that table, after its `lake.watermark.MARKET.lake_inferred`
(and after the consumer's ack floor, read before the table is loaded: its writer acks only what
it committed), decoded by the writer's `InferredDecoder`. Live queries, live replays and
`freshness` read it while that consumer exists (or inference has committed to the table); each
reads the ack floor before it loads the tables (`inference_start`).

Messages the stream removed (limits, purges, deletes) after a watermark before anyone read them
are reported (`LiveRange.removed`, the replay manifest, `Freshness.live_warning`), never dropped
silently. A live replay accounts for every stream sequence of its range (received, skipped
between two received ones, or after the last one) and reports exactly the sequences removed
before it received them, while it reads (`LiveTail._check_gaps`, `nats_tail.check_followers`).
The runs are listed up to `MAX_LISTED_GAPS` per table and counted beyond; a warning names at
most `WARNING_RUNS` of them. A live replay's followers buffer a bounded amount between rounds
(`nats_tail.BUFFER_MSGS`/`BUFFER_BYTES`), and a bounded read stops at its end however busy
the subject is.

Order of live replay events: the pinned history first, in replay order; then the tail in
arrival rounds — each round (what arrived since the previous one) sorted by the replay key
(`ts_event_ns`, table position, row order). An event that arrives after a later-stamped one was
already delivered is delivered when it arrives (late), never dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine import filters
from iceberg_lake.engine.iceberg import column_bounds, partition_field_bounds
from iceberg_lake.engine.nats import (
    INFERRED_TARGET,
    StreamIdentity,
    consumer_target,
    stream_for_subject,
    stream_identity,
)
from iceberg_lake.engine.nats_tail import (
    StreamStates,
    TailFollower,
    TailMessage,
    check_followers,
    last_subject_msg,
    last_subject_seq,
    nats_errors,
    read_tail,
    removed_range,
    skipped_runs,
    stream_first_seq,
)
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.ingest import position
from iceberg_lake.ingest.decode import codec_for
from iceberg_lake.ingest.routing import BronzeDecoder, Decoder, GoldDecoder, InferredDecoder
from iceberg_lake.silver.dedup import quote_ident
from iceberg_lake.tables import GOLD, TableDefinition
from iceberg_lake.timetravel.canonical import encode_rows

if TYPE_CHECKING:
    from nats.aio.client import Client

    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.replay import ReplayEngine, ReplayEvent

__all__ = [
    "MAX_LISTED_GAPS",
    "WARNING_RUNS",
    "Freshness",
    "GapLog",
    "InferenceStart",
    "LiveRange",
    "LiveTail",
    "NatsLoop",
    "TailSource",
    "committed_newest_ns",
    "create_live_views",
    "freshness",
    "inference_start",
    "is_live_table",
    "live_warnings",
    "removed_warning",
]

T = TypeVar("T")
log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder(order="sorted")


#: Runs of removed sequences listed per table (`LiveRange.gaps`, the replay manifest); the
#: ones beyond are counted (`unlisted_gaps`, `unlisted_removed`), their envelope in `removed`.
MAX_LISTED_GAPS = 1_000
#: Runs a warning line names; the others are summed up ("and N more runs (M sequences)").
WARNING_RUNS = 5


def removed_warning(
    table: str,
    stream: str,
    subject: str,
    removed: tuple[int, int],
    *,
    inferred: bool = False,
    runs: Sequence[tuple[int, int]] = (),
    more_runs: int = 0,
    more_seqs: int = 0,
) -> str:
    """The one-line warning for stream sequences removed before `table` committed them.

    `removed` is their envelope; `runs`, when given, the runs of removed sequences in it (the
    sequences between them were read); `more_runs`/`more_seqs` runs (sequences) not in `runs`.
    At most `WARNING_RUNS` runs are named; the rest are counted.
    """
    lo, hi = removed
    which = f"{subject} messages" + (" (or ones schema inference routes here)" if inferred else "")
    extra_runs = more_runs + max(0, len(runs) - WARNING_RUNS)
    extra_seqs = more_seqs + sum(b - a + 1 for a, b in runs[WARNING_RUNS:])
    if len(runs) > 1 or (runs and extra_runs):
        seqs = ", ".join(f"{a}..{b}" for a, b in runs[:WARNING_RUNS])
        if extra_runs:
            seqs += f" and {extra_runs:,} more runs ({extra_seqs:,} sequences)"
    else:
        seqs = f"{lo}..{hi}"
    return (
        f"{table}: stream {stream} no longer holds seq {seqs} (removed by its limits "
        f"max_age/max_bytes/max_msgs, a purge or a delete, before the table committed them): any "
        f"{which} among them are missing from the live view"
    )


class GapLog:
    """The runs of stream sequences one table's tail found removed: merged as they come (one
    bisect each, no re-sort), the first `MAX_LISTED_GAPS` listed, the ones beyond counted.

    A run that touches or overlaps a listed one widens it; a run contained in a listed one is
    not new. Unlisted runs are counted by their envelope: a run inside it is not new (counted
    before: a live query looks again at the removed runs after the subject's newest message,
    up to the stream's last sequence, every time), one that overlaps or touches it adds only
    its sequences outside it (the run it continues was counted), any other counts as a new
    run. A run repeated is never counted again; a new run found inside the envelope (out of
    order, from a second follower of the table) is not counted, but `envelope` covers it.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self.more_runs = 0
        self.more_seqs = 0
        self._more: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.runs) or self._more is not None

    @property
    def envelope(self) -> tuple[int, int] | None:
        """`(first, last)` over every run, listed or not (None: none)."""
        listed = (self.runs[0][0], self.runs[-1][1]) if self.runs else None
        return _merge(listed, self._more)

    def add(self, lo: int, hi: int) -> bool:
        """Record `lo..hi`; True when it held sequences not recorded before."""
        if hi < lo:
            return False
        runs = self.runs
        i = bisect.bisect_left(runs, (lo, lo))  # the first run starting at or after lo
        k = i
        if i > 0 and runs[i - 1][1] >= lo - 1:
            i -= 1  # the one before touches it
        while k < len(runs) and runs[k][0] <= hi + 1:
            k += 1
        if i < k:
            a, b = runs[i][0], runs[k - 1][1]
            if k - i == 1 and a <= lo and hi <= b:
                return False
            runs[i:k] = [(min(a, lo), max(b, hi))]
            return True
        if len(runs) < MAX_LISTED_GAPS:
            runs.insert(i, (lo, hi))
            return True
        more = self._more
        if more is None:
            self.more_runs += 1
            self.more_seqs += hi - lo + 1
        elif more[0] <= lo and hi <= more[1]:
            return False  # counted before
        else:
            inside = max(0, min(hi, more[1]) - max(lo, more[0]) + 1)
            self.more_seqs += hi - lo + 1 - inside
            if hi < more[0] - 1 or lo > more[1] + 1:
                self.more_runs += 1  # apart from every run counted
        self._more = _merge(more, (lo, hi))
        return True

    def trim(self, upto: int) -> None:
        """Forget sequences at or below `upto` (a commit now holds whatever of them was the
        table's). Unlisted counts are kept while their envelope reaches beyond (at most)."""
        runs = self.runs
        i = bisect.bisect_left(runs, (upto + 1, upto + 1))
        if i > 0 and runs[i - 1][1] > upto:
            i -= 1
        self.runs = [(max(lo, upto + 1), hi) for lo, hi in runs[i:]]
        if self._more is not None:
            if self._more[1] <= upto:
                self._more, self.more_runs, self.more_seqs = None, 0, 0
            else:
                self._more = (max(self._more[0], upto + 1), self._more[1])


def live_warnings(ranges: dict[str, LiveRange]) -> list[str]:
    """The warnings of a live query's ranges (`Lake.last_live`), one line each."""
    return [w for r in ranges.values() if (w := r.warning) is not None]


def is_live_table(definition: TableDefinition) -> bool:
    """True for tables fed from the bus (Bronze with a subject, Gold): they have a tail."""
    return bool(definition.subject) and definition.namespace in ("bronze", GOLD)


def require_tails(catalog: LakeCatalog, identifiers: Sequence[str]) -> None:
    """Refuse a live replay of a table without a tail (Silver, dead letters).

    Such a table would stop at its snapshot while the others follow, in a replay that looks
    complete; a live *query* instead reads its snapshot beside the live views (joins).

    Raises:
        TimeTravelError: one of `identifiers` is not fed from the bus (one-line message).
    """
    for ident in identifiers:
        if not is_live_table(catalog.definition(ident)):
            raise TimeTravelError(
                f"{ident} has no live tail (only Bronze/Gold tables fed from the bus have one): "
                "replay it without --live, or replay its Bronze table live"
            )


@dataclass(frozen=True)
class LiveRange:
    """What one live view covers: a snapshot plus a stream sequence range.

    Attributes:
        table: table identifier.
        snapshot_id: the snapshot read (None: the table had none).
        stream: the JetStream stream of the tail.
        subject: the subject of the tail.
        watermark: last stream sequence the snapshot holds (the tail starts after it).
        last_seq: last stream sequence of the tail (== watermark: empty tail).
        tail_messages: messages read from the stream.
        tail_rows: rows they decoded to (rejected messages and events left out).
        newest_tail_ns: largest `ts_event_ns` among the tail rows (None: no rows).
        removed: `(first, last)` stream sequences after the watermark that the stream removed
            (its limits, purges, deletes) before they were committed or read: a possible gap
            (None: none); the envelope of `gaps`.
        inferred_after: with schema inference running (its `lake_inferred` consumer exists),
            the stream sequence after which unmapped `market.*` messages routed to this table
            were read (None: not read); `inferred_last_seq` is the last one considered.
        inferred_rows: rows they decoded to (included in `tail_rows`).
        gaps: the runs of consecutive removed sequences within `removed` (the ones between
            them were read); empty when `removed` is None. At most `MAX_LISTED_GAPS` (per
            tail): the others are counted in `unlisted_gaps` (runs) and `unlisted_removed`
            (sequences).
    """

    table: str
    snapshot_id: int | None
    stream: str
    subject: str
    watermark: int
    last_seq: int
    tail_messages: int
    tail_rows: int
    newest_tail_ns: int | None
    removed: tuple[int, int] | None = None
    inferred_after: int | None = None
    inferred_last_seq: int | None = None
    inferred_rows: int = 0
    gaps: tuple[tuple[int, int], ...] = ()
    unlisted_gaps: int = 0
    unlisted_removed: int = 0
    stream_error: str | None = None

    @property
    def warning(self) -> str | None:
        """One line when the stream removed messages the live view may lack, or is not the
        stream the watermark counts in (else None)."""
        if self.stream_error is not None:
            return self.stream_error
        if self.removed is None:
            return None
        return removed_warning(
            self.table,
            self.stream,
            self.subject,
            self.removed,
            inferred=self.inferred_after is not None,
            runs=self.gaps,
            more_runs=self.unlisted_gaps,
            more_seqs=self.unlisted_removed,
        )

    def describe(self) -> str:
        """`bronze.x@<snapshot> + MARKET seq 101..250 (150 rows)`."""
        snap = self.snapshot_id if self.snapshot_id is not None else "empty"
        inferred = ""
        if self.inferred_rows and self.inferred_after is not None:
            inferred = (
                f" + inferred seq {self.inferred_after + 1}..{self.inferred_last_seq} "
                f"({self.inferred_rows} rows)"
            )
        if self.stream_error is not None:
            return f"{self.table}@{snap} + no tail ({self.stream} was recreated: see the warning)"
        if self.last_seq <= self.watermark:
            empty = f"{self.stream} seq >{self.watermark} (empty tail)"
            return f"{self.table}@{snap} + {empty}{inferred}"
        return (
            f"{self.table}@{snap} + {self.stream} seq {self.watermark + 1}..{self.last_seq} "
            f"({self.tail_rows - self.inferred_rows} rows){inferred}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class NatsLoop:
    """An asyncio loop on a daemon thread with one NATS connection, for synchronous callers.

    `Lake.query` is synchronous and may be called many times a second; connecting (and loading
    nothing else) once and reusing the connection keeps a live query's NATS cost at a few
    round trips.
    """

    def __init__(self, catalog: LakeCatalog) -> None:
        self.settings = catalog.settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lake-live", daemon=True)
        self.thread.start()
        self.nc: Client | None = None
        #: Decoded tails kept between queries (table → cache).
        self.tails: dict[str, _TailCache] = {}
        #: The schema-inference consumer was seen: its rows are read even while a writer
        #: (re)creates it (a moment without it is no sign that inference stopped).
        self.inferred_seen = False
        #: Streams' states (their removed sequences re-listed only when they changed).
        self.states = StreamStates()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result.

        Raises:
            TransientError: for nats-py's errors (timeouts, no responders, a closed
                connection): one readable line; other exceptions propagate.
        """
        with nats_errors("live tail"):
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def js(self) -> Any:
        """The JetStream context (connects on first use)."""
        from iceberg_lake.engine.nats import connect, jetstream

        if self.nc is None or self.nc.is_closed:
            self.nc = await connect(self.settings, name="iceberg_lake-live")
        # The lake's JetStream (its domain, if one is set).
        return jetstream(self.nc, self.settings)

    def close(self) -> None:
        """Close the connection and stop the loop."""

        async def _close() -> None:
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.close()
            # The client's per-subscription tasks: end them before the loop goes away.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            try:
                self.run(_close())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class TailSource:
    """One bus-fed table pinned at a loaded metadata version: snapshot, watermark, decoder.

    The snapshot and the watermark come from the SAME `Table` object (one metadata file), which
    is what makes snapshot ∪ tail exact.

    Args:
        definition: the table's declared definition.
        table: the loaded table; its current snapshot is the one a live read unites with the tail.
        mapped_subjects: with schema inference: the subjects the inference consumer skips
            (every Bronze table's own subject), for `inferred` (None: no inferred rows).
    """

    def __init__(
        self,
        definition: TableDefinition,
        table: Table,
        mapped_subjects: frozenset[str] | None = None,
    ) -> None:
        self.definition = definition
        self.identifier = definition.identifier
        self.table = table
        current = table.metadata.current_snapshot_id
        self.snapshot_id: int | None = current if current is not None and current >= 0 else None
        self.stream, self.consumer, self.subject = consumer_target(self.identifier)
        self.stream = stream_for_subject(self.subject)
        key = f"{properties.WATERMARK_PREFIX}{self.stream}.{self.consumer}"
        self.watermark = int(table.properties.get(key, 0))
        #: The stream the watermark counts in ("" before it was recorded; `ingest.position`).
        created_key = f"{properties.STREAM_CREATED_PREFIX}{self.stream}.{self.consumer}"
        self.stream_created = table.properties.get(created_key, "")
        schema = table.schema()
        self.schema_id = schema.schema_id
        codec = codec_for(self.identifier, table, definition.partition_key)
        self.decoder: Decoder = (
            GoldDecoder(codec) if definition.namespace == GOLD else BronzeDecoder(codec)
        )
        arrow = schema_to_pyarrow(schema, include_field_ids=False)
        self.arrow_schema = pa.schema([f.with_nullable(True) for f in arrow])
        #: Rows the schema-inference consumer routes here: its decoder (the writer's entry
        #: point, with only this table's codec: messages inferred elsewhere yield no rows
        #: here) and its watermark in this table's metadata.
        self.inferred: Decoder | None = None
        self.inferred_watermark = 0
        self.inferred_committed = False
        if mapped_subjects is not None and _receives_inferred(definition):
            inf_stream, inf_consumer, _ = consumer_target(INFERRED_TARGET)
            inf_key = f"{properties.WATERMARK_PREFIX}{inf_stream}.{inf_consumer}"
            self.inferred_committed = inf_key in table.properties
            self.inferred_watermark = int(table.properties.get(inf_key, 0))
            self.inferred = InferredDecoder({definition.schema_name: codec}, set(mapped_subjects))

    def stream_mismatch(self, created: str, first_seq: int, last_seq: int) -> str | None:
        """Why the stream (its creation time and sequences now) is not the one the watermark
        counts in: it was deleted and created again, or NATS lost its storage (None: it is)."""
        done = position.Committed(
            self.watermark, frozenset([self.stream_created] if self.stream_created else [])
        )
        live = StreamIdentity(self.stream, created, first_seq, last_seq)
        return position.mismatch(self.identifier, self.consumer, done, live)

    def decode(self, messages: Sequence[TailMessage], recv_ns: int | None = None) -> pa.Table:
        """The rows of `messages` as the writer would store them (rejected ones left out).

        `ts_recv_ns` of events that carry none is the decode time, as in the writer.
        """
        return self.decode_with_seqs(messages, recv_ns)[0]

    def decode_with_seqs(
        self,
        messages: Sequence[TailMessage],
        recv_ns: int | None = None,
        decoder: Decoder | None = None,
    ) -> tuple[pa.Table, np.ndarray]:
        """`decode` (with `decoder`, default the table's own), plus each row's stream sequence."""
        empty = (self.arrow_schema.empty_table(), np.zeros(0, dtype=np.int64))
        if not messages:
            return empty
        recv = time.time_ns() if recv_ns is None else recv_ns
        bodies = [m.data for m in messages]
        routed = (decoder or self.decoder).decode(bodies, [m.subject for m in messages], recv)
        decoded = routed.tables.get(self.identifier)
        if decoded is None or decoded.table.num_rows == 0:
            return empty
        rows = decoded.table
        arrays = [
            rows.column(f.name).cast(f.type)
            if f.name in rows.column_names
            else pa.nulls(rows.num_rows, f.type)
            for f in self.arrow_schema
        ]
        seqs = np.asarray([m.seq for m in messages], dtype=np.int64)[decoded.row_message]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema), seqs


class _TailCache:
    """A table's decoded tail kept between live queries of one `Lake` session.

    Holds the rows of messages `(after, last_seq]`; the next query reads only messages after
    `last_seq` and drops rows at or below the table's new watermark. Valid while the table's
    schema is the one the rows were decoded with.
    """

    def __init__(self, after: int, schema_id: int, arrow_schema: pa.Schema) -> None:
        self.after = after
        self.last_seq = after
        self.schema_id = schema_id
        self.rows = arrow_schema.empty_table()
        self.row_seqs = np.zeros(0, dtype=np.int64)
        self.msg_seqs = np.zeros(0, dtype=np.int64)
        #: Runs of stream sequences after `after` the stream removed before they were read.
        self.log = GapLog()
        #: Set when the stream is not the one the watermark counts in (no tail is read).
        self.stream_error: str | None = None

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """The listed runs (see `GapLog`)."""
        return self.log.runs

    @property
    def removed(self) -> tuple[int, int] | None:
        """The envelope of every run (None: none)."""
        return self.log.envelope

    def note_removed(self, runs: Sequence[tuple[int, int]]) -> None:
        """Remember removed runs, merged with the ones already noted."""
        for lo, hi in runs:
            self.log.add(lo, hi)

    def advance(self, watermark: int) -> None:
        """Forget what the snapshot now holds (sequences at or below `watermark`)."""
        if watermark <= self.after:
            return
        keep = self.row_seqs > watermark
        if not keep.all():
            self.rows = self.rows.filter(pa.array(keep))
            self.row_seqs = self.row_seqs[keep]
        self.msg_seqs = self.msg_seqs[self.msg_seqs > watermark]
        # A commit beyond a removed run holds whatever of it was the table's.
        self.log.trim(watermark)
        self.after = watermark
        self.last_seq = max(self.last_seq, watermark)

    def add(self, messages: list[TailMessage], rows: pa.Table, seqs: np.ndarray) -> None:
        """Append newly read messages and their rows."""
        if not messages:
            return
        self.last_seq = messages[-1].seq
        self.msg_seqs = np.concatenate([self.msg_seqs, [m.seq for m in messages]])
        if rows.num_rows:
            self.rows = pa.concat_tables([self.rows, rows]) if self.rows.num_rows else rows
            self.row_seqs = np.concatenate([self.row_seqs, seqs])

    def view(self, upto: int) -> tuple[pa.Table, int]:
        """Rows of messages `(after, upto]` and the number of such messages."""
        messages = int((self.msg_seqs <= upto).sum())
        if self.row_seqs.size and self.row_seqs[-1] > upto:
            return self.rows.filter(pa.array(self.row_seqs <= upto)), messages
        return self.rows, messages


def _newest(rows: pa.Table) -> int | None:
    if rows.num_rows == 0 or "ts_event_ns" not in rows.column_names:
        return None
    import pyarrow.compute as pc

    value = pc.max(rows.column("ts_event_ns")).as_py()
    return int(value) if value is not None else None


async def _read_tails(loop: NatsLoop, sources: list[TailSource]) -> dict[str, int]:
    """Bring each source's tail cache up to the subject's newest message; return the ends."""
    js = await loop.js()

    async def one(src: TailSource) -> int:
        # The end of the range is fixed before reading: later messages are the next query's.
        upto = max(await last_subject_seq(js, src.stream, src.subject), src.watermark)
        cache = loop.tails.get(src.identifier)
        if cache is None or cache.schema_id != src.schema_id or cache.after > src.watermark:
            cache = _TailCache(src.watermark, src.schema_id, src.arrow_schema)
            loop.tails[src.identifier] = cache
        cache.advance(src.watermark)
        before = cache.last_seq
        msgs = await read_tail(js, src.stream, src.subject, before, upto)
        # Every message of the subject in (before, upto] that was not read was no longer
        # stored when the read passed it (the consumer delivers in order; it stops at `upto`
        # or when nothing more is pending), and none after `upto` was stored when `upto` was
        # read: of the sequences the read skipped, up to the stream's last one now, the ones
        # the stream no longer holds are reported (a stored one is another subject's, or a
        # newer message of the subject, for the next query). Not only up to `upto`: a removed
        # message of the subject newer than its newest stored one would go unreported. So
        # each query looks again at the removed runs beyond `upto`: `GapLog.add` counts none
        # twice.
        state = await loop.states.get(js, src.stream)
        problem = src.stream_mismatch(state.created, state.first_seq, state.last_seq)
        if problem is not None:
            # Its sequences are another stream's: none of them is the tail (at least warn).
            cache = _TailCache(src.watermark, src.schema_id, src.arrow_schema)
            cache.stream_error = f"{problem} (the live view holds the table's snapshot only)"
            loop.tails[src.identifier] = cache
            return src.watermark
        skipped = skipped_runs(before, [m.seq for m in msgs], state.last_seq)
        cache.note_removed(state.removed_in(skipped))
        rows, seqs = src.decode_with_seqs(msgs)
        cache.add(msgs, rows, seqs)
        # Every message on the subject up to `upto` has been read (it was the newest one).
        cache.last_seq = max(cache.last_seq, upto)
        return upto

    ends = await asyncio.gather(*(one(s) for s in sources))
    return dict(zip([s.identifier for s in sources], ends, strict=True))


# ---- rows routed by schema inference ------------------------------------------------------------

#: Key suffix of a table's inferred-rows cache in `NatsLoop.tails`.
_INFERRED = "#inferred"
#: A live replay checks at most this often (seconds) whether the stream removed messages its
#: followers had not received (`LiveTail._check_gaps`).
REMOVAL_CHECK_SECONDS = 1.0
#: Up to this many unmapped subjects are read one ordered consumer each; beyond (e.g. one
#: subject per symbol), one consumer reads `market.>` and the mapped subjects are dropped here.
MAX_SUBJECT_READS = 8


def _receives_inferred(definition: TableDefinition) -> bool:
    """True for the tables the schema-inference writer routes into (its targets)."""
    return definition.namespace == "bronze" and bool(definition.subject)


def inferred_mapped_subjects(catalog: LakeCatalog) -> frozenset[str]:
    """The subjects the inference consumer skips: every Bronze table's own (as its writer)."""
    return frozenset(
        d.subject for d in catalog.registry.in_namespace("bronze") if d.subject is not None
    )


async def _inferred_floor(loop: NatsLoop) -> int | None:
    """The inference consumer's ack floor (None: the consumer does not exist).

    Its writer acks a flush only after committing every table of it, so every message at or
    below the floor read now is in each table's metadata loaded afterwards.
    """
    from nats.js.errors import NotFoundError

    js = await loop.js()
    stream, durable, _ = consumer_target(INFERRED_TARGET)
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0


async def _read_inferred(
    loop: NatsLoop, sources: list[TailSource], floor: int, mapped: frozenset[str]
) -> int:
    """Bring each source's inferred-rows cache up to the stream's newest message; return it.

    A table holds the inferred rows of messages up to its inference watermark, and of messages
    up to `floor` (acked, so committed): its inferred tail starts after the larger of the two.
    Only unmapped subjects are read (the stream lists its subjects), one ordered consumer each
    (or one for all, past `MAX_SUBJECT_READS`), once for all `sources`; each table decodes them
    with its own inference decoder.
    """
    js = await loop.js()
    stream, _, filter_subject = consumer_target(INFERRED_TARGET)
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    upto = int(info.state.last_seq or 0)
    unmapped = sorted(set(info.state.subjects or {}) - mapped)
    caches: list[tuple[TailSource, _TailCache]] = []
    for src in sources:
        after = max(src.inferred_watermark, floor)
        key = src.identifier + _INFERRED
        cache = loop.tails.get(key)
        if cache is None or cache.schema_id != src.schema_id or cache.after > after:
            cache = _TailCache(after, src.schema_id, src.arrow_schema)
            loop.tails[key] = cache
        cache.advance(after)
        caches.append((src, cache))
    lo = min(cache.last_seq for _, cache in caches)
    messages: list[TailMessage] = []
    if len(unmapped) > MAX_SUBJECT_READS:
        if upto > lo:
            every = await read_tail(js, stream, filter_subject, lo, upto)
            messages = [m for m in every if m.subject not in mapped]
    else:
        for subject in unmapped:
            last = await last_subject_seq(js, stream, subject)
            if last > lo:
                messages.extend(await read_tail(js, stream, subject, lo, min(last, upto)))
        messages.sort(key=lambda m: m.seq)
    first = await stream_first_seq(js, stream)
    for src, cache in caches:
        before = cache.last_seq
        mine = [m for m in messages if m.seq > before]
        removed = removed_range(before, first)
        cache.note_removed([removed] if removed is not None else [])
        rows, seqs = src.decode_with_seqs(mine, decoder=src.inferred)
        cache.add(mine, rows, seqs)
        cache.last_seq = max(cache.last_seq, upto)
    return upto


def _read_inferred_tails(
    lake: Lake,
    sources: list[TailSource],
    floor: int | None,
    mapped: frozenset[str] | None,
) -> tuple[int, set[str]]:
    """Read the inferred tails of `sources` when inference runs; (last seq, tables read).

    Inference runs if its consumer exists (or existed in this session: a writer recreates it on
    start), or has committed to the table; then the table's inferred rows after its inference
    watermark (and the floor, if known) are read.
    """
    if mapped is None:
        return 0, set()
    loop = lake.live_loop()  # made when the floor was read
    seen = floor is not None or loop.inferred_seen
    inferred = [s for s in sources if s.inferred is not None and (seen or s.inferred_committed)]
    if not inferred:
        return 0, set()
    loop.inferred_seen = True
    end = loop.run(_read_inferred(loop, inferred, floor or 0, mapped))
    return end, {s.identifier for s in inferred}


@dataclass(frozen=True)
class InferenceStart:
    """What a reader needs to know about schema inference BEFORE it loads the tables.

    Attributes:
        floor: the `lake_inferred` consumer's ack floor, read before the tables were loaded
            (None: the consumer does not exist).
        mapped: the subjects the inference consumer skips (every Bronze table's own).
    """

    floor: int | None
    mapped: frozenset[str]

    def applies(self, src: TailSource) -> bool:
        """True when `src` has an inferred tail: inference routes into it and runs (its
        consumer exists) or has committed to it."""
        return src.inferred is not None and (self.floor is not None or src.inferred_committed)

    def after(self, src: TailSource) -> int:
        """The stream sequence after which `src`'s inferred rows are not in its snapshot."""
        return max(src.inferred_watermark, self.floor or 0)


def inference_start(catalog: LakeCatalog, identifiers: Sequence[str]) -> InferenceStart | None:
    """Read the inference consumer's ack floor, for a reader about to load `identifiers`.

    Call BEFORE loading the tables: the writer acks a flush only after committing every table
    of it, so whatever is at or below the floor read now is in the metadata loaded afterwards.

    Returns:
        None when no table of `identifiers` receives inferred rows (nothing read).

    Raises:
        TransientError/LakeError: NATS cannot be reached.
    """
    if not any(_receives_inferred(catalog.definition(i)) for i in identifiers):
        return None
    loop = NatsLoop(catalog)
    try:
        floor = loop.run(_inferred_floor(loop))
    finally:
        loop.close()
    return InferenceStart(floor, inferred_mapped_subjects(catalog))


class _UnmappedFollower:
    """Follows the unmapped `market.*` subjects after a sequence: the messages schema inference
    routes into Bronze tables, for a live replay.

    One ordered consumer per unmapped subject while there are at most `MAX_SUBJECT_READS` of
    them; the stream's subjects are listed again by `discover` (a follow finds subjects that
    appear meanwhile; a new subject is read from `after`, nothing of it was seen before). Past
    that many, one consumer on `market.>` instead (from `after`, mapped subjects dropped).
    Every message is delivered once: per subject, only sequences beyond the last delivered.
    """

    def __init__(
        self, js: Any, mapped: frozenset[str], after: int, states: StreamStates | None = None
    ) -> None:
        self.js = js
        self.states = states if states is not None else StreamStates()
        self.stream, _, self.wildcard = consumer_target(INFERRED_TARGET)
        self.mapped = mapped
        self.after = after
        self.followers: dict[str, TailFollower] = {}
        self.wide: TailFollower | None = None
        self.delivered: dict[str, int] = {}
        self._carry: list[TailMessage] = []
        #: Where a bounded read stops: the stream's last sequence, and per follower the last
        #: sequence to wait for (set by `fix_end`).
        self.stop: int | None = None
        self.ends: dict[str, int] = {}

    async def discover(self) -> int:
        """List the stream's subjects and follow unmapped ones not followed yet; return the
        stream's last sequence at the listing (no subject unlisted then has a message up to it).
        """
        info = await self.js.stream_info(self.stream, subjects_filter=self.wildcard)
        last = int(info.state.last_seq or 0)
        if self.wide is not None:
            return last
        unmapped = set(info.state.subjects or {}) - self.mapped
        if len(unmapped) > MAX_SUBJECT_READS:
            # Many subjects (one per symbol): one consumer for all; what the per-subject ones
            # received is kept, and `delivered` drops what the wide one delivers again.
            for f in self.followers.values():
                self._carry.extend(f.drain())
                await f.close()
            self.followers = {}
            self.wide = TailFollower(self.js, self.stream, self.wildcard, self.after)
            return last
        for subject in sorted(unmapped - set(self.followers)):
            self.followers[subject] = TailFollower(self.js, self.stream, subject, self.after)
        return last

    async def check(
        self, *, final: bool = False, skips_only: bool = False
    ) -> list[tuple[int, int]]:
        """Sequences the stream removed before a follower received them (`check_followers`),
        over all unmapped subjects; while following (no end fixed), first follow subjects that
        appeared (`discover`)."""
        if self.stop is None and not skips_only:
            await self.discover()
        followers = self._all()
        found = await check_followers(
            self.js,
            followers,
            [self.stop] * len(followers),
            final=final,
            skips_only=skips_only,
            states=self.states,
        )
        return sorted(run for runs in found for run in runs)

    def has_skips(self) -> bool:
        """True when a follower has skipped sequences not yet checked."""
        return any(f.skips for f in self._all())

    def _all(self) -> list[TailFollower]:
        return [self.wide] if self.wide is not None else list(self.followers.values())

    async def fix_end(self) -> None:
        """Stop at what is stored now: the stream's last sequence and each subject's newest."""
        self.stop = await self.discover()
        if self.wide is not None:
            self.ends = {self.wildcard: self.stop}
            self.wide.end_at(self.stop)
            return
        self.ends = {
            s: min(await last_subject_seq(self.js, self.stream, s), self.stop)
            for s in self.followers
        }
        for s, end in self.ends.items():
            self.followers[s].end_at(end)

    def done(self) -> bool:
        """Every follower reached its end (only after `fix_end`)."""
        if self.stop is None:
            return False
        if self._carry:
            return False
        if self.wide is not None:
            return self.wide.reached(self.stop)
        return all(self.followers[s].reached(end) for s, end in self.ends.items())

    async def poll(self, timeout: float) -> list[TailMessage]:
        """Unmapped messages that arrived since the last poll, in stream order."""
        followers = self._all()
        got = await asyncio.gather(*(f.poll(timeout) for f in followers))
        out: list[TailMessage] = []
        for batch in [self._carry, *got]:
            for m in batch:
                if m.subject in self.mapped or m.seq <= self.delivered.get(m.subject, self.after):
                    continue
                self.delivered[m.subject] = m.seq
                out.append(m)
        self._carry = []
        out.sort(key=lambda m: m.seq)
        return out

    async def close(self) -> None:
        """Unsubscribe every follower."""
        for f in self._all():
            await f.close()


def _merge_runs(runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """`runs` sorted, overlapping or adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _merge(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or b is None:
        return a or b
    return (min(a[0], b[0]), max(a[1], b[1]))


def create_live_views(
    lake: Lake, con: duckdb.DuckDBPyConnection, identifiers: Sequence[str]
) -> dict[str, LiveRange]:
    """Create one view per table: current snapshot, plus the stream tail for bus-fed tables.

    Silver tables (and any table without a subject) get a plain view of their current snapshot.

    Args:
        lake: the `Lake` whose catalog and NATS loop to use (`lake.last_pins` is set).
        con: the DuckDB connection to create the views in.
        identifiers: the tables.

    Returns:
        Table → `LiveRange` for every bus-fed table.

    Raises:
        TransientError: NATS cannot be reached or a tail read stalled.
    """
    from iceberg_lake.timetravel.query import scan_sql

    catalog = lake.catalog
    # Schema inference: its consumer's ack floor is read BEFORE the tables are loaded, so what
    # is at or below it is in the snapshots read (None: no consumer now).
    floor: int | None = None
    mapped: frozenset[str] | None = None
    if any(_receives_inferred(catalog.definition(i)) for i in identifiers):
        loop = lake.live_loop()
        floor = loop.run(_inferred_floor(loop))
        mapped = inferred_mapped_subjects(catalog)
    loaded: dict[str, Table] = {}
    sources: list[TailSource] = []
    for ident in identifiers:
        table = catalog.load_table(ident)
        loaded[ident] = table
        definition = catalog.definition(ident)
        if is_live_table(definition):
            sources.append(TailSource(definition, table, mapped))
    ends: dict[str, int] = {}
    if sources:
        loop = lake.live_loop()
        ends = loop.run(_read_tails(loop, sources))
    ranges: dict[str, LiveRange] = {}
    pins: dict[str, int | None] = {}
    by_ident = {s.identifier: s for s in sources}
    inferred_end, inferred_ids = _read_inferred_tails(lake, sources, floor, mapped)
    for ident, table in loaded.items():
        ns, name = ident.split(".", 1)
        current = table.metadata.current_snapshot_id
        sid = current if current is not None and current >= 0 else None
        pins[ident] = sid
        sql = scan_sql(table, sid)
        if ident in by_ident:
            src = by_ident[ident]
            rows, messages = lake.live_loop().tails[ident].view(ends[ident])
            if rows.num_rows:
                rel = f"__live_tail_{ns}_{name}"
                con.register(rel, rows)
                sql = f"{sql} UNION ALL BY NAME SELECT * FROM {quote_ident(rel)}"
            # Rows routed here by schema inference: a second tail, its own relation.
            tails = lake.live_loop().tails  # made above: this table has a tail
            logs = [tails[ident].log]
            newest = _newest(rows)
            inferred_after: int | None = None
            inferred_rows = inferred_messages = 0
            if ident in inferred_ids:
                icache = tails[ident + _INFERRED]
                irows, inferred_messages = icache.view(inferred_end)
                inferred_after, inferred_rows = icache.after, irows.num_rows
                logs.append(icache.log)
                if irows.num_rows:
                    irel = f"__live_inferred_{ns}_{name}"
                    con.register(irel, irows)
                    sql = f"{sql} UNION ALL BY NAME SELECT * FROM {quote_ident(irel)}"
                    both = [v for v in (newest, _newest(irows)) if v is not None]
                    newest = max(both) if both else None
            ranges[ident] = LiveRange(
                table=ident,
                snapshot_id=sid,
                stream=src.stream,
                subject=src.subject,
                watermark=src.watermark,
                last_seq=ends[ident],
                tail_messages=messages + inferred_messages,
                tail_rows=rows.num_rows + inferred_rows,
                newest_tail_ns=newest,
                removed=_merge(*(log.envelope for log in logs))
                if len(logs) > 1
                else logs[0].envelope,
                inferred_after=inferred_after,
                inferred_last_seq=inferred_end if inferred_after is not None else None,
                inferred_rows=inferred_rows,
                gaps=tuple(_merge_runs([r for log in logs for r in log.runs])),
                unlisted_gaps=sum(log.more_runs for log in logs),
                unlisted_removed=sum(log.more_seqs for log in logs),
                stream_error=tails[ident].stream_error,
            )
        with catalog_errors(f"opening {ident}"):
            con.execute(f"CREATE OR REPLACE VIEW {ns}.{quote_ident(name)} AS {sql}")
    lake.last_pins = pins
    return ranges


# ---- freshness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """Event-time freshness of one table: how far behind now its newest event is.

    Attributes:
        table: table identifier.
        committed_newest_ns: largest `ts_event_ns` in the current snapshot (None: no rows).
        live_newest_ns: largest `ts_event_ns` of the live view (snapshot ∪ tail); None when
            NATS was not read.
        committed_seconds: now − committed newest (None: no rows).
        live_seconds: now − live newest (None: unknown).
        live_warning: set when the stream removed messages after the committed watermark
            (by its limits, before the table committed them): the live view may have a gap.
    """

    table: str
    committed_newest_ns: int | None
    live_newest_ns: int | None
    committed_seconds: float | None
    live_seconds: float | None
    live_warning: str | None = None


def committed_newest_ns(table: Table) -> int | None:
    """The largest `ts_event_ns` in `table`'s current snapshot, from column statistics.

    Cheap: the manifest list's partition bounds name the newest time partition, and only the
    data files of that partition (and later) are planned; their `ts_event_ns` upper bounds give
    the answer. Falls back to every file's bounds when the partition bounds cannot be used.
    """
    from pyiceberg.expressions import AlwaysTrue

    snap = table.current_snapshot()
    if snap is None:
        return None
    schema = table.schema()
    try:
        schema.find_field("ts_event_ns")
    except ValueError:
        return None
    row_filter: Any = AlwaysTrue()
    spec = table.spec()
    unit_us = {"hour": 3_600_000_000, "day": 86_400_000_000}
    for pos, pf in enumerate(spec.fields):
        transform = str(pf.transform)
        source = schema.find_column_name(pf.source_id)
        if source != "ts_event" or transform not in unit_us:
            continue
        newest: int | None = None
        for manifest in snap.manifests(table.io):
            if manifest.partition_spec_id != spec.spec_id or not manifest.partitions:
                newest = None
                break
            bounds = partition_field_bounds(manifest, spec, schema, pos)
            if bounds is not None:
                value = int(bounds[1])
                newest = value if newest is None else max(newest, value)
        if newest is not None:
            lo = datetime.fromtimestamp(newest * unit_us[transform] / 1e6, tz=UTC)
            row_filter = filters.ge("ts_event", lo.isoformat())
        break
    best: int | None = None
    with catalog_errors(f"planning {table.name()}"):
        for task in table.scan(row_filter=row_filter, snapshot_id=snap.snapshot_id).plan_files():
            file_bounds = column_bounds(task.file, schema, "ts_event_ns")
            if file_bounds is not None:
                value = int(file_bounds[1])
                best = value if best is None else max(best, value)
    return best


async def _tail_newest(
    loop: NatsLoop,
    src: TailSource,
    inferred_after: int | None = None,
    unmapped_last: Sequence[TailMessage] = (),
) -> tuple[int | None, str | None]:
    """Newest event time of the tail: the newest message on the subject, if beyond the
    watermark (decoded with the writer's codec; None when it is rejected or there is none);
    and the warning when the stream removed messages after the watermark.

    With `inferred_after` (the table has an inferred tail), also the newest message of each
    unmapped subject beyond it (`unmapped_last`), decoded by the writer's `InferredDecoder`.
    """
    js = await loop.js()
    msg = await last_subject_msg(js, src.stream, src.subject)
    live = await stream_identity(js, src.stream)
    first = live.first_seq if live is not None else 0
    if live is not None:
        problem = src.stream_mismatch(live.created, live.first_seq, live.last_seq)
        if problem is not None:
            return None, f"{problem} (the live view holds the table's snapshot only)"
    removed = removed_range(src.watermark, first)
    newest: list[int] = []
    if msg is not None and msg.seq > src.watermark:
        own = _newest(src.decode([msg]))
        if own is not None:
            newest.append(own)
    if inferred_after is not None:
        removed = _merge(removed, removed_range(inferred_after, first))
        mine = [m for m in unmapped_last if m.seq > inferred_after]
        rows = src.decode_with_seqs(mine, decoder=src.inferred)[0]
        if (ns := _newest(rows)) is not None:
            newest.append(ns)
    inferred = inferred_after is not None
    warning = (
        removed_warning(src.identifier, src.stream, src.subject, removed, inferred=inferred)
        if removed
        else None
    )
    return (max(newest) if newest else None), warning


async def _unmapped_last(loop: NatsLoop, mapped: frozenset[str], after: int) -> list[TailMessage]:
    """The newest message of each unmapped `market.*` subject, where it is beyond `after`."""
    js = await loop.js()
    stream, _, wildcard = consumer_target(INFERRED_TARGET)
    info = await js.stream_info(stream, subjects_filter=wildcard)
    if int(info.state.last_seq or 0) <= after:
        return []
    unmapped = sorted(set(info.state.subjects or {}) - mapped)
    got = await asyncio.gather(*(last_subject_msg(js, stream, s) for s in unmapped))
    return [m for m in got if m is not None and m.seq > after]


def freshness(
    catalog: LakeCatalog,
    identifiers: Sequence[str],
    *,
    live: bool = True,
    now_ns: int | None = None,
    timeout: float = 3.0,
) -> dict[str, Freshness]:
    """Event-time freshness of the committed tables and of their live views.

    The live view counts the rows schema inference routes into a Bronze table as a live query
    does (unmapped subjects' newest messages beyond the table's inferred start).

    Args:
        catalog: the lake catalog.
        identifiers: tables to report (tables without `ts_event_ns` are left out).
        live: also read the stream tails (NATS); otherwise `live_*` are None.
        now_ns: reference time (default: now).
        timeout: seconds for NATS.

    Returns:
        Table → `Freshness`.

    Raises:
        TransientError/LakeError: NATS cannot be reached (only with `live`).
    """
    now = time.time_ns() if now_ns is None else now_ns
    committed: dict[str, int | None] = {}
    sources: list[TailSource] = []
    tails: dict[str, tuple[int | None, str | None]] = {}
    loop = NatsLoop(catalog) if live else None
    try:
        inference: InferenceStart | None = None
        live_ids = [i for i in identifiers if is_live_table(catalog.definition(i))]
        if loop is not None and any(_receives_inferred(catalog.definition(i)) for i in live_ids):
            # Before the tables are loaded (see `inference_start`).
            floor = loop.run(asyncio.wait_for(_inferred_floor(loop), timeout))
            inference = InferenceStart(floor, inferred_mapped_subjects(catalog))
        for ident in identifiers:
            table = catalog.load_table(ident)
            if "ts_event_ns" not in {f.name for f in table.schema().fields}:
                continue
            committed[ident] = committed_newest_ns(table)
            if loop is not None and ident in live_ids:
                mapped = inference.mapped if inference is not None else None
                sources.append(TailSource(catalog.definition(ident), table, mapped))
        if loop is not None and sources:
            nats = loop
            after = {
                s.identifier: inference.after(s)
                for s in sources
                if inference is not None and inference.applies(s)
            }

            async def all_tails() -> list[tuple[int | None, str | None]]:
                last: list[TailMessage] = []
                if after and inference is not None:
                    last = await _unmapped_last(nats, inference.mapped, min(after.values()))
                return await asyncio.gather(
                    *(_tail_newest(nats, s, after.get(s.identifier), last) for s in sources)
                )

            got = loop.run(asyncio.wait_for(all_tails(), timeout))
            tails = dict(zip([s.identifier for s in sources], got, strict=True))
    finally:
        if loop is not None:
            loop.close()

    def age(ns: int | None) -> float | None:
        return None if ns is None else round((now - ns) / 1e9, 3)

    out: dict[str, Freshness] = {}
    for ident, c in committed.items():
        lv: int | None = None
        warning: str | None = None
        if ident in tails:
            tail_ns, warning = tails[ident]
            candidates = [v for v in (c, tail_ns) if v is not None]
            lv = max(candidates) if candidates else None
        out[ident] = Freshness(ident, c, lv, age(c), age(lv) if ident in tails else None, warning)
    return out


# ---- live replay ---------------------------------------------------------------------------------


class LiveTail:
    """The live continuation of a `ReplayEngine`: its pinned history, then the stream tail.

    Created by `ReplayEngine(..., live=True)` with the engine's loaded tables, so each table's
    watermark is read from the metadata its pinned snapshot came from: every event of the window
    is delivered exactly once across the history/tail boundary. A Bronze table that schema
    inference routes into (its consumer exists, or it has committed there) has a second tail:
    unmapped `market.*` messages after `inference.after(...)`, decoded by the writer's
    `InferredDecoder`, read by an `_UnmappedFollower` shared by the tables.

    Args:
        engine: the replay engine (pins must be the current snapshots: no `as_of`).
        follow: keep reading as events arrive until the window's end has passed (plus
            `lateness_seconds`); without it, stop at the newest message at the start of the tail.
        lateness_seconds: how long after `end_ns` (wall clock) events stamped inside the window
            are still waited for.
        poll_seconds: how long one arrival round waits for the first message.
        inference: schema inference as read BEFORE the engine loaded its tables
            (`inference_start`; None: no inferred tails).
    """

    def __init__(
        self,
        engine: ReplayEngine,
        *,
        follow: bool = False,
        lateness_seconds: float = 1.0,
        poll_seconds: float = 0.2,
        inference: InferenceStart | None = None,
    ) -> None:
        if engine.as_of is not None:
            raise TimeTravelError("a live replay starts at the current snapshots: drop --as-of")
        self.engine = engine
        self.follow = follow
        self.lateness_seconds = lateness_seconds
        self.poll_seconds = poll_seconds
        self.inference = inference
        self.sources: list[tuple[int, TailSource, Any]] = []
        #: Table → the stream sequence after which its inferred rows are read (tables with an
        #: inferred tail only).
        self.inferred_after: dict[str, int] = {}
        mapped = inference.mapped if inference is not None else None
        for index, src in enumerate(engine.pinned_sources):
            if is_live_table(src.definition):
                tail = TailSource(src.definition, src.table, mapped)
                if inference is not None and inference.applies(tail):
                    self.inferred_after[tail.identifier] = inference.after(tail)
                self.sources.append((index, tail, src))
        self.tail_events = 0
        self.tail_ranges: dict[str, list[int]] = {}
        #: Last unmapped-subject sequence read for the inferred tails (None: none read).
        self.inferred_last_seq: int | None = None
        self.rounds = 0
        #: Table → the runs of stream sequences of its range that the stream removed (limits,
        #: purges, deletes) before the tail received them, each sequence once, none received
        #: (`_check_gaps`; a run may hold only other subjects' messages: JetStream does not
        #: record a removed message's subject). Listed up to `MAX_LISTED_GAPS`, then counted.
        self.gaps: dict[str, GapLog] = {}
        #: Table → the stream's last sequence when the end of the read was fixed (None: not
        #: fixed, following): later sequences are not the replay's.
        self._horizon: dict[str, int] | None = None
        self._checks = 0
        self._checked_at = 0.0
        self._loop: NatsLoop | None = None
        self._unmapped: _UnmappedFollower | None = None
        #: Stream states of the removal checks (the removed list is fetched when it changed).
        self._states = StreamStates()

    @property
    def removed(self) -> dict[str, tuple[int, int]]:
        """Table → the envelope `(first, last)` of its `gaps` (listed or not)."""
        return {t: env for t, g in self.gaps.items() if (env := g.envelope) is not None}

    def manifest_extra(self) -> dict[str, Any]:
        """The manifest's `live` section: per table the watermark and tail range read."""
        return {
            "live": {
                "follow": self.follow,
                "tail_events": self.tail_events,
                "tail_rounds": self.rounds,
                "order": "history in replay order, then the tail in arrival rounds, each "
                "sorted by the replay key",
                "tables": {
                    src.identifier: {
                        "stream": src.stream,
                        "watermark": src.watermark,
                        "last_seq": self.tail_ranges.get(src.identifier, [src.watermark])[-1],
                        "inferred_after": self.inferred_after.get(src.identifier),
                        "removed": list(self.removed[src.identifier])
                        if src.identifier in self.removed
                        else None,
                        "gaps": [list(g) for g in self._log(src.identifier).runs],
                        "unlisted_gaps": self._log(src.identifier).more_runs,
                        "unlisted_removed": self._log(src.identifier).more_seqs,
                    }
                    for _, src, _ in self.sources
                },
                "inferred_last_seq": self.inferred_last_seq,
                "warnings": self.warnings(),
            }
        }

    def _log(self, table: str) -> GapLog:
        return self.gaps.get(table) or GapLog()

    def warnings(self) -> list[str]:
        """One line per table whose tail the stream removed sequences of before they were
        received (naming up to `WARNING_RUNS` runs, counting the rest)."""
        out = []
        for _, src, _ in self.sources:
            log = self.gaps.get(src.identifier)
            if log and (envelope := log.envelope) is not None:
                out.append(
                    removed_warning(
                        src.identifier,
                        src.stream,
                        src.subject,
                        envelope,
                        inferred=src.identifier in self.inferred_after,
                        runs=log.runs,
                        more_runs=log.more_runs,
                        more_seqs=log.more_seqs,
                    )
                )
        return out

    def _note_gaps(self, src: TailSource, runs: list[tuple[int, int]]) -> None:
        """Record runs removed before the tail received them; log the new ones (one line)."""
        gaps = self.gaps.setdefault(src.identifier, GapLog())
        new = [(lo, hi) for lo, hi in _merge_runs(runs) if gaps.add(lo, hi)]
        if not new:
            return
        inferred = src.identifier in self.inferred_after
        envelope = (new[0][0], new[-1][1])
        log.warning(
            "%s",
            removed_warning(
                src.identifier, src.stream, src.subject, envelope, inferred=inferred, runs=new
            ),
        )

    def _check_gaps(
        self, followers: dict[str, TailFollower], *, final: bool = False, skips_only: bool = False
    ) -> None:
        """Find messages the stream removed (limits, purges, deletes) before the tail got them.

        JetStream keeps no record of what it removed, only which sequences it still holds. Each
        follower accounts for every sequence after its start (`TailFollower`): received, skipped
        between two received ones, or shown to hold nothing of its subject still to come;
        `check_followers` reports the skipped sequences the stream no longer holds (a stored
        one is another subject's) and the removed ones after the position once nothing of the
        subject is stored beyond it. A received message is never reported, and each sequence
        at most once. The unmapped subjects' ranges are each inferred table's (after its
        inferred start).

        Args:
            followers: the tables' own-subject followers.
            final: the read's end was reached (see `check_followers`).
            skips_only: classify the skips only (after each round that had some).
        """
        assert self._loop is not None
        loop = self._loop
        unmapped = self._unmapped
        horizon = self._horizon
        idents = list(followers)

        async def read() -> tuple[list[list[tuple[int, int]]], list[tuple[int, int]]]:
            js = await loop.js()
            own = await check_followers(
                js,
                [followers[i] for i in idents],
                [None if horizon is None else horizon[i] for i in idents],
                final=final,
                skips_only=skips_only,
                states=self._states,
            )
            theirs: list[tuple[int, int]] = []
            if unmapped is not None:
                theirs = await unmapped.check(final=final, skips_only=skips_only)
            return own, theirs

        own, theirs = loop.run(read())
        found = dict(zip(idents, own, strict=True))
        for _, src, _ in self.sources:
            runs = list(found.get(src.identifier, []))
            after = self.inferred_after.get(src.identifier)
            if after is not None:
                runs += [(max(lo, after + 1), hi) for lo, hi in theirs if hi > after]
            if runs:
                self._note_gaps(src, runs)
        if not skips_only:
            self._checks += 1
            self._checked_at = time.monotonic()

    def events(self, history: Iterator[ReplayEvent]) -> Iterator[ReplayEvent]:
        """`history` (the engine's events), then the tail events of the window.

        Args:
            history: the engine's pinned event stream (counted and hashed by the engine).

        Yields:
            History events, then tail events (see the module docstring for their order).
        """
        yield from history
        if not self.sources:
            return
        self._loop = NatsLoop(self.engine.catalog)
        try:
            yield from self._tail()
        finally:
            self._loop.close()
            self._loop = None

    def _tail(self) -> Iterator[ReplayEvent]:
        assert self._loop is not None
        loop = self._loop
        followers: dict[str, TailFollower] = {}

        async def fix_ends(js: Any) -> dict[str, int]:
            # Each stream's last sequence first (the horizon of the gap checks), then each
            # subject's newest message (where its follower stops): a message of the subject
            # between the two was removed before the second read.
            streams = sorted({src.stream for _, src, _ in self.sources})
            last = {s: int((await js.stream_info(s)).state.last_seq or 0) for s in streams}
            ends = {
                src.identifier: await last_subject_seq(js, src.stream, src.subject)
                for _, src, _ in self.sources
            }
            self._horizon = {
                src.identifier: max(last[src.stream], ends[src.identifier])
                for _, src, _ in self.sources
            }
            for ident, end in ends.items():
                if ident in followers:
                    # Messages beyond the end are not buffered; the first one ends the
                    # follower's subscription (a busy subject would keep it delivering).
                    followers[ident].end_at(end)
            return ends

        async def setup() -> dict[str, int] | None:
            js = await loop.js()
            streams = {src.stream for _, src, _ in self.sources}
            live = {s: await stream_identity(js, s) for s in sorted(streams)}
            for _, src, _ in self.sources:
                now = live[src.stream]
                problem = (
                    src.stream_mismatch(now.created, now.first_seq, now.last_seq) if now else None
                )
                if problem is not None:
                    # Its sequences are another stream's: the tail cannot continue the history.
                    raise TimeTravelError(f"live replay: {problem}")
            for _, src, _ in self.sources:
                followers[src.identifier] = TailFollower(js, src.stream, src.subject, src.watermark)
            ends = None if self.follow else await fix_ends(js)
            if self.inferred_after and self.inference is not None:
                after = min(self.inferred_after.values())
                self._unmapped = _UnmappedFollower(js, self.inference.mapped, after, self._states)
                if self.follow:
                    await self._unmapped.discover()
                else:
                    await self._unmapped.fix_end()
            return ends

        async def poll(timeout: float) -> dict[str, list[TailMessage]]:
            # (A following read finds subjects that appear meanwhile in `_check_gaps`.)
            unmapped = self._unmapped
            polls = [f.poll(timeout) for f in followers.values()]
            if unmapped is not None:
                polls.append(unmapped.poll(timeout))
            got = await asyncio.gather(*polls)
            arrived = dict(zip(followers, got[: len(followers)], strict=True))
            if unmapped is not None:
                arrived[_INFERRED] = got[-1]
            return arrived

        async def ends_now() -> dict[str, int]:
            js = await loop.js()
            if self._unmapped is not None:
                await self._unmapped.fix_end()
            return await fix_ends(js)

        async def close() -> None:
            for f in followers.values():
                await f.close()
            if self._unmapped is not None:
                await self._unmapped.close()

        stop_at = loop.run(setup())
        engine = self.engine
        engine.set_complete(False)
        end_wall_ns = self.engine.end_ns + int(self.lateness_seconds * 1e9)
        try:
            while True:
                if self.follow and stop_at is None and time.time_ns() >= end_wall_ns:
                    # The window is over: take what is stored now, then stop.
                    stop_at = loop.run(ends_now())
                # Everything up to the end handed out (a message received in the background
                # waits for the next poll), or shown to be nothing still to come (a follower
                # whose last message the stream removed is done once a check shows it).
                done = stop_at is not None and all(
                    followers[i].reached(stop_at.get(i, 0)) for i in followers
                )
                if done and (self._unmapped is None or self._unmapped.done()):
                    # What was removed since the last check, up to the horizon.
                    self._check_gaps(followers, final=True)
                    engine.set_complete(True)
                    return
                arrived = loop.run(poll(self.poll_seconds))
                yield from self._round(arrived, stop_at)
                if not self._checks or (
                    time.monotonic() - self._checked_at >= REMOVAL_CHECK_SECONDS
                ):
                    self._check_gaps(followers)
                elif any(f.skips for f in followers.values()) or (
                    self._unmapped is not None and self._unmapped.has_skips()
                ):
                    # Soon after they were received: other subjects' messages between them
                    # are told apart from removed ones while the stream still holds them.
                    self._check_gaps(followers, skips_only=True)
        finally:
            loop.run(close())
            self._unmapped = None

    def _round(
        self, arrived: dict[str, list[TailMessage]], stop_at: dict[str, int] | None
    ) -> Iterator[ReplayEvent]:
        import pyarrow.compute as pc

        from iceberg_lake.timetravel.replay import ReplayEvent

        lo, hi = self.engine.start_ns, self.engine.end_ns
        unmapped = arrived.get(_INFERRED, [])
        inferred_stop = self._unmapped.stop if self._unmapped is not None else None
        if inferred_stop is not None:
            unmapped = [m for m in unmapped if m.seq <= inferred_stop]
        if unmapped:
            self.inferred_last_seq = unmapped[-1].seq
        keyed: list[tuple[tuple[Any, ...], ReplayEvent]] = []
        for index, src, replay_src in self.sources:
            msgs = arrived.get(src.identifier, [])
            if stop_at is not None:
                msgs = [m for m in msgs if m.seq <= stop_at.get(src.identifier, 0)]
            parts: list[pa.Table] = []
            if msgs:
                rng = self.tail_ranges.setdefault(src.identifier, [msgs[0].seq, msgs[-1].seq])
                rng[1] = msgs[-1].seq
                parts.append(src.decode(msgs))
            after = self.inferred_after.get(src.identifier)
            if after is not None and unmapped:
                mine = [m for m in unmapped if m.seq > after]
                # Rows schema inference routes here (the writer's InferredDecoder; messages it
                # routes to other tables or rejects give no rows here).
                parts.append(src.decode_with_seqs(mine, decoder=src.inferred)[0])
            parts = [p for p in parts if p.num_rows]
            if not parts:
                continue
            rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            ts = rows.column("ts_event_ns")
            mask = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
            rows = rows.filter(mask)
            if rows.num_rows == 0:
                continue
            # The replay key (`ASC NULLS FIRST`, as the engine's reads).
            order = [(c, "ascending", "at_start") for c in replay_src.order]
            rows = rows.sort_by(order).select(list(replay_src.columns))
            # The engine's canonical encoding: tail events hash and compare like history ones.
            payloads = encode_rows(rows).cast(pa.binary()).to_pylist()
            subject = src.definition.subject or src.identifier
            for n, (payload, ts_ns) in enumerate(
                zip(payloads, rows.column("ts_event_ns").to_pylist(), strict=True)
            ):
                event = ReplayEvent(src.identifier, subject, payload, ts_ns)
                keyed.append(((ts_ns, index, n), event))
        keyed.sort(key=lambda item: item[0])
        self.rounds += 1
        engine = self.engine
        for _, event in keyed:
            self.tail_events += 1
            # The engine's manifest counts and hashes the tail like the history.
            engine.record_event(event)
            yield event
