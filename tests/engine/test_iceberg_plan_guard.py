"""Guard: `engine.iceberg.plan_data_files` plans the files `DataScan.plan_files` plans.

It drives pyiceberg's `ManifestGroupPlanner` (the planner behind `plan_files`) to skip the
per-file residuals; if an upgrade changes that class, this fails. Budget: ~3 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import plan_data_files
from iceberg_lake.timetravel.readers import window_filter

HOUR_NS = 3_600 * 10**9
T0 = 1_765_843_200 * 10**9


def _hourly_trades(tmp_path: Path, hours: int, symbols: list[str]) -> Any:
    """bronze.stocks_trades of a new lake, one append per hour: a row per symbol in `symbols`,
    a second apart."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    n = len(symbols)
    for hour in range(hours):
        ts = [T0 + hour * HOUR_NS + i * 10**9 for i in range(n)]
        cols = {"ts_event_ns": ts, "ts_recv_ns": ts, "symbol": symbols, "source": ["t"] * n}
        cols |= {"price": [1.0] * n, "size": [1] * n, "seq": list(range(n))}
        arrays = []
        for f in schema:
            if f.name == "ts_event":
                arrays.append(pa.array([t // 1000 for t in ts], pa.int64()).cast(f.type))
            elif f.name in cols:
                arrays.append(pa.array(cols[f.name]).cast(f.type))
            else:
                arrays.append(pa.nulls(n, f.type))
        table.append(pa.Table.from_arrays(arrays, schema=schema))
    return table


def test_plan_data_files_matches_plan_files(tmp_path: Path) -> None:
    table = _hourly_trades(tmp_path, 4, ["SPY"] * 5 + ["QQQ"] * 5)
    sid = table.current_snapshot().snapshot_id
    window = window_filter(T0 + HOUR_NS + 5 * 10**9, T0 + 3 * HOUR_NS)
    files, deletes = plan_data_files(table, sid, window)
    expected = table.scan(row_filter=window, snapshot_id=sid).plan_files()
    assert sorted(f.file_path for f in files) == sorted(t.file.file_path for t in expected)
    assert len(files) == 3  # QQQ of hour 1 (SPY is before the window), SPY and QQQ of hour 2
    assert not deletes


#: sha256[:16] of the source of pyiceberg's `AvroFile.__enter__` (which `_avro_enter` replaces
#: line for line, caching its schema conversion and reader), `AvroFile._read_header` and
#: `AvroFileHeader.get_schema` (which it calls).
AVRO_SOURCES = {
    "AvroFile.__enter__": "ee6d6eda1ce049c8",
    "AvroFile._read_header": "bce3609930403be4",
    "AvroFileHeader.get_schema": "a83caafc1e857bfc",
}


def test_avro_readers_resolved_once_read_what_pyiceberg_reads(tmp_path: Path) -> None:
    """`engine.iceberg._avro_enter` (installed over pyiceberg's `AvroFile.__enter__`) converts
    each Avro schema and resolves its reader once: the manifests of many appends read through
    one cached reader give exactly the entries pyiceberg's own method gives."""
    import hashlib
    import inspect

    from pyiceberg.avro.file import AvroFile, AvroFileHeader

    from iceberg_lake.engine import iceberg as engine

    stock = {
        "AvroFile.__enter__": engine._STOCK_AVRO_ENTER,
        "AvroFile._read_header": AvroFile._read_header,
        "AvroFileHeader.get_schema": AvroFileHeader.get_schema,
    }
    changed = [
        name
        for name, obj in stock.items()
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16] != AVRO_SOURCES[name]
    ]
    assert not changed, f"pyiceberg changed {changed}: re-verify engine.iceberg._avro_enter"
    assert AvroFile.__enter__ is engine._avro_enter

    table = _hourly_trades(tmp_path, 6, ["SPY", "QQQ", "IWM"])
    snapshot = table.current_snapshot()
    assert snapshot is not None

    def entries() -> list[tuple[object, ...]]:
        return sorted(
            (e.status, e.data_file.file_path, e.data_file.record_count,
             tuple(e.data_file.partition), dict(e.data_file.lower_bounds),
             dict(e.data_file.upper_bounds), dict(e.data_file.value_counts))
            for m in snapshot.manifests(table.io)
            for e in m.fetch_manifest_entry(table.io, discard_deleted=False)
        )  # fmt: skip

    engine._AVRO_READERS.clear()
    cached = entries()
    # One reader for the manifest list's schema and one for the manifests' (not one per file).
    assert len(engine._AVRO_READERS) <= 2, len(engine._AVRO_READERS)
    try:
        engine.install_read_fixes(False)
        stock_entries = entries()
    finally:
        engine.install_read_fixes()
    assert len(cached) == 18
    assert cached == stock_entries
