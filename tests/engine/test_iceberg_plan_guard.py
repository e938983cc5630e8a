"""Guard: `engine.iceberg.plan_data_files` plans the files `DataScan.plan_files` plans.

It drives pyiceberg's `ManifestGroupPlanner` (the planner behind `plan_files`) to skip the
per-file residuals; if an upgrade changes that class, this fails. Budget: ~3 s.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import plan_data_files
from iceberg_lake.timetravel.readers import window_filter

HOUR_NS = 3_600 * 10**9
T0 = 1_765_843_200 * 10**9


def test_plan_data_files_matches_plan_files(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    for hour in range(4):
        ts = [T0 + hour * HOUR_NS + i * 10**9 for i in range(10)]
        cols = {
            "ts_event_ns": ts,
            "ts_recv_ns": ts,
            "symbol": ["SPY"] * 5 + ["QQQ"] * 5,
            "source": ["t"] * 10,
            "price": [1.0] * 10,
            "size": [1] * 10,
            "seq": list(range(10)),
        }
        arrays = []
        for f in schema:
            if f.name == "ts_event":
                arrays.append(pa.array([t // 1000 for t in ts], pa.int64()).cast(f.type))
            elif f.name in cols:
                arrays.append(pa.array(cols[f.name]).cast(f.type))
            else:
                arrays.append(pa.nulls(10, f.type))
        table.append(pa.Table.from_arrays(arrays, schema=schema))
    sid = table.current_snapshot().snapshot_id
    window = window_filter(T0 + HOUR_NS + 5 * 10**9, T0 + 3 * HOUR_NS)
    files, deletes = plan_data_files(table, sid, window)
    expected = table.scan(row_filter=window, snapshot_id=sid).plan_files()
    assert sorted(f.file_path for f in files) == sorted(t.file.file_path for t in expected)
    assert len(files) == 3  # QQQ of hour 1 (SPY is before the window), SPY and QQQ of hour 2
    assert not deletes
