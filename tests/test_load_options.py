"""A resumed `lake load` must use the options its file was started with (audit load18 #2).

A killed load re-run with a fixed mapping (`[scale] price = 0.01`) or another `--source` said
`resumed` and stored the file half under each; `--reload` then could not take the first half
back. The ledger entry now carries a fingerprint of what decides the stored rows, and a resume
under other options is refused with one line. Entries written before keep resuming.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.commit import OptionsChangedError, ledger_key
from tests.load_data import TRADES_MAPPING, killed_at_commit, trades_table, write_parquet
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration
runner = CliRunner()

TABLE = "bronze.futures_trades"
N = 3_000


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


def _killed_after_first_commit(
    lake: LakeCatalog, path: Path, options: LoadOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load `path` and stop at its second commit (the first is in), like a kill -9."""
    killed_at_commit(monkeypatch, 2, lambda: load_file(lake, path, options))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A vendor file, the mapping it was started with, and the same mapping with a scale."""
    path = write_parquet(tmp_path / "t.parquet", trades_table(N), row_group_size=1_000)
    v1 = tmp_path / "v1.toml"
    v1.write_text(TRADES_MAPPING)
    v2 = tmp_path / "v2.toml"
    v2.write_text(TRADES_MAPPING + "\n[scale]\nprice = 0.01\n")
    return path, v1, v2


def test_a_resume_with_another_mapping_is_refused(
    lake: LakeCatalog, duck, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, v1, v2 = files
    _killed_after_first_commit(
        lake, path, LoadOptions(mapping=str(v1), commit_rows=1_000), monkeypatch
    )

    with pytest.raises(OptionsChangedError) as refused:
        load_file(lake, path, LoadOptions(mapping=str(v2), commit_rows=1_000))

    message = str(refused.value)
    assert "1,000 of its rows are in bronze.futures_trades" in message
    assert "(the mapping differs; started with mapping vendor_futures (" in message
    assert "v1.toml), no --source, format parquet)" in message
    assert "`--reload` with this run's options loads the whole file again" in message
    assert "beside those 1,000 rows" in message
    assert rows(duck, lake, TABLE, "SELECT count(*) FROM t") == [(1_000,)]
    # With the options it was started with, it finishes: every row once, one price scale.
    done = load_file(lake, path, LoadOptions(mapping=str(v1), commit_rows=1_000))
    assert (done.status, done.rows_stored) == ("resumed", N - 1_000)
    got = rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq), min(price) FROM t")
    assert got == [(N, N, 6000.0)]


def test_reload_of_a_half_load_under_other_options_loads_the_file_under_them(
    lake: LakeCatalog, duck, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way out the refusal gives: finishing under the wrong mapping first, as it advised
    before, then `--reload`, put the whole file into Silver at 100x price beside the good rows
    (review18b); `--reload` of the half load was refused. Now it starts the next generation
    under the new mapping: the file once at the right price, the first commit's rows beside."""
    path, v1, v2 = files
    _killed_after_first_commit(
        lake, path, LoadOptions(mapping=str(v1), commit_rows=1_000), monkeypatch
    )

    again = load_file(lake, path, LoadOptions(mapping=str(v2), commit_rows=1_000, reload=True))

    assert (again.status, again.rows_stored) == ("reloaded", N)
    got = rows(duck, lake, TABLE, "SELECT price < 1000, count(*) FROM t GROUP BY 1 ORDER BY 1")
    assert got == [(False, 1_000), (True, N)]  # the old mapping's first commit stays (no undo)
    assert lake.load_table(TABLE).properties[ledger_key(_sha(path))].startswith(f"{N}:done@1;")
    # Done: a plain re-run under either mapping is `already-loaded`.
    assert load_file(lake, path, LoadOptions(mapping=str(v2))).status == "already-loaded"


def test_a_resume_with_another_source_is_one_error_line(
    lake: LakeCatalog, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, v1, _ = files
    options = LoadOptions(mapping=str(v1), commit_rows=1_000, source="polygon")
    _killed_after_first_commit(lake, path, options, monkeypatch)

    env = {"LAKE_DATA_DIR": str(lake.settings.data_dir), "COLUMNS": "200"}
    args = ["load", str(path), "--mapping", str(v1), "--commit-rows", "1000"]
    res = runner.invoke(app, [*args, "--source", "sip"], env=env)

    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert "(--source differs; started with mapping vendor_futures" in errors[0]
    assert "--source polygon, format parquet)" in errors[0]
    assert lake.load_table(TABLE).properties[ledger_key(_sha(path))].startswith("1000;")
    res = runner.invoke(app, [*args, "--source", "polygon"], env=env)
    assert res.exit_code == 0, res.output


def test_a_ledger_entry_without_a_fingerprint_still_resumes(
    lake: LakeCatalog, duck, files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry written before load18 (`<rows>` only) resumes as before (nothing to compare)."""
    path, v1, _ = files
    options = LoadOptions(mapping=str(v1), commit_rows=1_000)
    _killed_after_first_commit(lake, path, options, monkeypatch)
    table = lake.load_table(TABLE)
    key = ledger_key(_sha(path))
    with table.transaction() as tx:
        tx.set_properties({key: "1000"})

    done = load_file(lake, path, LoadOptions(mapping=str(v1), commit_rows=1_000, source="x"))

    assert (done.status, done.rows_stored) == ("resumed", N - 1_000)
    assert rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t") == [(N, N)]
    assert lake.load_table(TABLE).properties[key].startswith("3000:done;m=")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
