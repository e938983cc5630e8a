"""Event-time freshness of the committed tables and of their live views (`lake status`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyiceberg.table import Table

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine import filters
from iceberg_lake.engine.iceberg import column_bounds, partition_field_bounds
from iceberg_lake.engine.nats import INFERRED_TARGET, consumer_target, stream_identity
from iceberg_lake.engine.nats_tail import TailMessage, last_subject_msg, read_tail, removed_range
from iceberg_lake.timetravel.live.gaps import merge_envelopes, removed_warning
from iceberg_lake.timetravel.live.inferred import (
    InferenceStart,
    inferred_floor,
    inferred_mapped_subjects,
)
from iceberg_lake.timetravel.live.loop import NatsLoop
from iceberg_lake.timetravel.live.source import (
    TailSource,
    is_live_table,
    newest_event_ns,
    receives_inferred,
)

__all__ = ["Freshness", "committed_newest_ns", "freshness"]


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


#: The live freshness reads the tail's most recent messages, the last this many stream
#: sequences of it (more, tenfold each time, while none of them decodes to an event): one
#: rejected or late message at the end does not stand for the tail (live16), and a tail of
#: hours (a writer down) is not read whole by a status.
RECENT_SEQUENCES = 1_000
MAX_RECENT_SEQUENCES = 100_000


async def _recent_newest(js: Any, src: TailSource, last: TailMessage) -> int | None:
    """Newest event time among the tail's most recent messages, up to `last`, decoded with the
    writer's codec (None: none of them is an event the writer would store)."""
    span = RECENT_SEQUENCES
    while True:
        after = max(src.watermark, last.seq - span)
        msgs = await read_tail(js, src.stream, src.subject, after, last.seq) or [last]
        newest = newest_event_ns(src.decode(msgs))
        if newest is not None or after == src.watermark or span >= MAX_RECENT_SEQUENCES:
            return newest
        span *= 10


async def _tail_newest(
    loop: NatsLoop,
    src: TailSource,
    inferred_after: int | None = None,
    unmapped_last: Sequence[TailMessage] = (),
) -> tuple[int | None, str | None]:
    """Newest event time of the tail: of its most recent messages (`RECENT_SEQUENCES`), decoded
    with the writer's codec (None when none is an event or the tail is empty); and the warning
    when the stream removed messages after the watermark.

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
        own = await _recent_newest(js, src, msg)
        if own is not None:
            newest.append(own)
    if inferred_after is not None:
        removed = merge_envelopes(removed, removed_range(inferred_after, first))
        mine = [m for m in unmapped_last if m.seq > inferred_after]
        rows = src.decode_with_seqs(mine, decoder=src.inferred)[0]
        if (ns := newest_event_ns(rows)) is not None:
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
        now_ns: reference time (default: when the reads end).
        timeout: seconds for NATS.

    Returns:
        Table → `Freshness`.

    Raises:
        TransientError/LakeError: NATS cannot be reached (only with `live`).
    """
    committed: dict[str, int | None] = {}
    sources: list[TailSource] = []
    tails: dict[str, tuple[int | None, str | None]] = {}
    loop = NatsLoop(catalog) if live else None
    try:
        inference: InferenceStart | None = None
        live_ids = [i for i in identifiers if is_live_table(catalog.definition(i))]
        if loop is not None and any(receives_inferred(catalog.definition(i)) for i in live_ids):
            # Before the tables are loaded (see `inference_start`).
            floor = inferred_floor(loop, catalog, timeout)
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

    # "Now" is when the reads ended: the newest event read may be younger than their start
    # (`lake status` warned of a publisher's clock ahead by the seconds its reads took).
    now = time.time_ns() if now_ns is None else now_ns

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
