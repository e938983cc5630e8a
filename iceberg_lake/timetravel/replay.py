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

How it runs (one pipeline behind every output). The window is cut into read windows: whole UTC
hours, grouped while the rows they hold (estimated from the pinned files' statistics, all tables)
stay under `window_rows` (400k), so sparse data costs few reads and dense data is read hour by
hour. The pinned files are planned once per replay (`engine.iceberg.plan_data_files`); for each
window, every table's rows are read straight from the Parquet files whose `ts_event_ns` bounds
overlap it (columns matched by field id, cast to the types DuckDB's `iceberg_scan` gives; a table
with delete files is read through `iceberg_scan`, which applies them; one thread per table), then
put in replay order without
a full sort: a stable argsort of `ts_event_ns` (linear on the sorted runs that Silver files and
time-ordered appends already are), and only rows that share a `ts_event_ns` with another row of the
same table are ordered by the full tie-break key (by DuckDB, with the same `ORDER BY` as before, so
equal keys order exactly as they always did). Tables are merged by one stable argsort of the
concatenated event times (table order breaks ties, the within-table order is kept). Each row's
canonical JSON is written by a compiled kernel (`iceberg_lake.timetravel.canonical`), every event
is copied once into its frame in merged order, and the sequence hash is one SHA-256 update over
the window's frames, on a hash thread (in window order) while the next window is read; for
`batches()` and `table_batches()`, which hand out no payloads, the framing runs on the hash thread
too (its failure is raised by the window two after it, or at the end). A background thread
prepares the next window while the current one is consumed (two threads and the next two windows
when the replay does not encode: `verify=False`). Day-partitioned tables (greeks) are read once
per day and sliced by window. A snapshot's plan for a window is kept in the process (the last 64),
so replaying the same pins again (a backtest sweep) reads no manifests.

Bounded memory: at most two read windows (the current and the prefetched one; three without
encoding; each about `window_rows` rows: sparse hours are grouped, dense hours split into time
slices) plus one day of a day-partitioned table (two at a day boundary without encoding) are held,
never the whole replay window; the
encoding buffers (one per
hour-partitioned table, two where `batches()` frames a window while the next is encoded, and two
for frames) are sized to the largest window, reused, and released when the replay ends.

Outputs.

* `batches()` yields `pyarrow.RecordBatch`es in replay order (`verify=False`: without building
  the canonical encoding and hash, about a third of the CPU): a `table` column (dictionary of
  table identifiers) followed by the union of the tables' columns (first-seen order; a table
  without a column has nulls there; a column whose type differs between tables, e.g. `exchange`
  int in stocks and string in futures, is a string column). Batches never span two read windows.
* `events()` yields `ReplayEvent`s (table, subject, canonical payload bytes, `ts_event_ns`); the
  row dict is decoded from the payload only when `event.row` is read. Iterating the engine
  yields dicts (`table` + row) as before.
* `publish()` sends the payloads to NATS in batches (core publish, flush per batch), paced by
  event time with `speed`.

Reproducibility. `manifest()` records the tables, the snapshot ids, the range, the event count
and a SHA-256 over the canonical encoding of every event in order (`table`, `\\x1f`, the row as
JSON with sorted keys, `\\n`). `ReplayEngine.from_manifest()` replays exactly the same pins; the
same hash proves the same sequence, whichever output produced it (the encoding and hash are the
same as in every earlier version: `tests/test_replay_compat.py`).

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
import hashlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.manifest import FileFormat
from pyiceberg.table import Table

from iceberg_lake.catalog import CatalogSource, as_catalog, catalog_errors
from iceberg_lake.engine.duck import connect as duck_connect
from iceberg_lake.engine.duck import quote_ident, quote_str, timestamptz_literal
from iceberg_lake.engine.iceberg import column_bounds, plan_data_files
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.tables import GOLD, TableDefinition
from iceberg_lake.timetravel.canonical import (
    Scratch,
    encode_rows_raw,
    frame_rows,
    one_array,
    warm_up,
)
from iceberg_lake.timetravel.order import (
    TIE_BREAK_RULE,
    TIE_BREAKS,
    order_by_sql,
    row_order,
    rule_of,
)
from iceberg_lake.timetravel.query import Lake, duckdb_path
from iceberg_lake.timetravel.readers import window_filter
from iceberg_lake.timetravel.snapshots import (
    AsOfSpec,
    pin_for,
    pin_snapshots,
    replay_pin_name,
    resolve_as_of,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FORMAT",
    "REPLAY_SEQ_COLUMN",
    "TIE_BREAK",
    "EventSink",
    "NatsSink",
    "ReplayEngine",
    "ReplayEvent",
    "compare_manifests",
    "read_manifest",
    "replay_subject",
]

MANIFEST_FORMAT = "iceberg-lake-replay/1"
#: The tie-break new manifests record (`order.TIE_BREAKS`).
TIE_BREAK = TIE_BREAKS[TIE_BREAK_RULE]
TABLE_COLUMN = "table"
#: The merge key of `ReplayEngine.table_batches()`: the event's position in the replay.
REPLAY_SEQ_COLUMN = "replay_seq"
_NS_PER_HOUR = 3_600 * 1_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR
_decoder = msgspec.json.Decoder()

#: Called with (events so far, ts_event_ns of the last event).
Progress = Callable[[int, int], None]


class ReplayEvent(msgspec.Struct, frozen=True):
    """One replayed event: its table, subject, canonical encoding and event time.

    `row` decodes the payload (the canonical JSON of the row) on each access: read it once. A
    NaN or infinite float reads back as None (the canonical JSON has no NaN).
    """

    table: str
    subject: str
    payload: bytes
    ts_event_ns: int

    @property
    def row(self) -> dict[str, Any]:
        """The row's columns (keys sorted), decoded from the payload."""
        row: dict[str, Any] = _decoder.decode(self.payload)
        return row

    def as_dict(self) -> dict[str, Any]:
        """The event as a dict: `table` plus the row's columns."""
        return {"table": self.table, **self.row}


#: Rows `ReplayEngine.__iter__` decodes in one call (one JSON array per chunk, not per event).
_DICT_CHUNK = 4_096
#: Rows spliced at once by `ReplayEngine.__iter__` (bounds its copy of the payloads).
_DICT_BLOCK = 65_536
_dicts_decoder = msgspec.json.Decoder(list[dict[str, Any]])


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


def _short(sequence_hash: str | None) -> str:
    return "no hash" if sequence_hash is None else sequence_hash[:19] + "…"


def compare_manifests(recorded: Mapping[str, Any], replayed: Mapping[str, Any]) -> str | None:
    """Why a replay of `recorded` (`from_manifest`) did not reproduce it, or None if it did.

    The event count is compared when both runs are complete (an interrupted run's count covers
    only the windows it read), the sequence hash when both manifests also have one
    (`--no-verify` runs have none).

    Returns:
        None, or one line: `<count> events, <hash> where the manifest recorded <count>, <hash>`.
    """
    if not (recorded.get("complete", True) and replayed.get("complete", True)):
        return None
    count, want_count = replayed.get("event_count"), recorded.get("event_count")
    got_hash, want_hash = replayed.get("sequence_hash"), recorded.get("sequence_hash")
    count_differs = want_count is not None and count != want_count
    hash_differs = want_hash is not None and got_hash is not None and got_hash != want_hash
    if not (count_differs or hash_differs):
        return None
    return (
        f"{count} events, {_short(got_hash)} where the manifest recorded {want_count} events, "
        f"{_short(want_hash)}"
    )


@dataclass
class _Part:
    """One table's rows of one window, in replay order, with their canonical JSON."""

    index: int
    #: The rows as read (not in replay order: `perm` orders them).
    rows: pa.Table
    #: Canonical JSON of every row of `rows` (`encode_rows_raw`: offsets, bytes), in `rows`
    #: order; None when the replay does not encode (`batches(verify=False)`).
    payloads: tuple[np.ndarray, np.ndarray] | None
    ts: np.ndarray
    #: Positions into `rows` of the part's events in replay order.
    perm: np.ndarray


@dataclass(frozen=True)
class _DataFile:
    """One planned data file and the `ts_event_ns` range (clipped to the replay) it holds."""

    path: str
    lo: int
    hi: int


_FIELD_ID = b"PARQUET:field_id"

#: Plans of pinned snapshots (`_Source.buckets`), newest last: (table uuid, snapshot id,
#: schema id, partition width, start, end) → (rows per partition, data files or None when read
#: through DuckDB).
_PLANS: OrderedDict[tuple[str, int, int, int, int, int], tuple[dict[int, float], Any]] = (
    OrderedDict()
)
_PLANS_KEPT = 64
_PLANS_LOCK = threading.Lock()
#: Windows prepared ahead of the consumer when the replay does not encode (`_windows`).
_AHEAD_UNENCODED = 2


def _read_parquet(
    table: Table,
    path: str,
    field_ids: Mapping[str, int],
    target: pa.Schema,
    lo_ns: int,
    hi_ns: int,
) -> pa.Table | None:
    """The rows of one Parquet data file with `lo_ns <= ts_event_ns < hi_ns`, as `target`."""
    with table.io.new_input(path).open() as stream:
        pf = pq.ParquetFile(stream)
        file_schema = pf.schema_arrow
        by_id: dict[int, str] = {}
        for field in file_schema:
            fid = (field.metadata or {}).get(_FIELD_ID)
            if fid is not None:
                by_id[int(fid)] = field.name
        # Files without field ids (imported by name) are matched by name; otherwise a column
        # whose id the file lacks was added later (nulls), even if an old column had its name.
        found = {
            col: by_id.get(fid) if by_id else col
            for col, fid in field_ids.items()
            if col in target.names
        }
        names = {col: n for col, n in found.items() if n is not None and n in file_schema.names}
        ts_name = names.get("ts_event_ns")
        if ts_name is None:
            return None
        ts_index = file_schema.names.index(ts_name)
        meta = pf.metadata
        groups = []
        whole = True  # every kept row group lies inside the window (no row filter needed)
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(ts_index).statistics
            if stats is None or not stats.has_min_max:
                groups.append(i)
                whole = False
                continue
            if stats.max < lo_ns or stats.min >= hi_ns:
                continue
            groups.append(i)
            whole = whole and stats.min >= lo_ns and stats.max < hi_ns
        if not groups:
            return None
        wanted = list(dict.fromkeys(names.values()))
        rows = pf.read_row_groups(groups, columns=wanted, use_threads=False)
    if not whole:
        ts = rows.column(ts_name)
        rows = rows.filter(pc.and_(pc.greater_equal(ts, lo_ns), pc.less(ts, hi_ns)))
    arrays = []
    for field in target:
        if field.name in names:
            col = rows.column(names[field.name])
            arrays.append(col if col.type == field.type else pc.cast(col, field.type))
        else:
            arrays.append(pa.nulls(rows.num_rows, field.type))  # added after this file
    return pa.Table.from_arrays(arrays, schema=target)


@dataclass
class _Window:
    """One merged window: the parts and the permutation that interleaves them."""

    lo: int
    hi: int
    parts: list[_Part]
    #: Positions into the concatenation of the parts, in replay order (None: one part).
    order: np.ndarray | None
    #: Source index of every merged row.
    sources: np.ndarray
    count: int
    #: Canonical JSON of every row, in replay order.
    payloads: pa.Array | None = None
    #: Event time of every row, in replay order.
    ts: np.ndarray | None = None
    #: The part (index into `parts`) of every row, in replay order.
    part_of: np.ndarray | None = None
    #: The row (in its part's `rows`) of every row, in replay order.
    rowpos: np.ndarray | None = None


class _Source:
    """One table's pinned snapshot and how to read it window by window."""

    def __init__(
        self,
        definition: TableDefinition,
        table: Table,
        snapshot_id: int | None,
        rule: int = TIE_BREAK_RULE,
    ) -> None:
        self.definition = definition
        self.identifier = definition.identifier
        self.subject = definition.subject or definition.identifier
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
        #: The row order within this table (`iceberg_lake.timetravel.order.row_order`).
        self.order = row_order(definition, self.columns, rule)
        transform = definition.time_partition.transform if definition.time_partition else "day"
        self.bucket_ns = _NS_PER_DAY if transform == "day" else _NS_PER_HOUR
        self.prefix = self.identifier.encode() + b"\x1f"
        self._cache: tuple[int, _Part] | None = None
        #: Guards `_cache` (windows of one day may be prepared concurrently).
        self.cache_lock = threading.Lock()
        #: Field id of every replayed column in the pinned schema (files are matched by id).
        self.field_ids = {f.name: f.field_id for f in schema.fields if f.name in self.columns}
        self._pinned_schema = schema
        #: The pinned data files of the replay window (`buckets` plans them once per replay);
        #: None: read through DuckDB (delete files, or not planned yet).
        self.files: list[_DataFile] | None = None
        #: The Arrow schema DuckDB gives this table's rows (the direct read is cast to it).
        self.arrow_schema: pa.Schema | None = None
        #: The buffers this table's payloads are encoded into, window after window: two, used
        #: in turn, so one window's payloads are framed while the next window is encoded.
        self.scratches = (Scratch(), Scratch())

    def buckets(self, start_ns: int, end_ns: int) -> dict[int, float]:
        """Start (ns) of every time partition in the window that holds data → rows (estimate).

        From the pinned snapshot's file statistics (no data read): a file's `record_count` is
        spread evenly over the partitions its `ts_event_ns` bounds span.
        """
        if self.snapshot_id is None:
            return {}
        schema = self.table.schema()
        # A snapshot never changes, so its plan for a window does not either: a backtest sweep
        # replaying the same pins again plans once per process.
        uuid = str(self.table.metadata.table_uuid)
        key = (uuid, self.snapshot_id, schema.schema_id, self.bucket_ns, start_ns, end_ns)
        with _PLANS_LOCK:
            cached = _PLANS.get(key)
            if cached is not None:
                _PLANS.move_to_end(key)
        if cached is not None:
            self.files = None if cached[1] is None else list(cached[1])
            return dict(cached[0])
        found: dict[int, float] = {}
        files: list[_DataFile] = []
        with catalog_errors(f"planning {self.identifier}"):
            planned, deletes = plan_data_files(
                self.table, self.snapshot_id, window_filter(start_ns, end_ns)
            )
            for data_file in planned:
                bounds = column_bounds(data_file, schema, "ts_event_ns")
                if bounds is None:
                    lo, hi = start_ns, end_ns - 1  # no stats: consider the whole window
                else:
                    lo, hi = max(start_ns, bounds[0]), min(end_ns - 1, bounds[1])
                if lo > hi:
                    continue
                if data_file.file_format == FileFormat.PARQUET:
                    files.append(_DataFile(data_file.file_path, lo, hi))
                else:
                    deletes = True  # not Parquet: read through DuckDB
                first = lo - lo % self.bucket_ns
                spanned = range(first, hi + 1, self.bucket_ns)
                for b in spanned:
                    found[b] = found.get(b, 0.0) + data_file.record_count / len(spanned)
        # Merge-on-read deletes: DuckDB applies them (the direct file reads would not).
        self.files = None if deletes else files
        found = dict(sorted(found.items()))
        with _PLANS_LOCK:
            _PLANS[key] = (found, None if self.files is None else tuple(self.files))
            while len(_PLANS) > _PLANS_KEPT:
                _PLANS.popitem(last=False)
        return dict(found)

    def simple_arrow_schema(self, con: duckdb.DuckDBPyConnection) -> pa.Schema | None:
        """The Arrow types DuckDB's `iceberg_scan` gives the replayed columns, without loading
        the Iceberg extension (~0.3 CPU-s per connection), or None for types where that is not
        certain (anything but booleans, numbers, decimals, strings, dates and timestamps).

        DuckDB maps those Iceberg types to the same logical types as their Arrow counterparts
        (`schema_to_pyarrow`), so a round trip of an empty table through DuckDB gives its types;
        `tests/test_replay.py` checks this against `iceberg_scan` for every declared table.
        """
        from pyiceberg import types as t
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        simple = (
            t.BooleanType,
            t.DateType,
            t.DecimalType,
            t.DoubleType,
            t.FloatType,
            t.IntegerType,
            t.LongType,
            t.StringType,
            t.TimestampType,
            t.TimestamptzType,
        )
        fields = [f for f in self._pinned_schema.fields if f.name in self.columns]
        if not all(isinstance(f.field_type, simple) for f in fields):
            return None
        arrow = schema_to_pyarrow(self._pinned_schema, include_field_ids=False)
        empty = pa.schema([arrow.field(f.name) for f in fields]).empty_table()
        relation = f"__lake_types_{id(empty)}"
        con.register(relation, empty)
        try:
            cols = ", ".join(quote_ident(f.name) for f in fields)
            return con.execute(f"SELECT {cols} FROM {relation} LIMIT 0").arrow().schema
        finally:
            con.unregister(relation)

    def read_files(self, lo_ns: int, hi_ns: int) -> pa.Table:
        """The rows of `[lo_ns, hi_ns)` read from the planned Parquet files directly.

        No per-window DuckDB query (each re-read the table metadata): the files were planned
        once (`buckets`), a window reads those whose `ts_event_ns` bounds overlap it, only the
        row groups whose statistics overlap it, and the columns matched by Iceberg field id
        (renamed columns read by their id, columns added later read as nulls, narrower types
        cast), then cast to the Arrow types DuckDB gives (`arrow_schema`), so the rows, their
        encoding and hash are DuckDB's. Row order is not kept: `replay_order` orders them.
        """
        assert self.files is not None and self.arrow_schema is not None
        target = self.arrow_schema
        pieces = []
        for data_file in self.files:
            if data_file.hi < lo_ns or data_file.lo >= hi_ns:
                continue
            piece = _read_parquet(self.table, data_file.path, self.field_ids, target, lo_ns, hi_ns)
            if piece is not None and piece.num_rows:
                pieces.append(piece)
        if not pieces:
            return target.empty_table()
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    def read_sql(self, lo_ns: int, hi_ns: int) -> str:
        """SQL for the rows of `[lo_ns, hi_ns)` (no order: `replay_order` orders them)."""
        location = quote_str(duckdb_path(self.table.metadata_location))
        cols = ", ".join(quote_ident(c) for c in self.columns)
        lo_ts, hi_ts = timestamptz_literal(lo_ns // 1_000), timestamptz_literal(-(-hi_ns // 1_000))
        return (
            f"SELECT {cols} FROM iceberg_scan({location}, snapshot_from_id={self.snapshot_id}) "
            f"WHERE ts_event >= {lo_ts} AND ts_event < {hi_ts} "
            f"AND ts_event_ns >= {lo_ns} AND ts_event_ns < {hi_ns}"
        )

    def tie_sql(self, relation: str) -> str:
        """SQL that orders the rows of `relation` by the full replay key, returning `__pos`."""
        return f"SELECT __pos FROM {relation} ORDER BY {order_by_sql(self.order)}"

    def replay_order(self, con: duckdb.DuckDBPyConnection, rows: pa.Table) -> np.ndarray | None:
        """The permutation that puts `rows` in replay order (None: they are in order).

        A stable argsort of the event time (Timsort: linear on the sorted runs that Silver files
        and time-ordered appends are), then the full key for ties: only rows sharing a
        `ts_event_ns` with another row are ordered by it (by DuckDB, the same `ORDER BY` as a
        full sort would use). Returning the permutation instead of the sorted rows lets the
        merge across tables take every column once.
        """
        ts = rows.column("ts_event_ns").to_numpy()
        if len(ts) < 2:
            return None
        in_order = bool(np.all(ts[1:] >= ts[:-1]))
        order = None if in_order else np.argsort(ts, kind="stable")
        ts_sorted = ts if order is None else ts[order]
        equal = ts_sorted[1:] == ts_sorted[:-1]
        if equal.any():
            if order is None:
                order = np.arange(len(ts))
            tied = np.zeros(len(ts), dtype=bool)
            tied[1:] |= equal
            tied[:-1] |= equal
            slots = np.flatnonzero(tied)
            subset = rows.take(pa.array(order[slots])).append_column(
                "__pos", pa.array(np.arange(len(slots)))
            )
            relation = f"__lake_ties_{id(subset)}"
            con.register(relation, subset)
            try:
                ranked = con.execute(self.tie_sql(relation)).arrow().read_all()
            finally:
                con.unregister(relation)
            order[slots] = order[slots][ranked.column(0).to_numpy()]
        return order


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
            events arrive until the window's end has passed.
        tie_break: the tie-break rule (`order.TIE_BREAKS`); `from_manifest` sets the one its
            manifest was recorded with.

    Raises:
        TimeTravelError: empty table list, bad window, unknown pin, table without event time.
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
        if start_ns >= end_ns:
            raise TimeTravelError(f"replay start ({start_ns}) must be before end ({end_ns})")
        if speed is not None and speed < 0:
            raise TimeTravelError(f"speed must be positive, got {speed}")
        self.tables = tables
        self.start_ns, self.end_ns = int(start_ns), int(end_ns)
        self.as_of = as_of
        self.speed = speed or None
        self.batch_rows = batch_rows
        self.window_rows = window_rows
        self.prefetch = prefetch
        inference: Any = None
        if live and as_of is None:
            from iceberg_lake.timetravel.live import inference_start, require_tails

            require_tails(self.catalog, tables)
            # Before the tables are loaded: rows schema inference acked by then are in them.
            inference = inference_start(self.catalog, tables)
        self._sources = self._resolve_pins()
        self.pins: dict[str, int | None] = {s.identifier: s.snapshot_id for s in self._sources}
        self._live: Any = None
        if live:
            from iceberg_lake.timetravel.live import LiveTail

            self._live = LiveTail(self, follow=follow, inference=inference)
        #: The tag protecting the snapshots read (None: `pin=False`); see `_pin`.
        self.pin_tag: str | None = None
        if pin:
            self._pin()
        self._stats_lock = threading.Lock()
        self._reset()
        self._schema: pa.Schema | None = None

    def _resolve_pins(self) -> list[_Source]:
        """The one place pins are resolved: one `_Source` (table + snapshot id) per table."""
        sources = []
        for ident in self.tables:
            definition = self.catalog.definition(ident)
            table = self.catalog.load_table(ident)
            sid = resolve_as_of(table, pin_for(self.as_of, ident))
            sources.append(_Source(definition, table, sid, self.tie_break))
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
            as_of={t: sid for t, sid in snapshots.items() if sid is not None},
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
    # pipeline below stays private.

    @property
    def pinned_sources(self) -> tuple[_Source, ...]:
        """The tables in tie-break order, each with its pinned snapshot (read-only use:
        `definition`, `table`, `identifier`, `columns`, `order`)."""
        return tuple(self._sources)

    def set_complete(self, complete: bool) -> None:
        """Set the manifest's `complete` flag for the current iteration (the live tail clears
        it while it reads past the pinned snapshots and sets it when it has read its range)."""
        self._complete = complete

    def record_event(self, event: ReplayEvent) -> None:
        """Count and hash `event`, delivered after the pinned windows, exactly as the window
        pipeline counts and hashes its own events, so the manifest covers it."""
        self._count += 1
        self._per_table[event.table] += 1
        self._hash.update(event.table.encode() + b"\x1f" + event.payload + b"\n")

    # ---- the window pipeline ------------------------------------------------------------------

    def _reset(self) -> None:
        self._count = 0
        self._complete = False
        self._per_table: dict[str, int] = dict.fromkeys(self.tables, 0)
        self._hash = hashlib.sha256()
        #: Whether the current iteration encodes and hashes (`batches(verify=False)` does not).
        self._encoding = True
        #: Whether windows carry each event's payload (`batches()` needs only the hash).
        self._bare = True
        #: The frames of the windows being hashed: two buffers used in turn, so one window is
        #: framed while the previous one is hashed on `_hasher` (frames are hashed, then dropped).
        self._frame_scratch = (Scratch(), Scratch())
        self._frame_turn = 0
        self._hashing: list[Future[None] | None] = [None, None]
        #: One thread that updates the sequence hash in window order (None: in `_prepare`).
        self._hasher: ThreadPoolExecutor | None = None
        #: DuckDB reads (one per table and time partition) and the largest (rows): evidence of
        #: bounded memory.
        self.partition_reads = 0
        self.max_partition_rows = 0

    def _plan(self) -> tuple[list[tuple[int, int]], list[set[int]]]:
        """The read windows, and each source's partitions that hold data.

        Windows are whole UTC hours, grouped while their estimated rows (all tables) stay under
        `window_rows`, so sparse data is read in few queries and dense data hour by hour; an hour
        holding more is split into equal time slices. A window never crosses midnight when a
        day-partitioned table takes part (its day is read once and sliced).
        """
        planned = [s.buckets(self.start_ns, self.end_ns) for s in self._sources]
        per_hour: dict[int, float] = {}
        for source, found in zip(self._sources, planned, strict=True):
            for b, rows in found.items():
                lo = max(self.start_ns, b)
                hi = min(self.end_ns, b + source.bucket_ns)
                hours = range(lo - lo % _NS_PER_HOUR, hi, _NS_PER_HOUR)
                for h in hours:
                    per_hour[h] = per_hour.get(h, 0.0) + rows / len(hours)
        by_day = any(s.bucket_ns == _NS_PER_DAY for s in self._sources)
        windows: list[tuple[int, int]] = []
        rows_in = 0.0
        for h in sorted(per_hour):
            same_day = not by_day or (windows and windows[-1][0] // _NS_PER_DAY == h // _NS_PER_DAY)
            if windows and same_day and rows_in + per_hour[h] <= self.window_rows:
                windows[-1] = (windows[-1][0], h + _NS_PER_HOUR)
                rows_in += per_hour[h]
            else:
                windows.append((h, h + _NS_PER_HOUR))
                rows_in = per_hour[h]
        spans: list[tuple[int, int]] = []
        for lo, hi in windows:
            lo, hi = max(self.start_ns, lo), min(self.end_ns, hi)
            rows = sum(
                per_hour.get(h, 0.0) for h in range(lo - lo % _NS_PER_HOUR, hi, _NS_PER_HOUR)
            )
            # An hour denser than window_rows is read in equal slices of event time (the
            # `ts_event_ns` filter is exact; row-group statistics keep the reads narrow).
            pieces = max(1, min(60, -(-int(rows) // self.window_rows)))
            edges = [lo + (hi - lo) * k // pieces for k in range(pieces + 1)]
            spans.extend(zip(edges[:-1], edges[1:], strict=True))
        return spans, [set(found) for found in planned]

    def _read(
        self, con: duckdb.DuckDBPyConnection, source: _Source, lo: int, hi: int, turn: int
    ) -> _Part:
        with catalog_errors(f"replaying {source.identifier}"):
            if source.files is not None and source.arrow_schema is not None:
                rows = source.read_files(lo, hi)
            else:
                rows = con.execute(source.read_sql(lo, hi)).arrow().read_all()
        with self._stats_lock:
            self.partition_reads += 1
            self.max_partition_rows = max(self.max_partition_rows, rows.num_rows)
        rows = rows.combine_chunks()
        order = source.replay_order(con, rows)
        ts = rows.column("ts_event_ns").to_numpy()
        perm = np.arange(len(ts)) if order is None else order
        # Encoded as read; the merge copies each payload once, in replay order (`frame_rows`).
        # An hour-partitioned table's payloads are needed only until this window is framed, so
        # its buffers are reused (this window's turn); a day's are cached.
        # Only `batches()` frames a window after the next one is encoded (on the hash thread):
        # the other outputs frame it at once and need one buffer.
        deferred = self._hasher is not None and not self._bare
        buffer = source.scratches[turn if deferred else 0]
        scratch = buffer if source.bucket_ns == _NS_PER_HOUR else None
        payloads = encode_rows_raw(rows, scratch=scratch) if self._encoding else None
        if order is not None:
            ts = ts[order]
        return _Part(self._sources.index(source), rows, payloads, ts, perm)

    def _part(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        buckets: set[int],
        lo: int,
        hi: int,
        turn: int,
    ) -> _Part | None:
        source = self._sources[index]
        if source.bucket_ns == _NS_PER_HOUR:
            first = lo - lo % _NS_PER_HOUR
            if not any(b in buckets for b in range(first, hi, _NS_PER_HOUR)):
                return None
            return self._read(con, source, lo, hi, turn)
        bucket = lo - lo % source.bucket_ns
        if bucket not in buckets:
            return None
        # Coarser partitions (day): read the partition once, hand out hour slices.
        with source.cache_lock:
            if source._cache is None or source._cache[0] != bucket:
                source._cache = None  # release the previous day before reading the next
                whole = self._read(
                    con,
                    source,
                    max(self.start_ns, bucket),
                    min(self.end_ns, bucket + source.bucket_ns),
                    turn,
                )
                source._cache = (bucket, whole)
            whole = source._cache[1]
        a, b = np.searchsorted(whole.ts, [lo, hi], side="left")
        if a == b:
            return None
        return _Part(index, whole.rows, whole.payloads, whole.ts[a:b], whole.perm[a:b])

    def _prepare(
        self,
        cursors: list[duckdb.DuckDBPyConnection],
        buckets: list[set[int]],
        lo: int,
        hi: int,
        pool: ThreadPoolExecutor | None,
    ) -> _Window:
        indexes = range(len(self._sources))
        # Windows use the encoding and frame buffers in turn; the turn's previous window must be
        # framed and hashed before its buffers are written again.
        turn, self._frame_turn = self._frame_turn, self._frame_turn ^ 1
        earlier = self._hashing[turn]
        if earlier is not None:
            earlier.result()
        if pool is None:
            found = [self._part(cursors[i], i, buckets[i], lo, hi, turn) for i in indexes]
        else:
            # Tables are read, ordered and encoded in parallel (DuckDB and Arrow release the GIL).
            futures = [
                pool.submit(self._part, cursors[i], i, buckets[i], lo, hi, turn) for i in indexes
            ]
            found = [f.result() for f in futures]
        parts = [p for p in found if p is not None and len(p.ts)]
        if not parts:
            return _Window(lo, hi, [], None, np.empty(0, np.int8), 0)
        if len(parts) == 1:
            # Single table: already in order, no merge.
            order = None
            sources = np.full(len(parts[0].ts), parts[0].index, dtype=np.int8)
            ts = parts[0].ts
            part_of = np.zeros(len(ts), dtype=np.int64)
            rowpos = parts[0].perm
        else:
            lengths = [len(p.ts) for p in parts]
            ts = np.concatenate([p.ts for p in parts])
            # Stable: equal times keep the concatenation order = table order, then row order.
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            part_of = np.repeat(np.arange(len(parts)), lengths)[order]
            sources = np.array([p.index for p in parts], dtype=np.int8)[part_of]
            rowpos = np.concatenate([p.perm for p in parts])[order]
        if not self._encoding:
            return _Window(lo, hi, parts, order, sources, len(sources), None, ts, part_of, rowpos)

        # One copy of every event's bytes, in replay order, and one hash update over them, on
        # the hash thread (in window order) while the next window is read. Without payloads to
        # hand out (`batches()`), the copy is made there too.
        def frame() -> tuple[np.ndarray, pa.Array | None]:
            return frame_rows(
                [p.payloads for p in parts if p.payloads is not None],
                [self._sources[p.index].prefix for p in parts],
                part_of,
                rowpos,
                bare=self._bare,
                scratch=self._frame_scratch[turn],
            )

        def frame_and_hash() -> None:
            self._hash.update(frame()[0].data)

        payloads = None
        if self._hasher is None:
            framed, payloads = frame()
            self._hash.update(framed.data)
        elif self._bare:
            framed, payloads = frame()
            self._hashing[turn] = self._hasher.submit(self._hash.update, framed.data)
        else:
            self._hashing[turn] = self._hasher.submit(frame_and_hash)
        return _Window(lo, hi, parts, order, sources, len(sources), payloads, ts, part_of, rowpos)

    def _windows(self, encode: bool = True, bare: bool = True) -> Generator[_Window, None, None]:
        """Every read window in order, the next one prepared while the current is consumed.

        Args:
            encode: build each event's canonical JSON and the sequence hash (False: rows only,
                the manifest then has no hash).
            bare: give each window its events' payloads (`_Window.payloads`); False: the hash
                only.
        """
        self._reset()
        self._encoding = encode
        self._bare = encode and bare
        for source in self._sources:
            source._cache = None
        if encode:
            # The encoding kernels load while the reads are planned. Not a daemon: the
            # interpreter waits for it at exit rather than stopping it inside the JIT's C++.
            threading.Thread(target=warm_up, name="replay-warm-up").start()
        windows, buckets = self._plan()
        pinned = [s for s in self._sources if s.snapshot_id is not None]
        con = duck_connect(extensions=())
        for source in pinned:
            if source.files is not None and source.arrow_schema is None:
                source.arrow_schema = source.simple_arrow_schema(con)
        if any(s.files is None or s.arrow_schema is None for s in pinned):
            # Some table is read (or typed) through `iceberg_scan`. Otherwise DuckDB only orders
            # equal event times, which needs no Iceberg extension (~0.3 CPU-s to load).
            con.close()
            con = Lake(self.catalog).connect()
        for source in pinned:
            if source.files is not None and source.arrow_schema is None:
                # DuckDB's types for this table's rows (one metadata read per replay).
                sql = source.read_sql(self.start_ns, self.start_ns + 1) + " LIMIT 0"
                with catalog_errors(f"replaying {source.identifier}"):
                    source.arrow_schema = con.execute(sql).arrow().schema
        # Windows prepared ahead of the consumer. Without encoding, two: the next window's
        # reads fill the cores while the one before it waits for its slowest table and merges
        # (a window's rows are all that is held). Encoding keeps one, since a window's encoding
        # and frame buffers are reused two windows later.
        depth = 1 if encode else _AHEAD_UNENCODED
        # One set of DuckDB cursors (one per table) per window being prepared, checked out for
        # the whole preparation: a cursor holds one result, so two windows must never share one
        # (with two threads, the windows running at once are not always neighbours).
        cursors = [[con.cursor() for _ in self._sources] for _ in range(depth)]
        free: queue.SimpleQueue[list[duckdb.DuckDBPyConnection]] = queue.SimpleQueue()
        for per_window in cursors:
            free.put(per_window)
        pool = ThreadPoolExecutor(depth, thread_name_prefix="replay") if self.prefetch else None
        parts_pool = (
            ThreadPoolExecutor(min(3, len(self._sources)), thread_name_prefix="replay-table")
            if self.prefetch and len(self._sources) > 1
            else None
        )
        if self.prefetch and encode:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="replay-hash")
        pending: deque[Future[_Window]] = deque()
        try:

            def prepare(i: int) -> _Window:
                lo, hi = windows[i]
                mine = free.get()  # one of `depth` sets; at most `depth` windows run at once
                try:
                    return self._prepare(mine, buckets, lo, hi, parts_pool)
                finally:
                    free.put(mine)

            for i in range(len(windows)):
                if pool is None:
                    window = prepare(i)
                else:
                    ahead = range(i + len(pending), min(len(windows), i + depth + 1))
                    pending.extend(pool.submit(prepare, k) for k in ahead)
                    window = pending.popleft().result()
                if window.count:
                    yield window
                    self._count += window.count
                    for part in window.parts:
                        self._per_table[self.tables[part.index]] += len(part.ts)
            for hashing in self._hashing:
                if hashing is not None:
                    hashing.result()
            self._complete = True
        finally:
            for future in pending:
                future.cancel()
            for executor in (pool, parts_pool, self._hasher):
                if executor is not None:
                    executor.shutdown(wait=True)
            self._hasher = None
            for source in self._sources:
                source._cache = None
                source.scratches = (Scratch(), Scratch())  # release the encoding buffers
            self._frame_scratch = (Scratch(), Scratch())
            for cursor in (c for per_window in cursors for c in per_window):
                cursor.close()
            con.close()

    # ---- Arrow output --------------------------------------------------------------------------

    def schema(self) -> pa.Schema:
        """The schema of `batches()`: `table`, then the union of the tables' columns."""
        if self._schema is None:
            plain = duck_connect(extensions=())
            try:
                for source in self._sources:
                    if source.snapshot_id is not None and source.arrow_schema is None:
                        source.arrow_schema = source.simple_arrow_schema(plain)
            finally:
                plain.close()
            fields: dict[str, pa.DataType] = {}
            if all(s.arrow_schema is not None for s in self._sources):
                for source in self._sources:
                    assert source.arrow_schema is not None
                    for field in source.arrow_schema:
                        have = fields.get(field.name)
                        fields[field.name] = (
                            field.type
                            if have is None or have == field.type
                            else _unify(have, field.type)
                        )
                self._schema = pa.schema(
                    [pa.field(TABLE_COLUMN, pa.dictionary(pa.int8(), pa.string()), nullable=False)]
                    + [pa.field(n, t) for n, t in fields.items()]
                )
                return self._schema
            con = Lake(self.catalog).connect()
            try:
                for source in self._sources:
                    sql = source.read_sql(self.start_ns, self.start_ns + 1)
                    if source.snapshot_id is None:
                        from iceberg_lake.timetravel.query import scan_sql

                        cols = ", ".join(quote_ident(c) for c in source.columns)
                        sql = f"SELECT {cols} FROM ({scan_sql(source.table, None)})"
                    schema = con.execute(sql + " LIMIT 0").arrow().schema
                    if source.snapshot_id is not None:
                        source.arrow_schema = schema  # reused by the direct file reads
                    for field in schema:
                        have = fields.get(field.name)
                        if have is None:
                            fields[field.name] = field.type
                        elif have != field.type:
                            fields[field.name] = _unify(have, field.type)
            finally:
                con.close()
            self._schema = pa.schema(
                [pa.field(TABLE_COLUMN, pa.dictionary(pa.int8(), pa.string()), nullable=False)]
                + [pa.field(n, t) for n, t in fields.items()]
            )
        return self._schema

    def batches(self, verify: bool = True) -> Iterator[pa.RecordBatch]:
        """Every event of the window as Arrow record batches in replay order (no pacing).

        Same order, count and sequence hash as `events()`; the manifest is updated as windows are
        consumed. See the module docstring for the batch layout.

        Args:
            verify: compute the canonical encoding and the sequence hash (about half the CPU of
                an Arrow replay). False skips both: same batches, the manifest's
                `sequence_hash` is None (use it when the pins alone identify the run).

        Yields:
            Record batches of at most `batch_rows` rows with `schema()`.
        """
        schema = self.schema()
        names = pa.array(self.tables, pa.string())
        data_schema = pa.schema([f for f in schema if f.name != TABLE_COLUMN])
        # Gathered on this thread, a pipeline stage beside the windows being prepared: gathering
        # where they are prepared measured 25-30% slower, gathering the columns on two threads
        # no faster (the cores are busy with the next windows either way).
        for window in self._windows(encode=verify, bare=False):
            assert window.part_of is not None and window.rowpos is not None
            # Positions into the concatenated parts, in replay order (None: every row in order).
            lengths = np.array([p.rows.num_rows for p in window.parts], dtype=np.int64)
            base = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            positions: np.ndarray | None = base[window.part_of] + window.rowpos
            assert positions is not None
            if len(positions) == int(lengths.sum()) and bool(np.all(np.diff(positions) > 0)):
                positions = None
            columns = [_gather(window.parts, field, positions) for field in data_schema]
            table = pa.DictionaryArray.from_arrays(pa.array(window.sources, pa.int8()), names)
            merged = pa.Table.from_arrays([table, *columns], schema=schema)
            yield from merged.to_batches(max_chunksize=self.batch_rows)

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
        for window in self._windows(encode=verify, bare=False):
            assert window.part_of is not None
            first = self._count  # events before this window (updated after it is consumed)
            for k, part in enumerate(window.parts):
                n = len(part.ts)
                if len(window.parts) == 1:
                    seq = np.arange(first, first + n, dtype=np.int64)
                else:
                    seq = np.flatnonzero(window.part_of == k).astype(np.int64) + first
                perm = part.perm
                in_order = len(perm) == part.rows.num_rows and bool(np.all(np.diff(perm) > 0))
                rows = part.rows if in_order else part.rows.take(pa.array(perm))
                rows = rows.add_column(0, REPLAY_SEQ_COLUMN, pa.array(seq, pa.int64()))
                identifier = self._sources[part.index].identifier
                for batch in rows.to_batches(max_chunksize=self.batch_rows):
                    yield identifier, batch

    # ---- the event stream ---------------------------------------------------------------------

    def _window_events(self, window: _Window) -> list[ReplayEvent]:
        assert window.payloads is not None and window.ts is not None
        payloads, ts = window.payloads.to_pylist(), window.ts.tolist()
        if window.order is None:
            src, n = self._sources[window.parts[0].index], len(ts)
            return list(map(ReplayEvent, [src.identifier] * n, [src.subject] * n, payloads, ts))
        idents = np.array([s.identifier for s in self._sources], dtype=object)
        subjects = np.array([s.subject for s in self._sources], dtype=object)
        tables = idents[window.sources].tolist()
        return list(map(ReplayEvent, tables, subjects[window.sources].tolist(), payloads, ts))

    def events(self) -> Generator[ReplayEvent, None, None]:
        """Every event of the window in replay order (no pacing), updating the manifest."""
        for window in self._windows():
            yield from self._window_events(window)

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
        pacer = _Pacer(self.speed)
        for event in self.all_events():
            delay = pacer.delay(event.ts_event_ns)
            if delay > 0:
                time.sleep(delay)
            yield event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events as dicts (`table` plus the row's columns), paced by `speed`."""
        if self.speed or self._live is not None:
            # One at a time: a paced or live event is due when it is due, not when a chunk fills.
            for event in self.paced_events():
                yield event.as_dict()
            return
        for window in self._windows():
            yield from self._window_dicts(window)

    def _window_dicts(self, window: _Window) -> Iterator[dict[str, Any]]:
        """`event.as_dict()` of every event of `window`, without an event object per row.

        Each payload (a JSON object) gets `"table":…,` spliced in as its first key and a `,`
        after it, in Arrow; a chunk of rows is then one slice of the joined buffer, decoded as one
        JSON array. The same dicts: a row's own `table` column, if any, still wins (later key).
        """
        payloads = window.payloads
        assert payloads is not None
        if pc.any(pc.equal(pc.binary_length(payloads), 2)).as_py():  # a `{}` row: no comma
            for event in self._window_events(window):
                yield event.as_dict()
            return
        prefixes = pa.array(
            [b'{"table":' + json.dumps(s.identifier).encode() + b"," for s in self._sources],
            pa.large_binary(),
        )
        comma, empty = pa.scalar(b",", pa.large_binary()), pa.scalar(b"", pa.large_binary())
        # A block at a time, so the spliced copy stays small beside the window itself.
        for lo in range(0, len(payloads), _DICT_BLOCK):
            block = payloads.slice(lo, _DICT_BLOCK).cast(pa.large_binary())
            if window.order is None:
                prefix = pa.repeat(prefixes[window.parts[0].index], len(block))
            else:
                prefix = prefixes.take(pa.array(window.sources[lo : lo + _DICT_BLOCK]))
            # An explicit stop: pyarrow 26's `binary_slice` fails without one, and with a huge
            # one ("Negative buffer resize"); no payload is 2 GiB.
            rows = pc.binary_join_element_wise(
                prefix, pc.binary_slice(block, 1, 2**31 - 1), comma, empty
            )
            offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset :]
            data = memoryview(rows.buffers()[2])
            for i in range(0, len(rows), _DICT_CHUNK):
                j = min(len(rows), i + _DICT_CHUNK)
                # `[` + rows i..j-1 (each ends with `,`) without the last comma + `]`
                yield from _dicts_decoder.decode(b"[" + data[offsets[i] : offsets[j] - 1] + b"]")

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Async iteration: windows are prepared on a worker thread, paced by `speed`."""
        async for event in self.aevents():
            yield event.as_dict()

    async def _awindows(self) -> AsyncIterator[_Window]:
        windows = self._windows()
        done = object()
        try:
            while True:
                window = await asyncio.to_thread(next, windows, done)
                if window is done:
                    return
                assert isinstance(window, _Window)
                yield window
        finally:
            await asyncio.to_thread(windows.close)

    async def aevents(self) -> AsyncIterator[ReplayEvent]:
        """`events()` for asyncio code: DuckDB reads run off the event loop, pacing awaits."""
        pacer = _Pacer(self.speed)
        if self._live is not None:
            # Live: history and tail from one iterator on a worker thread (the tail waits for
            # arrivals), one event at a time so nothing that arrived waits for a chunk to fill.
            source, done = self.all_events(), object()
            try:
                while (event := await asyncio.to_thread(next, source, done)) is not done:
                    assert isinstance(event, ReplayEvent)
                    if self.speed and (delay := pacer.delay(event.ts_event_ns)) > 0:
                        await asyncio.sleep(delay)
                    yield event
            finally:
                close = getattr(source, "close", None)  # a generator: stop it
                if close is not None:
                    await asyncio.to_thread(close)
            return
        async for window in self._awindows():
            for event in self._window_events(window):
                if self.speed:
                    delay = pacer.delay(event.ts_event_ns)
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield event

    # ---- sinks ----------------------------------------------------------------------------------

    async def run(self, sink: EventSink, progress: Progress | None = None) -> dict[str, Any]:
        """Send every event to `sink` (paced), close it, and return the manifest."""
        sent = 0
        try:
            async for event in self.aevents():
                await sink.send(event)
                sent += 1
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
        flat = [s.identifier for s in self._sources if s.definition.namespace == GOLD]
        if flat and not prefix:
            raise TimeTravelError(
                f"{', '.join(flat)} rows are flattened (one per level); the Gold writer would "
                "dead-letter them on their original subject: replay them under a prefix"
            )
        from iceberg_lake.engine import nats as bus

        if self._live is not None:
            # The tail arrives event by event: the generic sink path (one publish each).
            own = nc is None
            if nc is None:
                nc = await bus.connect(self.catalog.settings, name="iceberg_lake-replay")
            return await self.run(NatsSink(nc, prefix=prefix, close_client=own), progress)
        headers = pa.array(
            [bus.pub_frame_header(replay_subject(s.subject, prefix)) for s in self._sources],
            pa.binary(),
        )
        own = nc is None
        if nc is None:
            nc = await bus.connect(self.catalog.settings, name="iceberg_lake-replay")
        pacer = _Pacer(self.speed)
        sent = 0
        try:
            async for window in self._awindows():
                payloads, ts = window.payloads, window.ts
                assert payloads is not None and ts is not None
                sizes = pc.binary_length(payloads)
                if pc.max(sizes).as_py() > nc.max_payload:
                    raise TimeTravelError(
                        f"an event is larger than NATS max_payload ({nc.max_payload})"
                    )
                # Every event's whole PUB frame, built at once: header, size, CRLF, payload, CRLF.
                frames = pc.binary_join_element_wise(
                    headers.take(pa.array(window.sources)),
                    pc.cast(sizes, pa.string()).cast(pa.binary()),
                    b"\r\n",
                    payloads,
                    b"\r\n",
                    b"",
                )
                offsets = _offsets(frames)
                data = memoryview(frames.buffers()[2])
                size_offsets = np.concatenate([[0], np.cumsum(sizes.to_numpy())])
                i, n = 0, len(frames)
                while i < n:
                    hi = min(n, i + batch)
                    if self.speed:
                        hi = await _paced_cut(pacer, ts, i, hi)
                    chunk = bytes(data[int(offsets[i]) : int(offsets[hi])])
                    await bus.publish_frames(
                        nc, chunk, hi - i, int(size_offsets[hi] - size_offsets[i])
                    )
                    sent += hi - i
                    if progress is not None:
                        progress(sent, int(ts[hi - 1]))
                    i = hi
        finally:
            if own:
                await nc.drain()
        if progress is not None:
            progress(sent, self.end_ns)
        return self.manifest()

    # ---- manifest -------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """What this replay read and produced; `complete` is False until a full iteration.

        The count and hash cover whole read windows (a partial iteration's are not exact).
        """
        extra = self._live.manifest_extra() if self._live is not None else {}
        return extra | {
            "format": MANIFEST_FORMAT,
            "tables": list(self.tables),
            "snapshots": dict(self.pins),
            "pin_tag": self.pin_tag,
            "as_of": _describe_as_of(self.as_of),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
            "event_count": self._count,
            "events_per_table": dict(self._per_table),
            "sequence_hash": "sha256:" + self._hash.hexdigest() if self._encoding else None,
            "tie_break": TIE_BREAKS[self.tie_break],
            "speed": self.speed,
            "complete": self._complete,
            "created_at": datetime.now(tz=UTC).isoformat(),
        }

    def write_manifest(self, path: str | Path) -> dict[str, Any]:
        """Write `manifest()` as JSON to `path` and return it."""
        manifest = self.manifest()
        Path(path).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


async def _paced_cut(pacer: _Pacer, ts: np.ndarray, lo: int, hi: int) -> int:
    """Wait until event `lo` is due; return the end of the run of events due by then (> lo)."""
    delay = pacer.delay(int(ts[lo]))
    if delay > 0:
        await asyncio.sleep(delay)
    horizon = pacer.event_time_now() + 1_000_000  # everything due within the next millisecond
    return lo + max(1, int(np.searchsorted(ts[lo:hi], horizon, side="right")))


def _gather(parts: Sequence[_Part], field: pa.Field, positions: np.ndarray | None) -> pa.Array:
    """One output column of a merged window: the parts' `field` (nulls where a part lacks it),
    concatenated and taken at `positions` (None: every row as concatenated).

    Numbers with nulls (most columns of a union of tables) are gathered with NumPy, values and
    validity apart (5-7 ns a value, Arrow's `take` 9-10 ns); everything else by `take` (2-3 ns
    for numbers without nulls).
    """
    pieces: list[pa.Array] = []
    for part in parts:
        if field.name in part.rows.column_names:
            col = one_array(part.rows.column(field.name))
            pieces.append(col if col.type == field.type else pc.cast(col, field.type))
        else:
            pieces.append(pa.nulls(part.rows.num_rows, field.type))
    kind = field.type
    nulls = sum(p.null_count for p in pieces)
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if positions is None or not nulls or not numeric:
        whole = pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
        return whole if positions is None else whole.take(pa.array(positions))
    dtype = kind.to_pandas_dtype()
    values = np.concatenate([_values(p, dtype) for p in pieces])[positions]
    valid = np.concatenate([p.is_valid().to_numpy(zero_copy_only=False) for p in pieces])
    valid = valid[positions]
    return pa.Array.from_buffers(
        kind,
        len(values),
        [pa.py_buffer(np.packbits(valid, bitorder="little")), pa.py_buffer(values)],
        null_count=len(valid) - int(np.count_nonzero(valid)),
    )


def _values(array: pa.Array, dtype: np.dtype) -> np.ndarray:
    """A numeric array's values as NumPy, nulls as 0 (their validity is kept apart)."""
    if not array.null_count:
        return array.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if array.null_count == len(array):
        return np.zeros(len(array), dtype=dtype)
    return pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _offsets(array: pa.Array) -> np.ndarray:
    """The int32 value offsets of a binary array (n + 1 of them), as numpy (zero-copy)."""
    return np.frombuffer(
        array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4
    )


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """A type holding both `a` and `b` values: the wider number, else string."""
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (
        pa.types.is_integer(b) or pa.types.is_floating(b)
    ):
        return pa.float64()
    return pa.string()


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

    def event_time_now(self) -> int:
        """The event time (ns) that is due now (after the first `delay` call)."""
        if not self.speed or self.t0_event is None:
            return 2**63 - 1
        return self.t0_event + int((time.monotonic() - self.t0_wall) * self.speed * 1e9)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def _describe_as_of(as_of: AsOfSpec) -> Any:
    if isinstance(as_of, Mapping):
        return {k: _describe_as_of(v) for k, v in as_of.items()}
    if isinstance(as_of, datetime):
        return as_of.isoformat()
    return as_of
