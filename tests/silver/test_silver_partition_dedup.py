"""Silver deduplicates within each partition, however its queries group the partitions.

An option printed under two underlyings (SPX and SPXW roots) is one row in each underlying's
partition. One DuckDB query reading both partitions kept one of the two rows, a query per
underlying kept both (silver18): the same Bronze snapshot gave two different Silvers,
depending on `rows_per_query`, `--symbol` and which partitions an incremental run picked.
Spark's window is partitioned by (underlying, hour): both engines keep both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.silver.compactor import SilverCompactor

pytestmark = pytest.mark.integration

DAY = date(2025, 12, 16)
T = int(datetime(2025, 12, 16, 15, tzinfo=UTC).timestamp()) * 10**9


def _option(i: int, underlying: str, symbol: str = "SPXW251216C06000000") -> dict[str, Any]:
    return {
        "ts_event_ns": T + i,
        "ts_recv_ns": T + i + 7,
        "source": "opra",
        "underlying": underlying,
        "option_symbol": symbol,
        "exp_date": DAY.isoformat(),
        "strike": 6000.0,
        "right": "C",
        "price": 12.5,
        "size": 3,
        "aggressor": 1,
        "seq": i,
        "ts_event": (T + i) // 1000,
    }


ROWS = (
    [_option(i, "SPX") for i in range(1, 6)]
    + [_option(10, "SPX"), _option(10, "SPXW")]  # the same print under both roots
    + [_option(i, "SPXW") for i in range(11, 16)]
    + [_option(1000 + i, "QQQ", "QQQ251216C00600000") for i in range(50)]
)


def _silver(tmp_path: Path, name: str, scopes: list[str | None], **options: Any) -> list[tuple]:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / name)}))
    catalog.init()
    bronze = catalog.load_table("bronze.options_trades")
    schema = schema_to_pyarrow(bronze.schema(), include_field_ids=False)
    bronze.append(pa.Table.from_pylist([dict(r) for r in ROWS], schema=schema))
    with SilverCompactor(catalog, **options) as compactor:
        for scope in scopes:
            compactor.compact_date(DAY, "options.trades", partition_value=scope)
    rows = catalog.load_table("silver.options_trades").scan().to_arrow().to_pylist()
    return sorted((r["underlying"], r["ts_event_ns"] - T, r["seq"]) for r in rows)


def test_an_event_in_two_partitions_is_kept_in_each_whatever_the_query_grouping(
    tmp_path: Path,
) -> None:
    whole_day = _silver(tmp_path, "one-query", [None], rows_per_query=10**6, workers=1)
    per_partition = _silver(tmp_path, "per-underlying", ["QQQ", "SPX", "SPXW"])
    assert ("SPX", 10, 10) in whole_day and ("SPXW", 10, 10) in whole_day
    assert whole_day == per_partition
    assert len(whole_day) == len(ROWS)


def test_a_row_filed_in_another_hour_does_not_split_a_partitions_duplicates(
    tmp_path: Path,
) -> None:
    """A row whose `ts_event` (the partition) disagrees with its `ts_event_ns` sorted between
    two copies of an event in its partition by event time: the copies were no longer adjacent,
    and one query kept both where a query per partition kept one (review18)."""
    from test_silver import T0, _make_lake, trade

    def silver(name: str, rows_per_query: int) -> list[tuple]:
        lake = _make_lake(load_settings({"LAKE_DATA_DIR": str(tmp_path / name)}))
        bronze = lake.load_table("bronze.futures_trades")
        x = T0 + 5 * 10**9
        moved = trade(x, recv=x + 2, seq=1)
        moved["ts_event"] = x // 1000 + 3600 * 10**6  # filed an hour later
        rows = [trade(x, recv=x + 1, seq=1), moved, trade(x, recv=x + 3, seq=1)]
        rows += [trade(x + 3600 * 10**9, seq=2)] + [trade(x + i, sym="NQ", seq=9) for i in range(5)]
        schema = schema_to_pyarrow(bronze.schema(), include_field_ids=False)
        bronze.append(pa.Table.from_pylist(rows, schema=schema))
        with SilverCompactor(lake, rows_per_query=rows_per_query, workers=1) as compactor:
            compactor.compact_date(DAY, "futures.trades")
        got = lake.load_table("silver.futures_trades").scan().to_arrow().to_pylist()
        return sorted((r["symbol"], r["ts_event"], r["ts_recv_ns"]) for r in got)

    one_query, per_partition = silver("one", 10**6), silver("each", 1)
    assert one_query == per_partition
    assert len(one_query) == 8  # ES: the event in each of its two hours, the other trade; NQ: 5
