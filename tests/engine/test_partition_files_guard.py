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
from iceberg_lake.engine.iceberg import (
    file_tag,
    file_tag_of,
    tagged_write_uuid,
    write_data_files,
    write_partition_files,
)

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

    tag = file_tag_of("ab12" * 16)
    ours = write_partition_files(table, parts, tagged_write_uuid(tag), itertools.count())
    theirs = write_data_files(table, rows, uuid.uuid4(), itertools.count())

    def key(f):  # type: ignore[no-untyped-def]
        return (tuple(f.partition), f.record_count)

    assert len(ours) == 6
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    # The write id is in pyiceberg's file names: a tagged one is found again (`lake load
    # --undo`), a random one carries no tag.
    assert {file_tag(f.file_path) for f in ours} == {tag}
    assert {file_tag(f.file_path) for f in theirs} == {None}
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        for f in ours:
            append.append_data_file(f)
    back = lake.load_table("bronze.stocks_trades").scan().to_arrow()
    assert back.num_rows == n
    assert sorted(back.column("seq").to_pylist()) == list(range(n))


def test_watermarked_append_of_partitions_is_one_snapshot_with_the_watermark(
    tmp_path: Path,
) -> None:
    """`WatermarkedAppend.append_partitions` uses the transaction's private append producer."""
    from iceberg_lake.engine.iceberg import watermarked_append

    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    lake.create_table(lake.definition("bronze.futures_trades"))
    table = lake.load_table("bronze.futures_trades")
    schema = lake.definition("bronze.futures_trades").arrow_schema()
    parts = []
    for k, sym in enumerate(("ESH6", "ESM6")):
        ts = [T14 + k * HOUR_NS + i for i in range(50)]
        cols = {
            "ts_event_ns": pa.array(ts, pa.int64()),
            "ts_recv_ns": pa.array(ts, pa.int64()),
            "source": pa.array(["t"] * 50),
            "symbol": pa.array([sym] * 50),
            "price": pa.array([6000.0] * 50),
            "size": pa.array([1] * 50, pa.int32()),
            "seq": pa.array(range(50), pa.int64()),
            "ts_event": pa.array([t // 1000 for t in ts], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
        n = 50
        full = {f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}
        parts.append(pa.table(full).cast(schema))

    snapshot_id = (
        watermarked_append(table, watermark={"lake.x": "7"}, snapshot_properties={"k": "v"})
        .append_partitions(parts)
        .commit()
    )

    fresh = lake.load_table("bronze.futures_trades")
    assert len(fresh.metadata.snapshots) == 1
    assert fresh.current_snapshot().snapshot_id == snapshot_id  # type: ignore[union-attr]
    assert fresh.current_snapshot().summary["k"] == "v"  # type: ignore[union-attr]
    assert fresh.properties["lake.x"] == "7"
    assert fresh.scan().count() == 100
    assert len(fresh.inspect.files()) == 2
