"""The Arrow batch path of a replay: merged windows as record batches.

`merged_batches` (`ReplayEngine.batches()`) yields `pyarrow.RecordBatch`es in replay order: a
`table` column (dictionary of table identifiers) followed by the union of the tables' columns
(first-seen order; a table without a column has nulls there; a column whose type differs between
tables, e.g. `exchange` int in stocks and string in futures, is a string column). Batches never
span two read windows. `table_batches` (`ReplayEngine.table_batches()`) yields each table's rows
in its own columns after a `replay_seq` merge key instead. With `verify=False` neither builds
the canonical encoding and hash (about a third of the CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.duck import connect as duck_connect
from iceberg_lake.engine.duck import quote_ident
from iceberg_lake.timetravel.canonical import one_array
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay.source import PinnedSource
from iceberg_lake.timetravel.replay.window import Part, WindowPipeline

__all__ = ["REPLAY_SEQ_COLUMN", "TABLE_COLUMN", "merged_batches", "table_batches", "union_schema"]

TABLE_COLUMN = "table"
#: The merge key of `ReplayEngine.table_batches()`: the event's position in the replay.
REPLAY_SEQ_COLUMN = "replay_seq"


def union_schema(catalog: LakeCatalog, sources: Sequence[PinnedSource], start_ns: int) -> pa.Schema:
    """The schema of `merged_batches`: `table`, then the union of the tables' columns.

    Each pinned table's Arrow types are recorded on it (`PinnedSource.arrow_schema`) for the
    direct file reads.
    """
    plain = duck_connect(extensions=())
    try:
        for source in sources:
            if source.snapshot_id is not None and source.arrow_schema is None:
                source.arrow_schema = source.simple_arrow_schema(plain)
    finally:
        plain.close()
    fields: dict[str, pa.DataType] = {}
    if all(s.arrow_schema is not None for s in sources):
        for source in sources:
            assert source.arrow_schema is not None
            for field in source.arrow_schema:
                have = fields.get(field.name)
                fields[field.name] = (
                    field.type if have is None or have == field.type else _unify(have, field.type)
                )
        return pa.schema(
            [pa.field(TABLE_COLUMN, pa.dictionary(pa.int8(), pa.string()), nullable=False)]
            + [pa.field(n, t) for n, t in fields.items()]
        )
    con = Lake(catalog).connect()
    try:
        for source in sources:
            sql = source.read_sql(start_ns, start_ns + 1)
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
    return pa.schema(
        [pa.field(TABLE_COLUMN, pa.dictionary(pa.int8(), pa.string()), nullable=False)]
        + [pa.field(n, t) for n, t in fields.items()]
    )


def merged_batches(
    pipeline: WindowPipeline, schema: pa.Schema, batch_rows: int, verify: bool
) -> Iterator[pa.RecordBatch]:
    """Every event of the replay as record batches of `schema` (`union_schema`), in replay
    order, at most `batch_rows` rows each (see the module docstring for the layout).

    Args:
        pipeline: the replay's windows.
        schema: `union_schema` of its tables.
        batch_rows: largest batch.
        verify: compute the canonical encoding and the sequence hash.
    """
    names = pa.array(pipeline.tables, pa.string())
    data_schema = pa.schema([f for f in schema if f.name != TABLE_COLUMN])
    # Gathered on this thread, a pipeline stage beside the windows being prepared: gathering
    # where they are prepared measured 25-30% slower, gathering the columns on two threads
    # no faster (the cores are busy with the next windows either way).
    for window in pipeline.windows(encode=verify, bare=False):
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
        yield from merged.to_batches(max_chunksize=batch_rows)


def table_batches(
    pipeline: WindowPipeline, batch_rows: int, verify: bool
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Every event of the replay as `(table, batch)`: each table's rows in its own columns, in
    replay order within the table, after a `replay_seq` column (the event's position in the
    merged sequence); windows in order, tables in tie-break order within a window.

    Args:
        pipeline: the replay's windows.
        batch_rows: largest batch.
        verify: compute the canonical encoding and the sequence hash.
    """
    for window in pipeline.windows(encode=verify, bare=False):
        assert window.part_of is not None
        first = pipeline.count  # events before this window (updated after it is consumed)
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
            identifier = pipeline.sources[part.index].identifier
            for batch in rows.to_batches(max_chunksize=batch_rows):
                yield identifier, batch


def _gather(parts: Sequence[Part], field: pa.Field, positions: np.ndarray | None) -> pa.Array:
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


def _unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """A type holding both `a` and `b` values: the wider number, else string."""
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (
        pa.types.is_integer(b) or pa.types.is_floating(b)
    ):
        return pa.float64()
    return pa.string()
