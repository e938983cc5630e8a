"""One table of a replay: its pinned snapshot, the files planned for the window, and how a read
window of its rows is read and put in replay order.

The pinned files are planned once per replay (`engine.iceberg.plan_data_files`, in
`PinnedSource.buckets`); a snapshot's plan for a window is kept in the process (the last 64), so
replaying the same pins again (a backtest sweep) reads no manifests. For each window, the rows
are read straight from the Parquet files whose `ts_event_ns` bounds overlap it (columns matched
by field id, cast to the types DuckDB's `iceberg_scan` gives; a table with delete files is read
through `iceberg_scan`, which applies them), then put in replay order without a full sort: a
stable argsort of `ts_event_ns` (linear on the sorted runs that Silver files and time-ordered
appends already are), and only rows that share a `ts_event_ns` with another row of the same
table are ordered by the full tie-break key (by DuckDB, with the same `ORDER BY` as before, so
equal keys order exactly as they always did).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.manifest import FileFormat
from pyiceberg.table import Table

from iceberg_lake.catalog import catalog_errors
from iceberg_lake.engine.duck import quote_ident, quote_str, timestamptz_literal
from iceberg_lake.engine.iceberg import column_bounds, plan_data_files
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.tables import TableDefinition
from iceberg_lake.timetravel.canonical import Scratch
from iceberg_lake.timetravel.order import TIE_BREAK_RULE, order_by_sql, row_order
from iceberg_lake.timetravel.query import duckdb_path
from iceberg_lake.timetravel.readers import window_filter

if TYPE_CHECKING:
    from iceberg_lake.timetravel.replay.window import Part

__all__ = ["NS_PER_DAY", "NS_PER_HOUR", "DataFile", "PinnedSource"]

NS_PER_HOUR = 3_600 * 1_000_000_000
NS_PER_DAY = 24 * NS_PER_HOUR


@dataclass(frozen=True)
class DataFile:
    """One planned data file and the `ts_event_ns` range (clipped to the replay) it holds."""

    path: str
    lo: int
    hi: int


_FIELD_ID = b"PARQUET:field_id"

#: Plans of pinned snapshots (`PinnedSource.buckets`), newest last: (table uuid, snapshot id,
#: schema id, partition width, start, end) → (rows per partition, data files or None when read
#: through DuckDB).
_PLANS: OrderedDict[tuple[str, int, int, int, int, int], tuple[dict[int, float], Any]] = (
    OrderedDict()
)
_PLANS_KEPT = 64
_PLANS_LOCK = threading.Lock()


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


class PinnedSource:
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
        self.bucket_ns = NS_PER_DAY if transform == "day" else NS_PER_HOUR
        self.prefix = self.identifier.encode() + b"\x1f"
        #: A day-partitioned table's day read once and sliced by window (`WindowPipeline`):
        #: (day start, its rows in replay order).
        self.day_cache: tuple[int, Part] | None = None
        #: Guards `day_cache` (windows of one day may be prepared concurrently).
        self.cache_lock = threading.Lock()
        #: Field id of every replayed column in the pinned schema (files are matched by id).
        self.field_ids = {f.name: f.field_id for f in schema.fields if f.name in self.columns}
        self._pinned_schema = schema
        #: The pinned data files of the replay window (`buckets` plans them once per replay);
        #: None: read through DuckDB (delete files, or not planned yet).
        self.files: list[DataFile] | None = None
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
        files: list[DataFile] = []
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
                    files.append(DataFile(data_file.file_path, lo, hi))
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
