"""Deduplicate and order Bronze rows: one DuckDB sort, then drop adjacent duplicates.

Event identity (DESIGN.md): two rows are the same event when all the table's dedup columns are
equal, NULL equal to NULL, with floats compared by value (`-0.0` = `0.0`, every NaN = NaN). The
spec phrases this as `md5` over a text form of those columns; comparing the columns themselves
gives the same groups without hashing text.

Survivor rule: within a group the row with the smallest tuple
`(ts_recv_ns, <every non-dedup column in declaration order>)` wins, NULLs sorting after values.
So the earliest receive wins, and a tie on `ts_recv_ns` is broken by the row's content, never by
file or row order. Tables without `ts_recv_ns` (greeks snapshots) use the same rule without it:
the smallest non-dedup tuple wins.

Output order: `ts_event_ns`, then the other dedup columns in declaration order (NULLs last): a
total order, because the dedup columns are unique after deduplication.

Values are Bronze's but one: `-0.0` in a float column that is not a dedup column comes out as
`0.0`, since DuckDB's sort (by every column, below) normalises its keys; the Spark engine does
the same explicitly, so both store identical bits.

How: DuckDB sorts by `(partition key, ts_event_ns, other dedup columns, ts_recv_ns, non-dedup
columns)`, which puts every duplicate group together with its survivor first and is already the
output order; `AdjacentDedup` then keeps the first row of each group while the batches stream
out. Measured here on 2M trades this is ~1.8x faster than a hash `GROUP BY` with `min(struct)`
(and `ROW_NUMBER() OVER (PARTITION BY md5(...))` is slower still).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)

from iceberg_lake.engine.duck import quote_ident
from iceberg_lake.exceptions import CompactionError
from iceberg_lake.schema.names import NameHistory

log = logging.getLogger(__name__)

RECEIVE_TIME = "ts_recv_ns"
EVENT_TIME = "ts_event_ns"
#: (Bronze table, column) already warned about as dropped in Bronze (once per process).
_WARNED_DROPPED: set[tuple[str, str]] = set()


def duck_type(t: IcebergType) -> str:
    """The DuckDB type of an Iceberg primitive type."""
    simple: dict[type, str] = {
        BooleanType: "BOOLEAN",
        IntegerType: "INTEGER",
        LongType: "BIGINT",
        FloatType: "FLOAT",
        DoubleType: "DOUBLE",
        StringType: "VARCHAR",
        BinaryType: "BLOB",
        DateType: "DATE",
        TimestamptzType: "TIMESTAMPTZ",
        TimestampType: "TIMESTAMP",
    }
    if isinstance(t, DecimalType):
        return f"DECIMAL({t.precision}, {t.scale})"
    for cls, name in simple.items():
        if isinstance(t, cls):
            return name
    raise CompactionError(f"column type {t} is not supported by Silver compaction")


#: Extra output column (last) holding the time bucket when several partitions are compacted by
#: one query; the rows then come partition by partition.
BUCKET_COLUMN = "_lake_bucket"
_BUCKET_MICROS = {"hour": 3_600_000_000, "day": 86_400_000_000}


def dedup_query(
    source_sql: str,
    schema: Schema,
    dedup_columns: Sequence[str],
    available: Mapping[str, str] | set[str],
    partitioned_by: tuple[str | None, str] | None = None,
) -> str:
    """Build the query that sorts Bronze rows so that `AdjacentDedup` can deduplicate them.

    Args:
        source_sql: a DuckDB table expression yielding the Bronze rows (e.g. `read_parquet(...)`).
        schema: the Silver table's current schema; the output has exactly its columns, in order
            (plus `_lake_bucket` with `partitioned_by`).
        dedup_columns: the columns that identify an event.
        available: Silver column → the source column that feeds it (`source_columns`: a
            renamed Bronze column feeds the Silver column it was named like), or a set of
            columns the source has under the Silver names. Silver columns without a source are
            filled with typed NULLs; a dedup key without one is refused.
        partitioned_by: `(key column or None, "hour" | "day")` when the source spans several
            partitions: the output then gets a last column `_lake_bucket` (hours or days since
            the epoch of `ts_event`) and is ordered by the key and the bucket first, so each
            partition's rows are contiguous.

    Returns:
        The SQL text.

    Raises:
        CompactionError: a dedup column is missing from the Silver schema or from the source,
            or no columns.
    """
    columns = [(f.name, f.field_type) for f in schema.fields]
    names = [n for n, _ in columns]
    missing = [c for c in dedup_columns if c not in names]
    if missing or not dedup_columns:
        raise CompactionError(f"dedup columns {missing or '[]'} are not in the Silver schema")
    sources = available if isinstance(available, Mapping) else {n: n for n in available}
    unfed = [c for c in dedup_columns if c not in sources]
    if unfed:
        # Never NULL a key: every event would collapse into one per remaining key.
        raise CompactionError(f"dedup column '{unfed[0]}' has no source column in Bronze")

    def source_expr(name: str, t: IcebergType) -> str:
        if name not in sources:
            return f"CAST(NULL AS {duck_type(t)})"
        if name in dedup_columns:
            return key_expression(sources[name], t)
        return quote_ident(sources[name])

    select = [f"{source_expr(n, t)} AS {quote_ident(n)}" for n, t in columns]
    order = sort_columns(names, dedup_columns)
    if partitioned_by is not None:
        key, unit = partitioned_by
        select.append(
            f"epoch_us({quote_ident('ts_event')}) // {_BUCKET_MICROS[unit]} "
            f"AS {quote_ident(BUCKET_COLUMN)}"
        )
        # Key and bucket first: a row whose `ts_event` disagrees with its `ts_event_ns` belongs
        # to another partition than its event time says, and sorted by event time alone it
        # split a partition's run of duplicates (review18).
        first = [key, BUCKET_COLUMN] if key else [BUCKET_COLUMN]
        order = [*first, *[c for c in order if c not in first]]
    order_sql = ", ".join(f"{quote_ident(c)} ASC NULLS LAST" for c in order)
    return f"SELECT {', '.join(select)} FROM {source_sql} ORDER BY {order_sql}"


def source_columns(
    silver: Schema,
    silver_history: NameHistory,
    source: Schema,
    bronze_history: NameHistory,
    dedup_columns: Sequence[str],
    bronze_name: str,
) -> dict[str, str]:
    """Which source column feeds each Silver column, matched by meaning, not just by name.

    Bronze and Silver have their own field ids, so the link between them is a name; a rename on
    one side (metadata only in Iceberg) must not cut it. A Silver column is fed by the source
    column of the same name, else by the source column whose field once had that name (Bronze
    renamed `seq` to `sequence`), else likewise for each name the Silver column had before
    (Silver renamed, Bronze not).

    Args:
        silver: the Silver schema written.
        silver_history: the Silver table's schemas.
        source: the schema the source relation is read with (its column names).
        bronze_history: the Bronze table's schemas.
        dedup_columns: Silver's dedup columns (current names).
        bronze_name: the Bronze table (for the message).

    Returns:
        Silver column → source column, for every Silver column that has one.

    Raises:
        CompactionError: a dedup key or a required Silver column has no source column (one
            line naming it and what to do): filling it with NULL would merge distinct events.
    """
    out: dict[str, str] = {}
    for f in silver.fields:
        found = bronze_history.resolve(f.name, source)
        if found is None:
            for old in silver_history.names(f.field_id)[1:]:
                found = bronze_history.resolve(old, source)
                if found is not None:
                    break
        if found is not None and (f.name in dedup_columns or f.required):
            _refuse_reused_name(f.name, found, source, bronze_history, bronze_name)
        if found is not None:
            out[f.name] = found
        elif (
            bronze_history.field_id(f.name) is not None
            and f.name not in dedup_columns
            and not f.required
        ):
            # Bronze had the column and dropped it: the partitions this run replaces get NULL
            # where Silver held values (evolve14: 1,006 values erased without a word).
            if (bronze_name, f.name) not in _WARNED_DROPPED:
                _WARNED_DROPPED.add((bronze_name, f.name))
                log.warning(
                    "%s no longer has column '%s' (dropped): Silver's '%s' is written as NULL "
                    "in the partitions compacted now; drop it from Silver too, or add it back "
                    "to %s",
                    bronze_name,
                    f.name,
                    f.name,
                    bronze_name,
                )
        if found is None and (f.name in dedup_columns or f.required):
            what = "a dedup key" if f.name in dedup_columns else "a required column"
            raise CompactionError(
                f"{bronze_name} has no column for Silver's '{f.name}' ({what}): filling it "
                "with NULL would merge or lose events; make the two tables agree (`lake migrate "
                "check` shows the difference) and compact again"
            )
    return out


def _refuse_reused_name(
    silver_name: str, found: str, source: Schema, history: NameHistory, bronze_name: str
) -> None:
    """Refuse a key fed by a newer Bronze column than another that carried its name first.

    `lake table evolve` refuses adding a column under a renamed column's old name; another
    engine does not (`ALTER TABLE … ADD COLUMN seq` after `seq` was renamed `vendor_seq`).
    Silver's `seq` then took the new, mostly NULL column by name and merged distinct trades
    without a word (silver18). Field ids grow with every added column: of the Bronze columns
    that ever carried the key's name, the oldest is the one Silver was fed from.
    """
    by_id = {f.field_id: f.name for f in source.fields}
    carried = sorted(i for i in history.field_ids(silver_name) if i in by_id)
    if len(carried) < 2 or by_id[carried[0]] == found:
        return
    raise CompactionError(
        f"{bronze_name}'s column '{found}' now carries the name of Silver's key "
        f"'{silver_name}', which its column '{by_id[carried[0]]}' carried first (a column "
        "added, or names swapped, after a rename?): Silver's key would change its source "
        f"column; rename the columns so that '{silver_name}' names '{by_id[carried[0]]}' "
        "again (`lake table evolve --rename`), then compact again"
    )


def key_expression(name: str, t: IcebergType) -> str:
    """DuckDB SQL for dedup column `name` as event identity compares it.

    Floats get one canonical value: -0.0 -> 0.0 and every NaN payload -> NaN, so equal events
    compare equal and the stored value never depends on which row survived. Other types are the
    column itself (grouping treats NULL as equal to NULL). `lake check` counts Bronze duplicates
    with the same expressions.
    """
    col = quote_ident(name)
    if isinstance(t, (FloatType, DoubleType)):
        kind = duck_type(t)
        return (
            f"CASE WHEN isnan({col}) THEN CAST('NaN' AS {kind}) "
            f"WHEN {col} = 0 THEN CAST(0 AS {kind}) ELSE {col} END"
        )
    return col


def sort_columns(names: Sequence[str], dedup_columns: Sequence[str]) -> list[str]:
    """`ts_event_ns`, other dedup columns, `ts_recv_ns`, the rest (declaration order)."""
    keys = [n for n in names if n in dedup_columns]
    first = [EVENT_TIME] if EVENT_TIME in keys else []
    rest = [n for n in names if n not in dedup_columns]
    recv = [RECEIVE_TIME] if RECEIVE_TIME in rest else []
    return first + [k for k in keys if k not in first] + recv + [n for n in rest if n not in recv]


class AdjacentDedup:
    """Keeps the first row of each run of equal dedup keys in a sorted batch stream.

    Equality is null-safe and NaN-safe. State carries over batch boundaries, so a group split
    between two batches still yields one row. Only rows whose first sort column (`ts_event_ns`)
    equals the previous row's are compared on the other columns, so the cost is one vectorised
    integer comparison per row plus a little work per candidate.

    Args:
        schema: the Silver schema (for the float columns).
        dedup_columns: the columns that identify an event.
        partition_columns: columns that must be equal too: a stream spanning several Silver
            partitions (`dedup_query`'s `partitioned_by`) deduplicates within each partition
            only, as one query per partition (and Spark) would; otherwise two partitions'
            equal rows met only when one query happened to read both (an option printed under
            two underlyings: 1,011 or 1,012 Silver rows from the same Bronze, silver18).
    """

    def __init__(
        self,
        schema: Schema,
        dedup_columns: Sequence[str],
        partition_columns: Sequence[str] = (),
    ) -> None:
        keys = [f.name for f in schema.fields if f.name in dedup_columns]
        self._first = EVENT_TIME if EVENT_TIME in keys else keys[0]
        self._rest = [k for k in keys if k != self._first]
        self._rest += [c for c in partition_columns if c not in keys]
        self._floats = {
            f.name
            for f in schema.fields
            if f.name in dedup_columns and isinstance(f.field_type, (FloatType, DoubleType))
        }
        self._last: pa.RecordBatch | None = None

    def apply(self, batch: pa.RecordBatch) -> pa.Table:
        """The rows of `batch` that are not duplicates of an earlier row.

        Returns a table of zero-copy slices of `batch` (duplicates are rare; copying the whole
        batch to drop a few rows would cost more than the comparison).
        """
        n = batch.num_rows
        if n == 0:
            return pa.Table.from_batches([batch])
        last, self._last = self._last, batch.slice(n - 1, 1)
        # Candidates: rows whose first sort column equals the previous row's.
        cand = self._equal_to_previous(self._first, batch, last, np.arange(1, n))
        if last is not None:
            head = self._equal_to_previous(self._first, batch, last, np.array([0]))
            cand = np.concatenate([head, cand])
        for name in self._rest:
            if len(cand) == 0:
                break
            cand = self._equal_to_previous(name, batch, last, cand)
        if len(cand) == 0:
            return pa.Table.from_batches([batch])
        if len(cand) > 32:  # many holes: one copy is cheaper than many slices
            keep = np.ones(n, dtype=bool)
            keep[cand] = False
            return pa.Table.from_batches([batch.filter(pa.array(keep))])
        starts = np.concatenate([[0], cand + 1])
        ends = np.concatenate([cand, [n]])
        pieces = [batch.slice(a, b - a) for a, b in zip(starts, ends, strict=True) if b > a]
        return pa.Table.from_batches(pieces, schema=batch.schema)

    def _equal_to_previous(
        self, name: str, batch: pa.RecordBatch, last: pa.RecordBatch | None, rows: np.ndarray
    ) -> np.ndarray:
        """The subset of `rows` whose `name` value equals the previous row's."""
        col = batch.column(name)
        if len(rows) == 0:
            return rows
        if len(rows) == batch.num_rows - 1 and rows[0] == 1:
            if col.null_count == 0 and pa.types.is_integer(col.type):
                values = col.to_numpy()  # zero-copy: the common case (ts_event_ns)
                return np.flatnonzero(values[1:] == values[:-1]) + 1
            current, previous = col.slice(1), col.slice(0, batch.num_rows - 1)
        else:
            current = col.take(pa.array(rows))
            if rows[0] == 0:
                assert last is not None
                previous = pa.concat_arrays(
                    [last.column(name), col.take(pa.array(rows[1:] - 1, type=pa.int64()))]
                )
            else:
                previous = col.take(pa.array(rows - 1))
        same = _same(current, previous, name in self._floats).to_numpy(zero_copy_only=False)
        return rows[same]


def _same(a: pa.Array, b: pa.Array, is_float: bool) -> pa.Array:
    """Element-wise null-safe (and NaN-safe) equality, never null."""
    eq = pc.fill_null(pc.equal(a, b), False)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    eq = pc.or_(eq, both_null)
    if is_float:
        both_nan = pc.fill_null(pc.and_(pc.is_nan(a), pc.is_nan(b)), False)
        eq = pc.or_(eq, both_nan)
    return eq
