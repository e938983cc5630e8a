"""The loader rejects exactly the rows the live writers reject (budget: < 2 s, no catalog).

The same events go through the writers' `TableCodec` (as JSON messages) and through the loader's
mapping + `Validator` (as an Arrow table, the way a Parquet file arrives): the rejected rows must
be the same, and so must the reasons where both paths see the value.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.load.mapping import convert, identity_mapping
from iceberg_lake.load.validate import Validator
from iceberg_lake.tables import registry

T = 1_765_893_600 * 10**9

GOOD = {
    "ts_event_ns": T,
    "ts_recv_ns": T + 5,
    "source": "s",
    "symbol": "SPY",
    "price": 600.5,
    "size": 10,
    "exchange": 4,
    "seq": 1,
}
CASES = [
    ({}, None),
    ({"price": -1.5}, "price must be a finite number > 0"),
    ({"price": 0.0}, "price must be a finite number > 0"),
    ({"size": -3}, "size must be >= 0"),
    ({"symbol": None}, "missing required field 'symbol'"),
    ({"symbol": ""}, "symbol is empty"),
    ({"ts_event_ns": T // 10**6}, "ts_event_ns is not a plausible Unix time in nanoseconds"),
    ({"seq": None}, None),
    ({"exchange": None}, None),
]


@pytest.mark.parametrize("table_id", ["bronze.stocks_trades"])
def test_loader_rejects_what_the_writers_reject(table_id: str) -> None:
    definition = registry().get(table_id)
    schema = definition.iceberg_schema()
    events = [{**GOOD, **change, "seq": i} for i, (change, _) in enumerate(CASES)]
    events[7]["seq"] = None

    codec = TableCodec(table_id, schema, definition.partition_key)
    bodies = [json.dumps({k: v for k, v in e.items() if v is not None}).encode() for e in events]
    writers = dict(codec.decode(bodies, recv_ns=T).rejected)

    arrow = pa.Table.from_pylist(
        events,
        schema=pa.schema(
            [
                ("ts_event_ns", pa.int64()),
                ("ts_recv_ns", pa.int64()),
                ("source", pa.string()),
                ("symbol", pa.string()),
                ("price", pa.float64()),
                ("size", pa.int64()),
                ("exchange", pa.int64()),
                ("seq", pa.int64()),
            ]
        ),
    )
    target = definition.arrow_schema()
    converted = convert(arrow, identity_mapping(table_id), target, source="")
    validator = Validator(table_id, schema, definition.partition_key)
    loader = dict(validator.check(converted.table, converted.problems).bad)

    assert sorted(loader) == sorted(writers)
    for i, (_, expected) in enumerate(CASES):
        if expected is None:
            assert i not in loader
            continue
        assert loader[i].startswith(expected), loader[i]
        assert writers[i].startswith(expected), writers[i]


def test_non_finite_and_out_of_range_values_are_rejected() -> None:
    table_id = "bronze.stocks_trades"
    definition = registry().get(table_id)
    arrow = pa.table(
        {
            "ts_event_ns": pa.array([T, T, T]),
            "symbol": pa.array(["A", "A", "A"]),
            "price": pa.array([math.nan, math.inf, 1.0]),
            "size": pa.array([1, 1, 2**40]),
        }
    )
    converted = convert(arrow, identity_mapping(table_id), definition.arrow_schema(), "s")
    validator = Validator(table_id, definition.iceberg_schema(), definition.partition_key)
    checked = validator.check(converted.table, converted.problems)
    bad = dict(checked.bad)
    assert sorted(bad) == [0, 1, 2]
    assert bad[0].startswith("price must be a finite number")
    assert "size" in bad[2]
    assert checked.good.num_rows == 0


def test_declared_enumerations_apply_to_loaded_rows() -> None:
    table_id = "bronze.futures_trades"
    definition = registry().get(table_id)
    schema = definition.iceberg_schema()
    events = [
        {
            "ts_event_ns": T,
            "source": "s",
            "symbol": "ESH6",
            "price": 6000.25,
            "size": 1,
            "aggressor": a,
        }
        for a in (1, 5, -1)
    ]
    codec = TableCodec(table_id, schema, definition.partition_key)
    writers = dict(codec.decode([json.dumps(e).encode() for e in events], recv_ns=T).rejected)
    converted = convert(
        pa.Table.from_pylist(events), identity_mapping(table_id), definition.arrow_schema(), "s"
    )
    validator = Validator(table_id, schema, definition.partition_key)
    loader = dict(validator.check(converted.table, converted.problems).bad)
    assert sorted(loader) == sorted(writers) == [1]
    assert "aggressor" in loader[1] and "aggressor" in writers[1]
