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


def test_converted_numbers_are_the_doubles_and_nanoseconds_a_csv_of_the_same_values_gives() -> None:
    """Silver dedups on price and event time, so a loaded file must give exactly the values a
    CSV (or a live message) of the same event gives, or both copies are kept (quant8): a Parquet
    DECIMAL price (Arrow's cast gave 0.35000000000000003), fixed-point integers with a 1e-9
    scale, and event times as float or text seconds scaled by 1e9 (binary floats gave
    ...323440128 ns for ...323440 µs)."""
    from decimal import Decimal

    from iceberg_lake.load.mapping import Mapping

    table_id = "bronze.stocks_trades"
    target = registry().get(table_id).arrow_schema()
    prices = [f"{cents / 100:.2f}" for cents in range(1, 100_001, 7)]
    micros = [1_710_163_800_000_000 + k * 323_441 for k in range(len(prices))]
    seconds = [f"{m // 10**6}.{m % 10**6:06d}" for m in micros]
    n = len(prices)
    csv = convert(
        pa.table(
            {
                "ts_event_ns": pa.array([str(m * 1000) for m in micros]),
                "symbol": ["SPY"] * n,
                "price": pa.array(prices),
                "size": ["1"] * n,
            }
        ),
        identity_mapping(table_id),
        target,
        "s",
    ).table
    columns = {"ts_event_ns": "ts", "symbol": "symbol", "price": "px", "size": "size"}
    variants = {
        "decimal prices, float seconds": (
            {
                "px": pa.array([Decimal(p) for p in prices], pa.decimal128(12, 2)),
                "ts": pa.array([float(s) for s in seconds]),
            },
            {"ts_event_ns": 1e9},
        ),
        "fixed-point prices, text seconds": (
            {
                "px": pa.array([int(p.replace(".", "")) * 10**7 for p in prices]),
                "ts": pa.array(seconds),
            },
            {"ts_event_ns": 1e9, "price": 1e-9},
        ),
    }
    # The docs' example: whole microseconds as text (every CSV column is text), × 1000 (it
    # crashed with "utf8_trim_whitespace has no kernel for int64"; review10).
    text_micros = convert(
        pa.table({"t_us": [str(m) for m in micros], "symbol": ["SPY"] * n, "price": prices}),
        Mapping(
            name="docs",
            table=table_id,
            columns={"ts_event_ns": "t_us"},
            scale={"ts_event_ns": 1000},
        ),
        target,
        "s",
    )
    assert not text_micros.problems
    assert text_micros.table["ts_event_ns"].to_pylist() == csv["ts_event_ns"].to_pylist()
    for label, (data, scale) in variants.items():
        batch = pa.table({**data, "symbol": ["SPY"] * n, "size": [1] * n})
        mapping = Mapping(name=label, table=table_id, columns=columns, scale=scale)
        got = convert(batch, mapping, target, "s")
        assert not got.problems, (label, list(got.problems.items())[:3])
        for column in ("price", "ts_event_ns"):
            mismatched = pc_not_equal(got.table[column], csv[column])
            assert not mismatched, (label, column, mismatched[:3])


def pc_not_equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> list[tuple[object, object]]:
    return [(x, y) for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True) if x != y]


@pytest.mark.parametrize("factor", [1e9, 1e6, 1.0e3])
def test_scaled_text_is_the_decimal_product_rounded_half_to_even(factor: float) -> None:
    """Text seconds into integer nanoseconds is `Decimal(text) * factor`, rounded half to even,
    null with a reason where that is not an int64 — computed in Arrow for plain decimals
    (review10: value by value took 1.2-1.6 s per million rows), so the same answer must come
    for ties, signs, leading and trailing points, exponents, words and int64's edges."""
    import random
    from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

    from iceberg_lake.load.mapping import Mapping

    rng = random.Random(7)
    values: list[str | None] = [
        "1710150000.1234565", "1710150000.1234575", "-0.0000000005", "0.0000000015", "-2.5",
        "+.5", "5.", " 12 ", "", "  ", None, "1e3", "-1.5E-3", "1e30", "nan", "inf", "abc", ".",
        "-", "9223372036.854775807", "9223372036.854775808", "-9223372036.854775808",
        "-9223372036.854775809", "0.00000000050000000001", "3.14159265358979323846264",
        "000000000000000000001.5", "1_000",
    ]  # fmt: skip
    for _ in range(5000):
        whole = str(rng.randint(0, 10 ** rng.randint(0, 12)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 12)))
        values.append(
            rng.choice(["", "-", "+"]) + whole + ("." + frac if rng.random() < 0.9 else "")
        )

    def oracle(text: str | None) -> int | None:
        if text is None or not text.strip() or "_" in text:  # Python's 1_000 is no feed's
            return None
        try:
            product = Decimal(text.strip()) * Decimal(repr(factor))
            if not product.is_finite():
                return None
            result = int(product.to_integral_value(ROUND_HALF_EVEN))
        except (InvalidOperation, ValueError):
            return None
        return result if -(2**63) <= result < 2**63 else None

    table_id = "bronze.stocks_trades"
    n = len(values)
    got = convert(
        pa.table({"t": pa.array(values, pa.string()), "symbol": ["SPY"] * n}),
        Mapping(
            name="t", table=table_id, columns={"ts_event_ns": "t"}, scale={"ts_event_ns": factor}
        ),
        registry().get(table_id).arrow_schema(),
        "s",
    )
    expected = [oracle(v) for v in values]
    stored = got.table["ts_event_ns"].to_pylist()
    wrong = [(v, s, e) for v, s, e in zip(values, stored, expected, strict=True) if s != e]
    assert not wrong, wrong[:5]
    unexplained = [
        values[i] for i, e in enumerate(expected)
        if e is None and values[i] is not None and values[i].strip() and i not in got.problems
    ]  # fmt: skip
    assert not unexplained, unexplained[:5]


def test_integers_are_exact_or_refused_never_truncated_or_rounded() -> None:
    """A fractional DECIMAL size was truncated (0.5 stored as 0, 2.75 as 2); integer text with
    a point or an exponent went through a double (1710163800000000001.0 stored as ...000, so two
    events shared a dedup key); Python's `1_000` was read as 1000; and a fixed-point integer
    beyond 2**53 into a double column (Databento's UNDEF_PRICE, with `price = 1e-9`) failed the
    whole load with an internal ArrowInvalid (review11)."""
    from decimal import Decimal
    from fractions import Fraction

    from iceberg_lake.load.mapping import Mapping

    table_id = "bronze.stocks_trades"
    target = registry().get(table_id).arrow_schema()
    sizes = convert(
        pa.table(
            {
                "symbol": ["SPY"] * 3,
                "size": pa.array(
                    [Decimal("100"), Decimal("0.5"), Decimal("2.75")], pa.decimal128(6, 2)
                ),
            }
        ),
        identity_mapping(table_id),
        target,
        "s",
    )
    assert sizes.table["size"].to_pylist() == [100, None, None]
    assert sorted(sizes.problems) == [1, 2]

    # `1e999999999`: refused as out of range before Python builds its billion digits (review12).
    texts = ["1710163800000000001.0", "1.710163800000000005e18", "1_000", "17e2", " 42 ",
             "1e999999999"]  # fmt: skip
    stamps = convert(
        pa.table({"ts_event_ns": texts, "symbol": ["SPY"] * len(texts)}),
        identity_mapping(table_id),
        target,
        "s",
    )
    assert stamps.table["ts_event_ns"].to_pylist() == [
        1_710_163_800_000_000_001, 1_710_163_800_000_000_005, None, 1700, 42, None,
    ]  # fmt: skip
    assert sorted(stamps.problems) == [2, 5]

    fixed = [2**63 - 1, 2**53 + 1, 600_250_000_000, None]
    prices = convert(
        pa.table({"px": pa.array(fixed, pa.int64()), "symbol": ["SPY"] * len(fixed)}),
        Mapping(name="fx", table=table_id, columns={"price": "px"}, scale={"price": 1e-9}),
        target,
        "s",
    )
    # 2**63 - 1 is Databento's UNDEF_PRICE (an empty level): no value, as the DBN reader has it
    # (review12: it was stored as a price of 9.2e9).
    expected = [None, float(Fraction(2**53 + 1, 10**9)), 600.25, None]
    assert prices.table["price"].to_pylist() == expected


def test_a_timestamp_beyond_nanoseconds_is_one_bad_row_not_a_failed_load() -> None:
    """A `timestamp[us]` column holding the 9999-12-31 "no date" placeholder failed the whole
    load with an internal ArrowInvalid (quant10): that row is refused with its reason."""
    import datetime as dt

    table_id = "bronze.stocks_trades"
    utc = dt.UTC
    stamps = [dt.datetime(2025, 12, 16, 14, tzinfo=utc), dt.datetime(9999, 12, 31, tzinfo=utc)]
    got = convert(
        pa.table(
            {"ts_event_ns": pa.array(stamps, pa.timestamp("us", tz="UTC")), "symbol": ["A"] * 2}
        ),
        identity_mapping(table_id),
        registry().get(table_id).arrow_schema(),
        "s",
    )
    assert got.table["ts_event_ns"].to_pylist() == [1_765_893_600 * 10**9, None]
    assert list(got.problems) == [1] and "outside the range" in got.problems[1]
