"""Guard test for the writers' data path in `iceberg_lake.engine.iceberg` (issue 14).

`write_sorted_data_files` replaces pyiceberg's `_dataframe_to_data_files` for the writers: it
must describe the same rows with the same partitions, counts and column bounds, and it reuses
pyiceberg's private `_get_parquet_writer_kwargs` and `Transaction._append_snapshot_producer`.
Budget: about 3 s.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io import pyarrow as pyiceberg_pyarrow
from pyiceberg.table import Transaction

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine import iceberg as engine

TABLE = "bronze.stocks_trades"
BASE_NS = 1_765_900_000 * 1_000_000_000


def _rows(table_schema: pa.Schema, n: int) -> pa.Table:
    ts = [BASE_NS + (i * 7919 % n) * 2_000_000_000 for i in range(n)]  # spans hours, unsorted
    data = {
        "ts_event_ns": ts,
        "ts_recv_ns": [t + 1 for t in ts],
        "ts_event": pa.array([t // 1000 for t in ts], pa.timestamp("us", tz="UTC")),
        "source": ["guard"] * n,
        "symbol": [("SPY", "QQQ", "IWM")[i % 3] for i in range(n)],
        "price": [100.0 + i for i in range(n)],
        "size": [1 + i for i in range(n)],
        "exchange": [4] * n,
        "seq": list(range(n)),
    }
    cols = [
        pa.array(data[f.name], f.type) if f.name in data else pa.nulls(n, f.type)
        for f in table_schema
    ]
    return pa.Table.from_arrays(cols, schema=table_schema)


def test_private_helpers_still_exist() -> None:
    kwargs = pyiceberg_pyarrow._get_parquet_writer_kwargs({})
    assert {"compression", "compression_level", "data_page_size"} <= set(kwargs)
    assert callable(Transaction._append_snapshot_producer)


def test_fast_files_match_pyiceberg_and_are_sorted(tmp_path: Path) -> None:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path)}))
    lake.init()
    table = lake.load_table(TABLE)
    schema = engine.table_arrow_schema(table)
    rows = _rows(schema, 3000)
    assert engine.fast_path_applies(table, rows)
    assert not engine.fast_path_applies(table, rows.drop_columns(["seq"]))

    ours = engine.write_sorted_data_files(table, rows, uuid.uuid4(), itertools.count())
    stock = engine.write_data_files(table, rows, uuid.uuid4(), itertools.count())

    def key(f: object) -> tuple:
        return tuple(f.partition)  # type: ignore[attr-defined]

    assert len(ours) == len(stock) > 3
    for a, b in zip(sorted(ours, key=key), sorted(stock, key=key), strict=True):
        assert a.partition == b.partition
        assert a.record_count == b.record_count
        assert a.value_counts == b.value_counts
        assert a.null_value_counts == b.null_value_counts
        assert a.lower_bounds == b.lower_bounds and a.upper_bounds == b.upper_bounds
        assert a.file_size_in_bytes == Path(a.file_path.removeprefix("file://")).stat().st_size
        stored = pq.read_table(a.file_path.removeprefix("file://"))
        ts = stored.column("ts_event_ns").to_pylist()
        assert ts == sorted(ts)  # sorted by the table's sort order inside the partition
        assert all(b"PARQUET:field_id" in (f.metadata or {}) for f in stored.schema)

    # Committed through the watermarked append: every row readable, watermark set.
    with engine.watermarked_append(table, watermark={"lake.test.wm": "7"}) as app:
        app.append(rows)
    assert table.properties["lake.test.wm"] == "7"
    assert table.scan().to_arrow().num_rows == 3000


def test_write_threads_are_daemons(tmp_path: Path) -> None:
    """A write stuck on the object store must not keep a stopping writer process alive."""
    import threading

    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path)}))
    lake.init()
    table = lake.load_table(TABLE)
    files = engine.write_sorted_data_files(
        table, _rows(engine.table_arrow_schema(table), 200), uuid.uuid4()
    )
    assert len(files) > 1  # several partitions: written by the pool
    pool = [t for t in threading.enumerate() if t.name == "lake-parquet"]
    assert pool and all(t.daemon for t in pool)


def test_writer_rows_take_the_fast_path(tmp_path: Path) -> None:
    """The writer's prepared rows match the table's Arrow schema exactly (no silent fallback to
    pyiceberg's slower append)."""
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.ingest.writer import ConsumerWriter
    from iceberg_lake.tables import registry

    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path)})
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    d = registry().get(TABLE)
    body = (
        b'{"ts_event_ns": 1765900000000000000, "source": "t", "symbol": "SPY", '
        b'"price": 1.5, "size": 3}'
    )
    decoded = TableCodec(TABLE, d.iceberg_schema(), d.partition_key).decode([body], recv_ns=1)
    table = writer.tables[TABLE]
    rows = writer._prepare(TABLE, table, [decoded.table])
    assert rows.num_rows == 1
    assert engine.fast_path_applies(table, rows)
