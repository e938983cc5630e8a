"""The vectorised canonical encoding equals msgspec's, value by value (no lake; budget ~2 s)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pyarrow as pa

from iceberg_lake.timetravel.canonical import encode_rows, row_encoder


def _floats(rng: random.Random, n: int) -> list[float | None]:
    out: list[float | None] = []
    for _ in range(n):
        exp = rng.uniform(-9, 18)
        value = rng.choice([1, -1]) * 10**exp
        out.append(rng.choice([value, round(value, 2), float(round(value)), value]))
    edges = [0.0, -0.0, 1e-5, 9.99999e-6, 1e9, 999999999.9, 1e15, 1e16, 5e-324, 1.7e308]
    return out + edges + [float("nan"), float("inf"), float("-inf"), None]


def test_every_type_encodes_like_msgspec() -> None:
    rng = random.Random(7)
    floats = _floats(rng, 20_000)
    n = len(floats)
    strings = [
        rng.choice(["SPY", "QQQ", 'a"b', "back\\slash", "tab\t", "é ü", "\x7f", None])
        for _ in range(n)
    ]
    table = pa.table(
        {
            "f64": pa.array(floats, pa.float64()),
            "f32": pa.array(
                [None if v is None else rng.uniform(-1e3, 1e3) for v in floats], pa.float32()
            ),
            "i64": pa.array(
                [
                    rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(10**18), None])
                    for _ in range(n)
                ],
                pa.int64(),
            ),
            "i16": pa.array([rng.choice([None, 3, -7]) for _ in range(n)], pa.int16()),
            "b": pa.array([rng.choice([True, False, None]) for _ in range(n)]),
            "s": pa.array(strings, pa.string()),
            "distinct": pa.array([f"SPY{i}C" for i in range(n)], pa.string()),
            "ts": pa.array([datetime(2025, 12, 16, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")),
            "nothing": pa.nulls(n),
        }
    )
    got = encode_rows(table).to_pylist()
    rows = table.to_pylist()
    for row in rows:
        if row["f64"] == 0.0:  # -0.0 is canonically 0.0 (see canonical.py)
            row["f64"] = 0.0
    expected = [row_encoder.encode(r).decode() for r in rows]
    mismatches = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
    assert not mismatches, mismatches[:3]


def test_empty_and_column_subset() -> None:
    table = pa.table({"b": [1, 2], "a": ["x", "y"], "skip": [0.5, 0.25]})
    assert encode_rows(table, ["b", "a"]).to_pylist() == ['{"a":"x","b":1}', '{"a":"y","b":2}']
    assert encode_rows(table.slice(0, 0)).to_pylist() == []


def test_compiled_float_path_matches_msgspec_on_random_doubles() -> None:
    """Random bit patterns, short decimals and the edges of the fast path, on a sliced,
    chunked input (array offsets) with unsigned and narrow integers beside them."""
    import struct

    rng = random.Random(11)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(5_000)]
    values += [round(rng.uniform(-1e6, 1e6), rng.randrange(0, 7)) for _ in range(5_000)]
    values += [rng.randrange(1, 10**15) / 10 ** rng.randrange(0, 16) for _ in range(5_000)]
    values += [
        0.1 + 0.2,
        1e-5,
        1.0000000000000002e-5,
        9.999999999999999e-6,
        1e15 - 1,
        1e15,
        999999999999999.9,
        123456789012345.6,
        0.000123456789012345,
        2.5,
        -2.5,
    ]
    n = len(values)
    table = pa.concat_tables(
        [
            pa.table(
                {
                    "x": pa.array(values[:half], pa.float64()),
                    "u64": pa.array([2**64 - 1 - i for i in range(half)], pa.uint64()),
                    "i8": pa.array([(-128 + i) % 256 - 128 for i in range(half)], pa.int8()),
                }
            )
            for half in (n // 2,)
        ]
        + [
            pa.table(
                {
                    "x": pa.array(values[n // 2 :], pa.float64()),
                    "u64": pa.array(list(range(n - n // 2)), pa.uint64()),
                    "i8": pa.array([i % 100 for i in range(n - n // 2)], pa.int8()),
                }
            )
        ]
    ).slice(3, n - 5)
    got = encode_rows(table).to_pylist()
    rows = table.to_pylist()
    for row in rows:
        if row["x"] == 0.0:
            row["x"] = 0.0
    expected = [row_encoder.encode(r).decode() for r in rows]
    mismatches = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
    assert not mismatches, mismatches[:3]


def test_compiled_integer_path_matches_msgspec_at_every_digit_count() -> None:
    """Every length from 1 to 19 digits, both signs, and the powers of ten and their
    neighbours where the kernel's eight-digit groups split (10^8, 10^16)."""
    rng = random.Random(7)
    top = 2**63
    values = [
        rng.randrange(10 ** (d - 1), min(10**d, top)) for d in range(1, 20) for _ in range(200)
    ]
    values += [10**k + delta for k in range(19) for delta in (-1, 0, 1) if 10**k + delta >= 0]
    values += [2**63 - 1, 0, 10**18, 10**16 - 1, 10**8 - 1]
    values += [-v for v in values if v] + [-(2**63)]
    table = pa.table({"v": pa.array(values, pa.int64()), "w": pa.array(values[::-1], pa.int64())})
    got = encode_rows(table).to_pylist()
    assert got == [row_encoder.encode(row).decode() for row in table.to_pylist()]
