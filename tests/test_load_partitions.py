"""`lake load` into a Bronze table whose partition spec was evolved (audit load18 #1, #6).

Each data file a load writes is labelled with one partition tuple and readers prune by it, so a
file must hold the rows of that one tuple for EVERY field of the table's current spec, not only
the declared (symbol, hour). Counted back with plain pyiceberg scans (filtered and not).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.schema.evolve import AddPartitionField, RenameColumn, evolve_table
from tests.load_data import polygon_trades, write_csv_gz
from tests.test_load import make_lake

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


def _count(lake: LakeCatalog, column: str, value: object) -> int:
    scan = lake.load_table(TABLE).scan(row_filter=EqualTo(column, value))
    return scan.to_arrow().num_rows


def test_rows_are_cut_by_every_field_of_an_evolved_spec(lake: LakeCatalog, tmp_path: Path) -> None:
    """load18 #1: after `--add-partition-field source:identity` (and `exchange:identity`), each
    file was labelled with its first row's values: `WHERE source = 'sip'` found 0 of 5,000."""
    evolve_table(
        lake.load_table(TABLE),
        TABLE,
        [AddPartitionField("source", "identity"), AddPartitionField("exchange", "identity")],
    )
    n = 4_000
    columns = polygon_trades(n)
    columns["source"] = ["polygon" if i // 2 % 2 else "sip" for i in range(n)]  # per symbol too
    path = write_csv_gz(tmp_path / "mixed.csv.gz", columns)

    result = load_file(lake, path, LoadOptions(table=TABLE, commit_rows=1_500))

    assert (result.status, result.rows_stored) == ("loaded", n)
    everything = lake.load_table(TABLE).scan().to_arrow()
    assert everything.num_rows == n
    for source in ("sip", "polygon"):
        assert _count(lake, "source", source) == n // 2
    values, counts = pc.value_counts(everything.column("exchange")).flatten()
    for exchange, count in zip(values.to_pylist(), counts.to_pylist(), strict=True):
        assert _count(lake, "exchange", exchange) == count
    # Every file holds exactly the values it is labelled with.
    table = lake.load_table(TABLE)
    names = [f.name for f in table.spec().fields]
    for task in table.scan().plan_files():
        label = dict(zip(names, task.file.partition, strict=True))
        with table.io.new_input(task.file.file_path).open() as stream:
            data = pq.read_table(stream, columns=["source", "exchange"])
        assert set(data.column("source").to_pylist()) == {label["source"]}
        assert set(data.column("exchange").to_pylist()) == {label["exchange"]}


def test_a_renamed_partition_column_loads(lake: LakeCatalog, tmp_path: Path) -> None:
    """load18 #6: after `--rename symbol:ticker --force`, every load failed with `internal
    error: KeyError: 'Field "symbol" does not exist in schema'` (the partition column was taken
    from the declared definition, not from the live table)."""
    evolve_table(lake.load_table(TABLE), TABLE, [RenameColumn("symbol", "ticker")])
    path = write_csv_gz(tmp_path / "day.csv.gz", polygon_trades(1_000))

    result = load_file(lake, path, LoadOptions(commit_rows=400))

    assert (result.status, result.rows_stored, result.dead_lettered) == ("loaded", 1_000, 0)
    assert {p[0] for p in result.partitions} == {"AAPL", "MSFT"}
    assert _count(lake, "ticker", "AAPL") == 500
