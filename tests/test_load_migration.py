"""A migration landing while a file loads (audit load18 #5).

`lake table evolve --add-column` (or `lake migrate up`) during a night's backfill ended the load
with `internal error: ValueError: Target schema's field names are not matching…`. Now the commit
requires the schema the rows were converted to, and the load stops with one readable line; the
re-run resumes with the new schema and stores every row once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.loader import LoadFailedError
from iceberg_lake.schema.evolve import AddColumn, Change, RenameColumn, evolve_table
from tests.load_data import TRADES_MAPPING, at_commit, trades_table, write_parquet
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration

TABLE = "bronze.futures_trades"
N = 3_000


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


@pytest.mark.parametrize(
    ("change", "size"),
    [(AddColumn("venue", "string"), "size"), (RenameColumn("size", "qty"), "qty")],
    ids=["add-column", "rename"],
)
def test_a_migration_during_a_load_stops_it_with_one_line_and_the_rerun_resumes(
    lake: LakeCatalog,
    duck,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Change,
    size: str,
) -> None:
    path = write_parquet(tmp_path / "t.parquet", trades_table(N), row_group_size=1_000)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    options = LoadOptions(mapping=str(mapping), commit_rows=1_000)
    # The rows are converted; the migration lands before the second commit.
    at_commit(monkeypatch, 2, lambda: evolve_table(lake.load_table(TABLE), TABLE, [change]))
    with pytest.raises(LoadFailedError) as stopped:
        load_file(lake, path, options)

    error = stopped.value.result.error or ""
    assert "t.parquet: bronze.futures_trades changed schema during the load" in error
    assert "re-run to load the rest with the new schema" in error
    assert "internal error" not in error and "\n" not in error
    assert stopped.value.result.rows_stored == 1_000
    assert rows(duck, lake, TABLE, "SELECT count(*) FROM t") == [(1_000,)]

    again = load_file(lake, path, options)

    assert (again.status, again.rows_stored) == ("resumed", N - 1_000)
    got = rows(duck, lake, TABLE, f"SELECT count(*), count(DISTINCT seq), count({size}) FROM t")
    assert got == [(N, N, N)]
