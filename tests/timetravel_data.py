"""Test data for the time-travel tests: rows appended to lake tables with plain pyiceberg appends.

Shared by `test_snapshots*.py`, `test_query*.py`, `test_readers*.py` and `test_replay*.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

#: 2025-12-16 14:00:00 UTC in nanoseconds (the spec's example day, 09:00 ET).
DAY_NS = int(datetime(2025, 12, 16, tzinfo=UTC).timestamp()) * 1_000_000_000
HOUR_NS = 3_600 * 1_000_000_000
T14 = DAY_NS + 14 * HOUR_NS


def trade(ts: int, symbol: str = "SPY", price: float = 100.0, size: int = 1, seq: int = 0) -> dict:
    """One stocks/futures trade row (spec columns only; `ts_event` is derived on append)."""
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1_000,
        "source": "test",
        "symbol": symbol,
        "price": price,
        "size": size,
        "exchange": 1,
        "seq": seq,
    }


def future(ts: int, symbol: str = "ES", price: float = 6000.0, size: int = 1, seq: int = 0) -> dict:
    """One futures trade row (`exchange` is a string here, `aggressor` an int8 code)."""
    return {**trade(ts, symbol, price, size, seq), "exchange": "CME", "aggressor": 1}


def futures(symbol: str, start_ns: int, count: int, step_ns: int, *, seq0: int = 0) -> list[dict]:
    """`count` futures trades of `symbol` every `step_ns` from `start_ns`."""
    return [
        future(start_ns + i * step_ns, symbol, 6000.0 + i * 0.25, 1 + i % 5, seq0 + i)
        for i in range(count)
    ]


def trades(
    symbol: str, start_ns: int, count: int, step_ns: int, *, seq0: int = 0, price: float = 100.0
) -> list[dict]:
    """`count` trades of `symbol` every `step_ns` from `start_ns`."""
    return [
        trade(start_ns + i * step_ns, symbol, price + i * 0.01, 1 + i % 7, seq0 + i)
        for i in range(count)
    ]


def to_arrow(table: Table, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table matching the live schema (derived `ts_event` filled, rest null)."""
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for row in rows:
        for name in columns:
            if name == "ts_event":
                columns[name].append(datetime.fromtimestamp(row["ts_event_ns"] / 1e9, tz=UTC))
            else:
                columns[name].append(row.get(name))
    return pa.Table.from_pydict(columns, schema=schema)


def append(table: Table, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows in one commit; returns the new snapshot id."""
    table.append(to_arrow(table, list(rows)))
    snap = table.current_snapshot()
    assert snap is not None
    return snap.snapshot_id
