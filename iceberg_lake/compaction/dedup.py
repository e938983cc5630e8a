"""The DuckDB query that deduplicates and orders one Bronze partition.

Event identity (DESIGN.md): two rows are the same event when all the table's dedup columns are
equal, NULL equal to NULL, with floats compared by value (`-0.0` = `0.0`, every NaN = NaN). The
spec phrases this as `md5` over a text form of those columns; a hash `GROUP BY` on the columns
themselves gives the same groups and is about twice as fast as `ROW_NUMBER() OVER (PARTITION BY
md5(...))`, so that is what runs.

Survivor rule: within a group the row with the smallest tuple
`(ts_recv_ns, <every non-key column in declaration order>)` wins, NULLs sorting after values.
So the earliest receive wins, and a tie on `ts_recv_ns` is broken by the row's content, never by
file or row order. Tables without `ts_recv_ns` (greeks snapshots) use the same rule without it:
the smallest non-key tuple wins. Output order: `ts_event_ns`, `ts_recv_ns`, then the remaining
dedup columns, a total order because the dedup columns are unique after deduplication.
"""

from __future__ import annotations

from collections.abc import Sequence

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

from iceberg_lake.exceptions import CompactionError

RECEIVE_TIME = "ts_recv_ns"
EVENT_TIME = "ts_event_ns"
_STRUCT = "_lake_survivor"


def quote_ident(name: str) -> str:
    """Quote a column name for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def quote_str(value: str) -> str:
    """Quote a string literal for DuckDB."""
    return "'" + value.replace("'", "''") + "'"


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
    available: set[str],
    partitioned_by: tuple[str | None, str] | None = None,
) -> str:
    """Build the dedup-and-sort query over the rows of one or more partitions.

    Args:
        source_sql: a DuckDB table expression yielding the Bronze rows (e.g. `read_parquet(...)`).
        schema: the Silver table's current schema; the output has exactly its columns, in order.
        dedup_columns: the columns that identify an event.
        available: the columns the source actually has; others are filled with typed NULLs.
        partitioned_by: `(key column or None, "hour" | "day")` when the source spans several
            partitions: the output then gets a last column `_lake_bucket` (hours or days since
            the epoch of `ts_event`) and is ordered by key and bucket first, so each partition's
            rows are contiguous and in Silver order.

    Returns:
        The SQL text.

    Raises:
        CompactionError: a dedup column is missing from the Silver schema, or no columns.
    """
    columns = [(f.name, f.field_type) for f in schema.fields]
    names = [n for n, _ in columns]
    missing = [c for c in dedup_columns if c not in names]
    if missing or not dedup_columns:
        raise CompactionError(f"dedup columns {missing or '[]'} are not in the Silver schema")

    def source_expr(name: str, t: IcebergType) -> str:
        if name not in available:
            return f"CAST(NULL AS {duck_type(t)})"
        col = quote_ident(name)
        if name in dedup_columns and isinstance(t, (FloatType, DoubleType)):
            # One canonical value per float: -0.0 -> 0.0 and every NaN payload -> NaN, so the
            # group key (which is also the stored value) never depends on which row came first.
            kind = duck_type(t)
            return (
                f"CASE WHEN isnan({col}) THEN CAST('NaN' AS {kind}) "
                f"WHEN {col} = 0 THEN CAST(0 AS {kind}) ELSE {col} END"
            )
        return col

    select_src = ", ".join(f"{source_expr(n, t)} AS {quote_ident(n)}" for n, t in columns)
    keys = [c for c in names if c in dedup_columns]  # declaration order, stable
    others = [n for n in names if n not in dedup_columns]
    tie = ([RECEIVE_TIME] if RECEIVE_TIME in others else []) + [
        n for n in others if n != RECEIVE_TIME
    ]
    key_sql = ", ".join(quote_ident(k) for k in keys)
    if tie:
        struct = ", ".join(f"{quote_ident(n)}: {quote_ident(n)}" for n in tie)
        agg = f", min({{{struct}}}) AS {_STRUCT}"
    else:
        agg = ""
    outputs = [
        quote_ident(n) if n in dedup_columns else f"{_STRUCT}.{quote_ident(n)} AS {quote_ident(n)}"
        for n in names
    ]
    order = [EVENT_TIME] if EVENT_TIME in names else []
    if RECEIVE_TIME in names:
        order.append(RECEIVE_TIME)
    order += [k for k in keys if k not in order]
    order_sql = ", ".join(f"{quote_ident(c)} ASC NULLS LAST" for c in order)
    body = (
        f"WITH src AS (SELECT {select_src} FROM {source_sql}), "
        f"grouped AS (SELECT {key_sql}{agg} FROM src GROUP BY {key_sql}) "
        f"SELECT {', '.join(outputs)} FROM grouped"
    )
    if partitioned_by is None:
        return f"{body} ORDER BY {order_sql}"
    key, unit = partitioned_by
    bucket = f"epoch_us(ts_event) // {_BUCKET_MICROS[unit]}"
    first = ([quote_ident(key)] if key else []) + [quote_ident(BUCKET_COLUMN)]
    return (
        f"SELECT *, {bucket} AS {quote_ident(BUCKET_COLUMN)} FROM ({body}) "
        f"ORDER BY {', '.join(first)}, {order_sql}"
    )
