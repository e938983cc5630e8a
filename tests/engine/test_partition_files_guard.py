"""Guard test of `engine.iceberg.write_partition_files` (pyiceberg write internals; budget < 3 s).

It writes rows already split by partition straight through pyiceberg's `write_file`. If an
upgrade changes `WriteTask`, `write_file`, `PartitionKey` or the transforms, the files it makes
would differ from pyiceberg's own partitioned write: compared here partition by partition, then
committed and read back.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pyarrow as pa

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import write_data_files, write_partition_files

HOUR_NS = 3600 * 10**9
T14 = 1_765_893_600 * 10**9  # 2025-12-16 14:00 UTC


def test_partition_files_match_pyicebergs_own_partitioned_write(tmp_path: Path) -> None:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    lake.create_table(lake.definition("bronze.stocks_trades"))
    table = lake.load_table("bronze.stocks_trades")
    schema = lake.definition("bronze.stocks_trades").arrow_schema()
    n = 600
    ts = [T14 + (i % 3) * HOUR_NS + i for i in range(n)]
    columns = {
        "ts_event_ns": pa.array(ts, pa.int64()),
        "ts_recv_ns": pa.array(ts, pa.int64()),
        "source": pa.array(["t"] * n),
        "symbol": pa.array(["A" if i % 2 else "B/é" for i in range(n)]),
        "price": pa.array([1.0 + i for i in range(n)]),
        "size": pa.array([1] * n, pa.int32()),
        "exchange": pa.nulls(n, pa.int32()),
        "seq": pa.array(range(n), pa.int64()),
        "ts_event": pa.array([t // 1000 for t in ts], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "conditions": pa.nulls(n, pa.string()),
    }
    rows = pa.table(columns).select(schema.names).cast(schema)
    rows = rows.sort_by([("symbol", "ascending"), ("ts_event_ns", "ascending")])
    parts = [
        rows.filter(
            (pa.compute.field("symbol") == sym)
            & (pa.compute.divide(pa.compute.field("ts_event_ns"), HOUR_NS) == hour)
        )
        for sym in ("A", "B/é")
        for hour in (T14 // HOUR_NS, T14 // HOUR_NS + 1, T14 // HOUR_NS + 2)
    ]

    ours = write_partition_files(table, parts, uuid.uuid4(), itertools.count())
    theirs = write_data_files(table, rows, uuid.uuid4(), itertools.count())

    def key(f):  # type: ignore[no-untyped-def]
        return (tuple(f.partition), f.record_count)

    assert len(ours) == 6
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for f in ours:
            append.append_data_file(f)
    back = lake.load_table("bronze.stocks_trades").scan().to_arrow()
    assert back.num_rows == n
    assert sorted(back.column("seq").to_pylist()) == list(range(n))
