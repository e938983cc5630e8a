"""Number text in `lake load` is read the same way whichever path a batch takes (no catalog).

A text column goes through Arrow's casts when every value is plain and value by value otherwise,
so what one path accepts the other must accept, and with the same value (review13).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load.mapping import Converted, Mapping, convert, load_mapping
from iceberg_lake.tables import registry
from tests.load_data import TRADES_MAPPING, trades_table, write_parquet
from tests.test_load import make_lake

TABLE = "bronze.stocks_trades"
UNDEFINED = (2**63 - 1, -(2**63), 2**64 - 1)
TEXT = pa.string()


def _convert(
    column: str,
    values: list[object],
    scale: dict[str, float] | None = None,
    of_type: pa.DataType = TEXT,
) -> Converted:
    """`values` as the file column feeding `column` of the trades table."""
    n = len(values)
    return convert(
        pa.table({"v": pa.array(values, of_type), "symbol": ["SPY"] * n}),
        Mapping(name="t", table=TABLE, columns={column: "v"}, scale=scale or {}),
        registry().get(TABLE).arrow_schema(),
        "s",
    )


def test_an_undefined_sentinel_in_text_is_no_value_as_in_an_integer_column() -> None:
    """Text `9223372036854775807` (Databento's UNDEF_PRICE) with `price = 1e-9` was stored as a
    price of 9223372036.854776, where the same value in an int64 column (Parquet, DBN) is no
    value (review13)."""
    fixed = {"price": 1e-9}
    texts = [str(v) for v in UNDEFINED] + ["600250000000", " 9223372036854775807 ", "+1"]
    got = _convert("price", texts, fixed)
    assert got.table["price"].to_pylist() == [None, None, None, 600.25, None, 1e-9]
    assert got.problems == {}

    signed = _convert("price", [2**63 - 1, -(2**63), 600250000000], fixed, pa.int64())
    unsigned = _convert("price", [2**64 - 1, 2**63 - 1, 600250000000], fixed, pa.uint64())
    as_text = _convert("price", [str(2**63 - 1), str(-(2**63)), "600250000000"], fixed)
    for column in (signed, unsigned):
        assert column.table["price"].to_pylist() == [None, None, 600.25]
        assert column.problems == as_text.problems == {}
    assert as_text.table["price"].to_pylist() == [None, None, 600.25]


def test_integer_text_beyond_2_53_scales_into_the_double_an_integer_column_gives() -> None:
    """Fixed-point integer text beyond 2**53 with `price = 1e-9` was parsed as a double and
    then divided, so a quarter of the prices came a double away from the same file's Parquet
    copy (divided exactly), and Silver's dedup kept both (review13)."""
    import random

    rng = random.Random(13)
    signed = [rng.randint(2**53, 2**62) for _ in range(2000)] + [2**53, 2**53 + 1, -(2**60) - 7]
    unsigned = [2**63, 2**63 + 12_345, 2**64 - 2]
    fixed = {"price": 1e-9}
    for values, of_type in ((signed, pa.int64()), (unsigned, pa.uint64())):
        column = _convert("price", values, fixed, of_type)
        as_text = _convert("price", [f" {v} " for v in values] + ["600.25"], fixed)
        assert as_text.table["price"].to_pylist() == [
            *column.table["price"].to_pylist(),
            600.25e-9,
        ]
        assert as_text.problems == column.problems == {}


@pytest.mark.parametrize("scale", [None, {"size": 1000}])
def test_hex_integer_text_is_refused_whatever_else_the_batch_holds(
    scale: dict[str, float] | None,
) -> None:
    """`0x64` was stored as size 100 when every other value of the batch was plain (Arrow's
    cast reads hex) and dead-lettered when one was `5.0` (value by value it is refused), so the
    same row's fate depended on its neighbours (review13)."""
    factor = 1000 if scale else 1
    for neighbour in ("5", "5.0", "5e0", "+5"):
        got = _convert("size", ["0x64", neighbour], scale)
        assert got.table["size"].to_pylist() == [None, 5 * factor], neighbour
        assert list(got.problems) == [0], neighbour
        assert "'0x64'" in got.problems[0]


@pytest.mark.parametrize("neighbour", [None, "1.5"])
def test_integer_text_beyond_eighteen_digits_is_refused_not_wrapped_into_a_timestamp(
    neighbour: str | None,
) -> None:
    """`_PLAIN_DECIMAL` let integer text of any length into Arrow's decimal cast, which wraps
    silently: microseconds `728012686239904354656691780` with `ts_event_ns = 1000` were stored
    as 2023-01-01T00:00:00Z (review13). Long values go value by value and are out of range."""
    # Arrow's decimal cast wraps this one to 1672531200000000.000…: a 2023 timestamp in µs.
    values = ["728012686239904354656691780"] + ([neighbour] if neighbour else [])
    for factor in (1000, 1e9):
        got = _convert("ts_event_ns", values, {"ts_event_ns": factor})
        assert got.table["ts_event_ns"].to_pylist()[0] is None, factor
        assert list(got.problems) == [0], factor
        assert "out of range" in got.problems[0] or "invalid value" in got.problems[0]


def test_a_scaled_long_decimal_is_rounded_once_from_the_exact_product() -> None:
    """`1.0000000005000000000000000000001` seconds × 1e9 was 1000000000 ns: the product was
    rounded to Decimal's 28 digits (…0005, a tie) and then half to even, where the exact
    product …0005000000000000000000001 rounds up (review13)."""
    values = [
        "1.0000000005000000000000000000001",
        "-1.0000000005000000000000000000001",
        "1.0000000005000000000000000000001e0",
        "1.0000000005",
        "1.0000000015",
        "1.49999999999999999999999999999999999e-9",
    ]
    got = _convert("ts_event_ns", values, {"ts_event_ns": 1e9})
    assert got.table["ts_event_ns"].to_pylist() == [
        1_000_000_001, -1_000_000_001, 1_000_000_001, 1_000_000_000, 1_000_000_002, 1,
    ]  # fmt: skip
    assert got.problems == {}


@pytest.mark.parametrize(
    ("column", "scale"),
    [
        ("size", None),
        ("size", {"size": 1000}),
        ("price", None),
        ("ts_event_ns", {"ts_event_ns": 1e9}),
    ],
)
def test_unicode_digits_are_refused_like_other_invalid_text(
    column: str, scale: dict[str, float] | None
) -> None:
    """Arabic-Indic `١٢٣.5` and full-width `１２３` were stored as 123.5 and 123: Arrow's casts
    refuse them, and the batch went value by value, where Python's `\\d`, `int`, `float` and
    `Decimal` take any script's digits (review13)."""
    got = _convert(column, ["١٢٣.5", "١٢٣", "１２３", "2.0"], scale)
    stored = got.table[column].to_pylist()
    assert stored[:3] == [None, None, None], stored
    assert stored[3] is not None
    assert sorted(got.problems) == [0, 1, 2]
    assert all("invalid value" in reason for reason in got.problems.values())


@pytest.mark.parametrize("factor", ["0", "-0.0", "inf", "-inf", "nan"])
def test_a_zero_or_non_finite_scale_factor_is_refused_with_the_mapping_and_key(
    tmp_path: Path, factor: str
) -> None:
    """`[scale] price = 0` (or -0.0, inf, nan) was accepted and the load ended in 'internal
    error: ZeroDivisionError' (review13): the mapping is refused with its file and key."""
    path = tmp_path / "zero.toml"
    path.write_text(f"{TRADES_MAPPING}[scale]\nprice = {factor}\n")
    with pytest.raises(LakeError, match=r"zero\.toml: \[scale\] price = .* is not a finite"):
        load_mapping(path)


def test_a_zero_scale_factor_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """Through `lake load` the same mapping ended in 'internal error: ZeroDivisionError'
    (review13); it is one line naming the file and key, exit 1."""
    make_lake(tmp_path / "data")
    data = write_parquet(tmp_path / "t.parquet", trades_table(10))
    path = tmp_path / "zero.toml"
    path.write_text(f"{TRADES_MAPPING}[scale]\nprice = 0\n")
    out = CliRunner().invoke(
        app,
        ["load", str(data), "--mapping", str(path)],
        env={"LAKE_DATA_DIR": str(tmp_path / "data")},
    )
    assert out.exit_code == 1, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "[scale] price = 0" in lines[0], out.output
    assert "internal error" not in out.output
