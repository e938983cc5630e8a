"""PartitionReplacement: several replace() calls in one snapshot keep every file they wrote."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from pyiceberg.expressions import EqualTo

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import PartitionReplacement


def _rows(table, n: int, offset: int) -> pa.Table:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    ts = [1_765_000_000_000_000_000 + offset + i for i in range(n)]
    data = {f.name: [None] * n for f in schema}
    data.update(
        ts_event_ns=ts, ts_recv_ns=ts, source=["s"] * n, symbol=["SPY"] * n, price=[1.0] * n,
        size=[1] * n, seq=list(range(offset, offset + n)),
        ts_event=[datetime.fromtimestamp(x // 1000 / 1e6, tz=UTC) for x in ts],
    )  # fmt: skip
    return pa.table(data).cast(schema)


def test_two_replace_calls_in_one_commit_keep_all_rows(tmp_path: Path) -> None:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path)}))
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    rep = PartitionReplacement(table, {})
    rep.replace(EqualTo("symbol", "SPY"), _rows(table, 5, 0), [])
    rep.replace(EqualTo("symbol", "SPY"), _rows(table, 7, 100), [])
    assert rep.commit() is not None
    stored = catalog.load_table("bronze.stocks_trades").scan().to_arrow()
    assert sorted(stored["seq"].to_pylist()) == list(range(5)) + list(range(100, 107))
