"""Live views for queries: each table's current snapshot UNION ALL its stream tail.

A live view is

    current snapshot (pinned through the same metadata file the watermark was read from)
    UNION ALL the tail, decoded with the writer's own codec (same validation; messages the writer
    would dead-letter are left out)

so there is no gap and no overlap at any moment, whatever the writer does meanwhile (commits,
crashes, restarts): a commit after the table was loaded is simply not seen, and its messages are
read from the stream instead. Used by `Lake.query(sql, live=True)` / `lake query --live`. The
decoded tails are kept between queries of one `Lake` (`NatsLoop.tails`): the next query reads
only newer messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
from pyiceberg.table import Table

from iceberg_lake.catalog import catalog_errors
from iceberg_lake.engine.nats_tail import TailMessage, last_subject_seq, read_tail, skipped_runs
from iceberg_lake.silver.dedup import quote_ident
from iceberg_lake.tables import DEAD_LETTERS_TABLE
from iceberg_lake.timetravel.live.gaps import merge_envelopes, merge_runs, removed_warning
from iceberg_lake.timetravel.live.inferred import (
    INFERRED_KEY,
    inferred_floor,
    inferred_mapped_subjects,
    read_inferred_tails,
)
from iceberg_lake.timetravel.live.loop import NatsLoop, TailCache
from iceberg_lake.timetravel.live.source import (
    TailSource,
    is_live_table,
    newest_event_ns,
    receives_inferred,
)

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake

__all__ = ["LiveRange", "create_live_views", "live_warnings", "no_tail_notes"]


def live_warnings(ranges: dict[str, LiveRange]) -> list[str]:
    """The warnings of a live query's ranges (`Lake.last_live`), one line each."""
    return [w for r in ranges.values() if (w := r.warning) is not None]


def no_tail_notes(pins: dict[str, int | None], ranges: dict[str, LiveRange]) -> dict[str, str]:
    """Table → why a live query read only its snapshot, for each table read without a tail
    (`Lake.last_pins` without a `Lake.last_live` range): Silver tables, the dead letters.

    The dead letters are said apart: what the tails leave out (rejected messages) is in
    `bronze.dead_letters` only once a writer commits it, so `published = stored + dead letters`
    taken live comes up short by the tails' rejects (live19).
    """
    notes = {}
    for table in sorted(pins):
        if table in ranges:
            continue
        if table == DEAD_LETTERS_TABLE:
            notes[table] = "no live tail: the tails' rejects are dead letters once a writer commits"
        else:
            notes[table] = "no live tail: its current snapshot"
    return notes


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


async def _read_tails(loop: NatsLoop, sources: list[TailSource]) -> dict[str, int]:
    """Bring each source's tail cache up to the subject's newest message; return the ends."""
    js = await loop.js()

    async def one(src: TailSource) -> int:
        cache = loop.tails.get(src.identifier)
        if cache is None or cache.schema_id != src.schema_id or cache.after > src.watermark:
            cache = TailCache(src.watermark, src.schema_id, src.arrow_schema)
            loop.tails[src.identifier] = cache
        cache.advance(src.watermark)
        before = cache.last_seq
        # The end of the range is fixed before reading: later messages are the next query's.
        # Never below what the cache read: once the subject's newest message is removed (its
        # limits, a delete) the rows read before stay in the view, as documented, rather than
        # vanishing without a warning and coming back with the next message (live19 #3).
        upto = max(await last_subject_seq(js, src.stream, src.subject), src.watermark, before)
        read: list[np.ndarray] = []  # the sequences read (their messages are not kept)

        filling: TailCache = cache

        def take(msgs: list[TailMessage]) -> None:
            rows, seqs = src.decode_with_seqs(msgs)
            filling.add(msgs, rows, seqs)
            read.append(np.fromiter((m.seq for m in msgs), dtype=np.int64, count=len(msgs)))

        # Decoded as it arrives, a chunk at a time: the rows of a long tail (a writer down for
        # hours) take a fraction of its messages' memory (live16: 1.1 KB a message held whole).
        await read_tail(js, src.stream, src.subject, before, upto, on_chunk=take)
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
            cache = TailCache(src.watermark, src.schema_id, src.arrow_schema)
            cache.stream_error = f"{problem} (the live view holds the table's snapshot only)"
            loop.tails[src.identifier] = cache
            return src.watermark
        seqs_read = np.concatenate(read) if read else np.zeros(0, dtype=np.int64)
        skipped = skipped_runs(before, seqs_read, state.last_seq)
        cache.note_removed(state.removed_in(skipped))
        # Every message on the subject up to `upto` has been read (it was the newest one).
        cache.last_seq = max(cache.last_seq, upto)
        return upto

    ends = await asyncio.gather(*(one(s) for s in sources))
    return dict(zip([s.identifier for s in sources], ends, strict=True))


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
    # Schema inference: its writer's recorded position is read BEFORE the tables are loaded,
    # so what is at or below it is in the snapshots read (None: no consumer now).
    floor: int | None = None
    mapped: frozenset[str] | None = None
    if any(receives_inferred(catalog.definition(i)) for i in identifiers):
        loop = lake.live_loop()
        floor = inferred_floor(loop, catalog)
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
    inferred_end, inferred_ids = read_inferred_tails(lake, sources, floor, mapped)
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
            newest = newest_event_ns(rows)
            inferred_after: int | None = None
            inferred_rows = inferred_messages = 0
            if ident in inferred_ids:
                icache = tails[ident + INFERRED_KEY]
                irows, inferred_messages = icache.view(inferred_end)
                inferred_after, inferred_rows = icache.after, irows.num_rows
                logs.append(icache.log)
                if irows.num_rows:
                    irel = f"__live_inferred_{ns}_{name}"
                    con.register(irel, irows)
                    sql = f"{sql} UNION ALL BY NAME SELECT * FROM {quote_ident(irel)}"
                    both = [v for v in (newest, newest_event_ns(irows)) if v is not None]
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
                removed=merge_envelopes(*(log.envelope for log in logs))
                if len(logs) > 1
                else logs[0].envelope,
                inferred_after=inferred_after,
                inferred_last_seq=inferred_end if inferred_after is not None else None,
                inferred_rows=inferred_rows,
                gaps=tuple(merge_runs([r for log in logs for r in log.runs])),
                unlisted_gaps=sum(log.more_runs for log in logs),
                unlisted_removed=sum(log.more_seqs for log in logs),
                stream_error=tails[ident].stream_error,
            )
        with catalog_errors(f"opening {ident}"):
            con.execute(f"CREATE OR REPLACE VIEW {ns}.{quote_ident(name)} AS {sql}")
    lake.last_pins = pins
    return ranges
