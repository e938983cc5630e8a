"""docs/ingest.md's example for calendar spreads (prices at or below zero) does what it says.

Budget: <1 s (parses the example into a table definition; starts nothing).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pyarrow as pa
from pyiceberg.types import DoubleType

from iceberg_lake.ingest.decode import column_rule
from iceberg_lake.tables.definitions import load_definition_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_spread_table_keeps_prices_at_or_below_zero(tmp_path: Path) -> None:
    """Futures calendar spreads (ESH4-ESM4 at -2.5 or 0) were dead-lettered by the default
    `price > 0` rule and no doc said so or how to keep them (quant19 #5). The docs' example
    definition, merged into futures_trades.toml as it says, keeps them and still refuses NaN."""
    ingest = (ROOT / "docs" / "ingest.md").read_text()
    assert "**Prices at or below zero: calendar spreads.**" in ingest
    block = re.search(r"```toml\n(.*?)```", ingest[ingest.index("calendar spreads.**") :], re.S)
    assert block is not None
    example = tomllib.loads(block.group(1).replace("# … as in futures_trades.toml, except:", ""))
    price = next(c for c in example["columns"] if c["name"] == "price")
    shipped = (ROOT / "catalog" / "futures_trades.toml").read_text()
    line = next(x for x in shipped.splitlines() if '{ name = "price"' in x)
    # The copy the docs describe: other names, no subject, the price column with its bound.
    text = re.sub(r"(?m)^schema_name = .*$", f'schema_name = "{example["schema_name"]}"', shipped)
    text = re.sub(
        r"(?m)^tables = .*$", "tables = " + repr(example["tables"]).replace("'", '"'), text
    )
    text = re.sub(r"(?m)^subject = .*\n", "", text)
    text = text.replace(line, "  { " + ", ".join(
        f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in price.items()
    ) + " },")  # fmt: skip
    (tmp_path / "futures_spreads.toml").write_text(text)
    spreads = load_definition_file(tmp_path / "futures_spreads.toml")
    assert [d.identifier for d in spreads] == ["bronze.futures_spreads", "silver.futures_spreads"]
    assert all(not d.subject for d in spreads)
    default = load_definition_file(ROOT / "catalog" / "futures_trades.toml")[0]

    prices = pa.array([-2.5, 0.0, 1.25, float("nan"), float("inf")])
    ok, reason = column_rule("price", DoubleType(), default.column("price")).float_check(prices)
    assert ok.to_pylist() == [False, False, True, False, False]
    assert reason == "price must be a finite number > 0"
    ok, _ = column_rule("price", DoubleType(), spreads[0].column("price")).float_check(prices)
    assert ok.to_pylist() == [True, True, True, False, False]
