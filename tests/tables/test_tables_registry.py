"""The declared tables in catalog/: the spec's columns, hidden partitioning, properties."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

from iceberg_lake.tables import SCHEMA_NAME_PROPERTY, SCHEMA_VERSION_PROPERTY, registry

MARKET = [
    "stocks_trades",
    "stocks_quotes",
    "options_trades",
    "options_greeks_snapshots",
    "futures_trades",
    "futures_mbp10",
]


def test_all_thirteen_tables_of_the_design_are_declared() -> None:
    expected = {f"{ns}.{t}" for ns in ("bronze", "silver") for t in MARKET}
    expected.add("gold.levels_signals")
    assert expected <= set(registry().identifiers)


def test_stocks_trades_has_the_spec_columns_in_order() -> None:
    d = registry().get("bronze.stocks_trades")
    assert d.column_names == [
        "ts_event_ns", "ts_recv_ns", "source", "symbol", "price", "size", "exchange", "seq",
        "ts_event", "conditions",
    ]  # fmt: skip
    schema = d.iceberg_schema()
    assert str(schema.find_field("size").field_type) == "int"
    assert str(schema.find_field("ts_event").field_type) == "timestamptz"
    assert schema.find_field("ts_event_ns").required


def test_mbp10_has_forty_ladder_columns() -> None:
    names = registry().get("silver.futures_mbp10").column_names
    ladder = [n for n in names if n.startswith(("bid_", "ask_"))]
    assert len(ladder) == 40
    assert "bid_px_10" in ladder and "ask_sz_1" in ladder


@pytest.mark.parametrize("table", [f"bronze.{t}" for t in MARKET] + ["gold.levels_signals"])
def test_partitioning_is_hidden_identity_plus_time(table: str) -> None:
    d = registry().get(table)
    spec = d.partition_spec()
    schema = d.iceberg_schema()
    sources = [(schema.find_column_name(f.source_id), type(f.transform)) for f in spec.fields]
    key = "underlying" if table.startswith(("bronze.options", "gold")) else "symbol"
    time = DayTransform if "greeks" in table else HourTransform
    assert sources == [(key, IdentityTransform), ("ts_event", time)]


def test_properties_carry_compression_and_schema_identity() -> None:
    props = registry().get("gold.levels_signals").properties()
    assert props["write.parquet.compression-codec"] == "zstd"
    assert props["write.parquet.compression-level"] == "3"
    assert props[SCHEMA_NAME_PROPERTY] == "levels.signals"
    assert props[SCHEMA_VERSION_PROPERTY] == "1"


def test_arrow_schema_marks_required_columns_non_nullable() -> None:
    schema = registry().get("bronze.futures_trades").arrow_schema()
    assert not schema.field("price").nullable
    assert schema.field("seq").nullable
    assert schema.field("ts_event").type == pa.timestamp("us", tz="UTC")


def test_subjects_route_to_bronze_and_gold() -> None:
    r = registry()
    assert r.for_subject("market.futures.mbp10").identifier == "bronze.futures_mbp10"
    assert r.for_subject("levels.signals").identifier == "gold.levels_signals"
    assert r.for_subject("market.unknown") is None


def test_a_table_that_declares_no_sort_order_is_sorted_by_event_time() -> None:
    import dataclasses

    declared = registry().get("bronze.stocks_trades")
    assert declared.sort_keys[0][0] in declared.sort_order  # the declared order when there is one
    bare = dataclasses.replace(declared, sort_order=())
    assert bare.sort_keys == [("ts_event_ns", "ascending")]
    rows = pa.table({"ts_event_ns": [3, 1, 2], "symbol": ["c", "a", "b"]})
    assert rows.sort_by(bare.sort_keys).column("symbol").to_pylist() == ["a", "b", "c"]
