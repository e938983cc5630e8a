"""Guard test of `engine.iceberg.PartitionFileWriter` (Silver's streaming writer; budget < 3 s).

The writer describes its files with pyiceberg's write helpers (`compute_statistics_plan`,
`data_file_statistics_from_parquet_metadata`, `parquet_path_to_id_mapping`,
`load_location_provider`, `DataFile.from_args`, the private `_get_parquet_writer_kwargs`). If an
upgrade changes one of them, its data files would differ from pyiceberg's own write of the same
rows (`_dataframe_to_data_files`, through `write_data_files`): compared here field by field, then
committed and read back.
"""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.manifest import DataFileContent, FileFormat
from pyiceberg.table import Table
from pyiceberg.typedef import Record

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import PartitionFileWriter, table_arrow_schema, write_data_files

TABLE = "silver.stocks_trades"
T14 = 1_765_893_600 * 10**9  # 2025-12-16 14:00 UTC
HOUR = T14 // (3600 * 10**9)


def _table(tmp_path: Path, properties: dict[str, str] | None = None) -> Table:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.init()
    table = lake.load_table(TABLE)
    if properties:
        with table.transaction() as tx:
            tx.set_properties(properties)
    return table


def _rows(table: Table, n: int, *, nan: bool) -> pa.Table:
    """`n` rows of one partition (SPY, the 14:00 hour), sorted by event time: a long string
    (bounds truncated), nulls, a NaN price if `nan`."""
    ts = [T14 + i * 1_000_000 for i in range(n)]
    data: dict[str, Any] = {
        "ts_event_ns": ts,
        "ts_recv_ns": [t + 5 for t in ts],
        "source": ["a-source-name-longer-than-sixteen" if i % 3 else "b" for i in range(n)],
        "symbol": ["SPY"] * n,
        "price": [math.nan if nan and i == 7 else 100.0 + i % 13 for i in range(n)],
        "size": [i % 50 for i in range(n)],
        "exchange": [None if i % 4 == 0 else i % 3 for i in range(n)],
        "seq": list(range(n)),
        "ts_event": pa.array([t // 1000 for t in ts], pa.timestamp("us", tz="UTC")),
        "conditions": [None] * n,
    }
    schema = table_arrow_schema(table)
    return pa.Table.from_arrays([pa.array(data[f.name], f.type) for f in schema], schema=schema)


def _stats(f: Any) -> tuple[Any, ...]:
    return (
        f.content,
        f.file_format,
        tuple(f.partition),
        f.record_count,
        f.value_counts,
        f.null_value_counts,
        f.nan_value_counts,
        f.lower_bounds,
        f.upper_bounds,
        f.sort_order_id,
    )


def test_streamed_file_is_described_as_pyicebergs_own_write(tmp_path: Path) -> None:
    table = _table(tmp_path)
    rows = _rows(table, 2000, nan=True)
    writer = PartitionFileWriter(
        table, Record("SPY", HOUR), "guard-1", use_dictionary=lambda first: ["source", "symbol"]
    )
    for batch in rows.to_batches(max_chunksize=300):  # streamed: several batches, one file
        writer.write(batch)
    (ours,) = writer.close()
    (theirs,) = write_data_files(table, rows, uuid.uuid4(), itertools.count())

    assert writer.rows == 2000
    assert _stats(ours) == _stats(theirs)
    assert ours.content == DataFileContent.DATA and ours.file_format == FileFormat.PARQUET
    source_id = table.schema().find_field("source").field_id
    assert len(ours.lower_bounds[source_id]) == 16  # truncated as pyiceberg truncates it
    # Same partition directory from the table's location provider; the name is the caller's.
    assert ours.file_path.rsplit("/", 1)[0] == theirs.file_path.rsplit("/", 1)[0]
    assert ours.file_path.endswith("/guard-1-00000.parquet")
    local = Path(ours.file_path.removeprefix("file://"))
    assert ours.file_size_in_bytes == local.stat().st_size
    stored = pq.ParquetFile(local)
    assert all(b"PARQUET:field_id" in (f.metadata or {}) for f in stored.schema_arrow)
    encodings = {
        stored.metadata.row_group(0).column(i).path_in_schema: stored.metadata.row_group(0)
        .column(i)
        .encodings
        for i in range(stored.metadata.num_columns)
    }
    assert "RLE_DICTIONARY" in encodings["symbol"]
    assert "RLE_DICTIONARY" not in encodings["seq"]  # only the chosen columns


def test_files_roll_over_and_read_back_as_the_rows(tmp_path: Path) -> None:
    table = _table(tmp_path, {"write.target-file-size-bytes": "40000"})
    rows = _rows(table, 3000, nan=False)
    loose = pa.schema([f.with_nullable(True) for f in rows.schema])
    writer = PartitionFileWriter(table, Record("SPY", HOUR), "guard-2")
    for batch in rows.cast(loose).to_batches(max_chunksize=500):  # nullable input is cast
        writer.write(batch)
    files = writer.close()

    assert len(files) > 2
    assert [f.file_path.rsplit("/", 1)[1] for f in files] == [
        f"guard-2-{i:05d}.parquet" for i in range(len(files))
    ]
    assert sum(f.record_count for f in files) == 3000
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for f in files:
            append.append_data_file(f)
    back = table.scan().to_arrow()
    assert back.sort_by("seq").select(rows.column_names).equals(rows)
