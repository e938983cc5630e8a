"""A replay export (`lake replay --format parquet|ndjson`) loaded back: each row goes to the
table its `table` column names (budget: ~10 s).

quant13: the loader ignored that column, so a three-table export loaded with `--table
bronze.stocks_trades` stored the futures trades in the stock table and dead-lettered every
quote as "missing required field 'price'"; with `--table bronze.stocks_quotes` it stored every
trade as a 0/0 quote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.sources import TABLE_COLUMN
from iceberg_lake.timetravel.replay.arrow import TABLE_COLUMN as REPLAY_TABLE_COLUMN
from tests.load_data import T14, killed_at_commit, write_dbn
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration
runner = CliRunner()

FUTURES, QUOTES = "bronze.futures_trades", "bronze.stocks_quotes"
WINDOW = ["--start", str(T14 - 10**12), "--end", str(T14 + 10**13)]


def test_the_loaders_table_column_is_the_replays() -> None:
    assert TABLE_COLUMN == REPLAY_TABLE_COLUMN


@pytest.fixture
def export(tmp_path: Path) -> dict:
    """A lake with futures trades and stock quotes, replayed to Parquet and NDJSON."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "origin")}
    make_lake(tmp_path / "origin")
    trades = write_dbn(tmp_path / "f.trades.dbn", "trades", 300, {1: "ESH6", 2: "NQH6"})
    quotes = write_dbn(tmp_path / "q.mbp-1.dbn", "mbp-1", 200, {7: "AAPL"}, dataset="XNAS.ITCH")
    for path in (trades, quotes):
        loaded = runner.invoke(app, ["load", str(path)], env=env)
        assert loaded.exit_code == 0, loaded.output
    out: dict = {}
    for fmt in ("parquet", "ndjson"):
        target, manifest = tmp_path / f"export.{fmt}", tmp_path / f"export-{fmt}.json"
        args = ["replay", "--tables", f"{FUTURES},{QUOTES}", *WINDOW, "-f", fmt]
        done = runner.invoke(
            app, [*args, "--out", str(target), "--manifest", str(manifest)], env=env
        )
        assert done.exit_code == 0, done.output
        out[fmt] = (target, json.loads(manifest.read_text()))
    return out


@pytest.mark.parametrize("fmt", ["parquet", "ndjson"])
def test_an_export_loaded_without_a_table_fills_each_table_and_replays_the_same(
    export: dict, tmp_path: Path, fmt: str
) -> None:
    path, manifest = export[fmt]
    env = {"LAKE_DATA_DIR": str(tmp_path / "copy")}
    make_lake(tmp_path / "copy")

    loaded = runner.invoke(app, ["load", str(path), "-o", "json"], env=env)

    assert loaded.exit_code == 0, loaded.output
    results = json.loads(loaded.stdout)["results"]
    got = {
        r["table"]: (r["rows_stored"], r["dead_lettered"], r["rows_other_tables"]) for r in results
    }
    assert got == {FUTURES: (300, 0, 200), QUOTES: (200, 0, 300)}
    # The other tables' columns are not this table's unknown columns (review14b).
    assert [r["unknown_columns"] for r in results] == [[], []]
    assert "has no column" not in loaded.stderr
    # The same events, the same sequence hash as the lake they were exported from.
    again = tmp_path / "again.json"
    args = ["replay", "--tables", f"{FUTURES},{QUOTES}", *WINDOW, "--out", str(tmp_path / "a")]
    done = runner.invoke(app, [*args, "--manifest", str(again)], env=env)
    assert done.exit_code == 0, done.output
    replayed = json.loads(again.read_text())
    assert replayed["event_count"] == manifest["event_count"] == 500
    assert replayed["sequence_hash"] == manifest["sequence_hash"]
    # Loaded again: every table's ledger says so.
    twice = runner.invoke(app, ["load", str(path), "-o", "json"], env=env)
    assert [r["status"] for r in json.loads(twice.stdout)["results"]] == ["already-loaded"] * 2


def test_an_export_loaded_into_one_table_takes_only_its_rows(
    export: dict, tmp_path: Path, duck
) -> None:
    path, _ = export["parquet"]
    lake = make_lake(tmp_path / "copy")
    env = {"LAKE_DATA_DIR": str(tmp_path / "copy")}

    loaded = runner.invoke(app, ["load", str(path), "--table", QUOTES], env=env)

    assert loaded.exit_code == 0, loaded.output
    assert "300 rows of other tables in the replay export were not loaded" in loaded.output
    assert rows(duck, lake, QUOTES, "SELECT count(*), min(bid_px) > 0 FROM t") == [(200, True)]
    assert lake.load_table(FUTURES).current_snapshot() is None
    assert rows(duck, lake, "bronze.dead_letters", "SELECT count(*) FROM t") == []

    # A table the export does not hold: refused, nothing stored.
    with pytest.raises(Exception, match="holds no rows of bronze.stocks_trades: its table"):
        load_file(lake, path, LoadOptions(table="bronze.stocks_trades"))
    assert lake.load_table("bronze.stocks_trades").current_snapshot() is None


def test_a_lake_without_the_table_refuses_one_line(export: dict, tmp_path: Path) -> None:
    path, _ = export["parquet"]
    make_lake(tmp_path / "copy")
    env = {"LAKE_DATA_DIR": str(tmp_path / "copy")}
    bad = runner.invoke(app, ["load", str(path), "--table", "bronze.options_trades"], env=env)
    assert bad.exit_code == 1
    assert "holds no rows of bronze.options_trades" in bad.output


def test_an_ndjson_export_whose_first_lines_are_another_tables_loads_every_table(
    export: dict, tmp_path: Path
) -> None:
    """newuser13: an NDJSON line holds only its own table's keys, and the columns of an NDJSON
    file were taken from its first 100 lines, so an export whose first 100 lines were trades
    had "no column" for the quotes' bid_px and its quotes were refused. The rows decide."""
    path, manifest = export["ndjson"]
    lines = path.read_text().splitlines()
    futures = [line for line in lines if f'"{FUTURES}"' in line]
    reordered = tmp_path / "futures-first.ndjson"
    reordered.write_text("\n".join(futures + [x for x in lines if x not in futures]) + "\n")
    assert len(futures) == 300  # more than the 100 lines the columns were read from
    make_lake(tmp_path / "copy")
    env = {"LAKE_DATA_DIR": str(tmp_path / "copy")}

    loaded = runner.invoke(app, ["load", str(reordered), "-o", "json"], env=env)

    assert loaded.exit_code == 0, loaded.output
    stored = {r["table"]: r["rows_stored"] for r in json.loads(loaded.stdout)["results"]}
    assert stored == {FUTURES: 300, QUOTES: 200}


def test_an_export_of_a_bronze_table_and_its_silver_loads_the_bronze_rows_once(
    tmp_path: Path, duck
) -> None:
    """review13b: an export holding bronze.X and silver.X (the same events) was routed to
    bronze.X twice and both copies stored there. bronze.X's own rows are its rows."""
    lake = make_lake(tmp_path / "copy")
    t0 = T14
    row = {"symbol": "ES", "price": 6000.0, "size": 1, "source": "cme"}
    lines = [
        json.dumps(row | {"table": table, "ts_event_ns": t0 + i, "seq": i})
        for table in (FUTURES, "silver.futures_trades")
        for i in range(4)
    ]
    results = _load_lines(tmp_path, "both.ndjson", lines)

    got = [(r["table"], r["rows_stored"], r["rows_other_tables"]) for r in results]
    assert got == [(FUTURES, 4, 4)]
    assert rows(duck, lake, FUTURES, "SELECT count(*) FROM t") == [(4,)]


def _load_lines(tmp_path: Path, name: str, lines: list[str]) -> list[dict]:
    """`lake load` of an NDJSON file of `lines` into the lake at tmp_path/copy: the results."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    loaded = runner.invoke(
        app, ["load", str(path), "-o", "json"], env={"LAKE_DATA_DIR": str(tmp_path / "copy")}
    )
    assert loaded.exit_code == 0, loaded.output
    results: list[dict] = json.loads(loaded.stdout)["results"]
    return results


def test_an_export_load_killed_between_commits_resumes_to_each_row_once(
    export: dict, tmp_path: Path, duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between two commits of an export's load (as kill -9 would leave it): the re-run
    resumes from the ledger and stores every row of the table once, the other tables' rows
    none."""

    path, _ = export["parquet"]
    lake = make_lake(tmp_path / "copy")
    options = LoadOptions(table=FUTURES, commit_rows=100)
    killed_at_commit(monkeypatch, 3, lambda: load_file(lake, path, options))
    stored_before = rows(duck, lake, FUTURES, "SELECT count(*) FROM t")[0][0]
    assert 0 < stored_before < 300

    resumed = load_file(lake, path, LoadOptions(table=FUTURES, commit_rows=100))

    assert resumed.status == "resumed"
    got = rows(duck, lake, FUTURES, "SELECT count(*), count(DISTINCT (symbol, seq)) FROM t")
    assert got == [(300, 300)]
    assert lake.load_table(QUOTES).current_snapshot() is None


def test_an_export_row_without_a_table_is_dead_lettered_once(tmp_path: Path, duck) -> None:
    """A row of an export with a null `table` belonged to no table's load and was skipped by
    every one without a word. The load of the export's first table dead-letters it once."""
    lake = make_lake(tmp_path / "copy")
    row = {"symbol": "ES", "price": 6000.0, "size": 1, "source": "cme"}
    quote = {"symbol": "AAPL", "bid_px": 1.0, "ask_px": 1.1, "bid_sz": 1, "ask_sz": 1}
    lines = [
        json.dumps(row | {"table": FUTURES, "ts_event_ns": T14 + i, "seq": i}) for i in range(4)
    ]
    lines += [json.dumps(quote | {"table": QUOTES, "ts_event_ns": T14 + i}) for i in range(3)]
    lines.insert(2, json.dumps(row | {"table": None, "ts_event_ns": T14 + 9, "seq": 9}))
    results = _load_lines(tmp_path, "unnamed.ndjson", lines)

    got = [(r["table"], r["rows_stored"], r["dead_lettered"]) for r in results]
    assert got == [(FUTURES, 4, 1), (QUOTES, 3, 0)]
    letters = rows(duck, lake, "bronze.dead_letters", "SELECT reason, raw FROM t")
    assert len(letters) == 1 and "no table value" in letters[0][0], letters
    assert b'"seq": 9' in letters[0][1] or b'"seq":9' in letters[0][1], letters
    _load_lines(tmp_path, "unnamed.ndjson", lines)  # exactly once
    assert rows(duck, lake, "bronze.dead_letters", "SELECT count(*) FROM t") == [(1,)]
