"""Rows for any lake table, each column filled by its type: maintenance and check tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

#: Event time of row 0 (2025-12-06T05:46:40Z); rows are 1 ms apart.
BASE_NS = 1_765_000_000_000_000_000


def make_rows(table: Table, start: int, n: int, symbol: str = "SPY") -> pa.Table:
    """`n` rows for any lake table: each column filled by its type (event times 1 ms apart)."""
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    columns: dict[str, list[Any]] = {}
    for f in schema:
        values: list[Any] = []
        for k in range(start, start + n):
            ts = BASE_NS + k * 1_000_000
            t = f.type
            if f.name in ("symbol", "underlying"):
                values.append(symbol)
            elif f.name == "ts_event_ns":
                values.append(ts)
            elif f.name == "ts_recv_ns":
                values.append(ts + 5)
            elif f.name == "seq":
                values.append(k)
            elif pa.types.is_timestamp(t):
                values.append(datetime.fromtimestamp(ts // 1000 / 1e6, tz=UTC))
            elif pa.types.is_integer(t):
                values.append(k % 100)
            elif pa.types.is_floating(t):
                values.append(100.0 + k / 100)
            elif pa.types.is_boolean(t):
                values.append(False)
            elif pa.types.is_date(t):
                values.append(date(2026, 1, 16))
            elif pa.types.is_list(t):
                values.append([])
            else:
                values.append("x")
        columns[f.name] = values
    return pa.Table.from_pydict(columns, schema=schema)
